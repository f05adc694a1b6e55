"""Every operation of the API as a `Call`: what to send and how to read the answer, no I/O.

`Client` and `AsyncClient` run the same calls, each with its own HTTP session, so both have
the same methods, retries and errors by construction. A command's `Idempotency-Key` is made
when its call is built, once per method call, and so is the same on every retry of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from eventledger.client import events as ev
from eventledger.client import holds as h
from eventledger.client import models as m
from eventledger.client import rebuilds as rb
from eventledger.client import reversals as rv
from eventledger.client.core import Call

T = TypeVar("T")
ExpectedVersion = int | Literal["any", "no_stream", "exists"]


def segment(text: str) -> str:
    """`text` as one URL path segment: `a/b` or `..` cannot point at another resource."""
    return quote(text, safe="") if text not in (".", "..") else quote(text).replace(".", "%2E")


def _floor(min_position: int | None) -> dict[str, str]:
    return {} if not min_position else {"X-Min-Position": str(min_position)}


def _query(**params: str | int | None) -> dict[str, str | int]:
    return {k: v for k, v in params.items() if v is not None}


def _body(read: Callable[[Any], T]) -> Callable[[Any, httpx.Response], T]:
    """A reader of the JSON body alone."""
    return lambda body, _: read(body)


def _replayed(response: httpx.Response) -> bool:
    value: str = response.headers.get("Idempotent-Replayed", "")
    return value.lower() == "true"


# -- the transaction service ------------------------------------------------------------------


def _command(path: str, body: dict[str, Any], key: str | None, read: Callable[..., T]) -> Call[T]:
    key = key or str(uuid.uuid4())
    return Call(
        "transaction",
        "POST",
        path,
        lambda doc, response: read(doc, replayed=_replayed(response)),
        json=body,
        headers={"Idempotency-Key": key},
        key=key,
    )


def open_account(
    currency: str,
    account_id: str | None,
    overdraft_limit: int,
    owner: str | None,
    key: str | None,
) -> Call[m.AccountOpened]:
    body: dict[str, Any] = {"currency": currency}
    if account_id is not None:
        body["account_id"] = account_id
    if overdraft_limit:
        body["overdraft_limit"] = overdraft_limit
    if owner is not None:
        body["owner"] = owner
    return _command("/accounts", body, key, m.AccountOpened.from_json)


def _money(amount: int, reference: str | None) -> dict[str, Any]:
    return {"amount": amount} | ({} if reference is None else {"reference": reference})


def deposit(
    account_id: str, amount: int, reference: str | None, key: str | None
) -> Call[m.MoneyMoved]:
    path = f"/accounts/{segment(account_id)}/deposits"
    return _command(path, _money(amount, reference), key, m.MoneyMoved.from_json)


def withdraw(
    account_id: str, amount: int, reference: str | None, key: str | None
) -> Call[m.MoneyMoved]:
    path = f"/accounts/{segment(account_id)}/withdrawals"
    return _command(path, _money(amount, reference), key, m.MoneyMoved.from_json)


def transfer(
    from_account: str, to_account: str, amount: int, reference: str | None, key: str | None
) -> Call[m.Transfer]:
    body = {"from_account": from_account, "to_account": to_account} | _money(amount, reference)
    return _command("/transfers", body, key, m.Transfer.from_json)


def hold(
    from_account: str,
    to_account: str,
    amount: int,
    reference: str | None,
    timeout_seconds: int | None,
    key: str | None,
) -> Call[h.Hold]:
    body = {"from_account": from_account, "to_account": to_account} | _money(amount, reference)
    body["pending"] = True
    if timeout_seconds is not None:
        body["timeout_seconds"] = timeout_seconds
    return _command("/transfers", body, key, h.Hold.from_json)


def post_transfer(transaction_id: str, amount: int | None, key: str | None) -> Call[h.HoldOutcome]:
    body = {} if amount is None else {"amount": amount}
    path = f"/transfers/{segment(transaction_id)}/post"
    return _command(path, body, key, h.HoldOutcome.from_json)


def void_transfer(transaction_id: str, key: str | None) -> Call[h.HoldOutcome]:
    path = f"/transfers/{segment(transaction_id)}/void"
    return _command(path, {}, key, h.HoldOutcome.from_json)


def transfer_state(transaction_id: str) -> Call[h.TransferState]:
    path = f"/transfers/{segment(transaction_id)}"
    return Call("transaction", "GET", path, _body(h.TransferState.from_json))


def reverse(transaction_id: str, reason: str | None, key: str | None) -> Call[rv.Reversal]:
    body = {} if reason is None else {"reference": reason}
    path = f"/transactions/{segment(transaction_id)}/reverse"
    return _command(path, body, key, rv.Reversal.from_json)


def close_account(account_id: str, key: str | None) -> Call[m.AccountClosed]:
    path = f"/accounts/{segment(account_id)}/close"
    return _command(path, {}, key, m.AccountClosed.from_json)


# -- the read models --------------------------------------------------------------------------


def account(account_id: str, min_position: int | None) -> Call[m.Account]:
    path = f"/accounts/{segment(account_id)}"
    return Call("accounting", "GET", path, _body(m.Account.from_json), headers=_floor(min_position))


def _page(read: Callable[[Any], T], what: str) -> Callable[[Any, httpx.Response], m.Page[T]]:
    def page(body: Any, _: httpx.Response) -> m.Page[T]:
        f = m.Fields(body, what)
        return m.Page(tuple(read(item) for item in f.array("items")), f.opt_text("next"))

    return page


def history(
    account_id: str, limit: int | None, before: str | None, min_position: int | None
) -> Call[m.Page[m.HistoryItem]]:
    return Call(
        "accounting",
        "GET",
        f"/accounts/{segment(account_id)}/transactions",
        _page(m.HistoryItem.from_json, "history"),
        params=_query(limit=limit, before=before),
        headers=_floor(min_position),
    )


def pending_transfers(
    account_id: str, limit: int | None, after: str | None, min_position: int | None
) -> Call[m.Page[m.PendingTransfer]]:
    return Call(
        "accounting",
        "GET",
        f"/accounts/{segment(account_id)}/pending",
        _page(m.PendingTransfer.from_json, "pending transfers"),
        params=_query(limit=limit, after=after),
        headers=_floor(min_position),
    )


def balance_at(
    account_id: str, at: str | None, at_position: int | None, min_position: int | None
) -> Call[m.BalanceAt]:
    if (at is None) == (at_position is None):
        raise ValueError("give exactly one of at= or at_position=")
    return Call(
        "accounting",
        "GET",
        f"/accounts/{segment(account_id)}/balance",
        _body(m.BalanceAt.from_json),
        params=_query(at=at, at_position=at_position),
        headers=_floor(min_position),
    )


def accounts(
    limit: int | None, after: str | None, min_position: int | None
) -> Call[m.Page[m.Account]]:
    return Call(
        "accounting",
        "GET",
        "/accounts",
        _page(m.Account.from_json, "accounts"),
        params=_query(limit=limit, after=after),
        headers=_floor(min_position),
    )


def stats(min_position: int | None) -> Call[m.Stats]:
    return Call(
        "statistics", "GET", "/stats", _body(m.Stats.from_json), headers=_floor(min_position)
    )


def daily_stats(
    first: str | None, last: str | None, min_position: int | None
) -> Call[m.DailyStats]:
    return Call(
        "statistics",
        "GET",
        "/stats/daily",
        _body(m.DailyStats.from_json),
        params=_query(**{"from": first, "to": last}),
        headers=_floor(min_position),
    )


def health(service: m.ReadModel) -> Call[m.ReadModelHealth]:
    # 503 while rebuilding or without its database is still a health answer, not a failure.
    read = _body(m.ReadModelHealth.from_json)
    return Call(service, "GET", "/health", read, answers=(503,))


def rebuild(service: m.ReadModel) -> Call[m.ReadModelHealth]:
    read = _body(m.ReadModelHealth.from_json)
    return Call(service, "POST", "/admin/rebuild", read, json={}, safe_to_repeat=False)


def rebuild_blue_green(service: m.ReadModel) -> Call[rb.RebuildStatus]:
    read = _body(rb.RebuildStatus.from_json)
    body = {"mode": "blue-green"}
    return Call(service, "POST", "/admin/rebuild", read, json=body, safe_to_repeat=False)


def rebuild_status(service: m.ReadModel) -> Call[rb.RebuildStatus]:
    return Call(service, "GET", "/admin/rebuild", _body(rb.RebuildStatus.from_json))


def cancel_rebuild(service: m.ReadModel) -> Call[rb.RebuildStatus]:
    read = _body(rb.RebuildStatus.from_json)
    # Every state-changing request carries Content-Type: application/json (CSRF guard).
    return Call(service, "DELETE", "/admin/rebuild", read, json={}, safe_to_repeat=False)


def decide(
    service: m.ReadModel, action: Literal["skip", "park"], position: int, reason: str, by: str
) -> Call[dict[str, Any]]:
    body = {"position": position, "reason": reason, "by": by}
    read = _body(lambda b: m.Fields(b, action).doc)
    return Call(service, "POST", f"/admin/{action}", read, json=body, safe_to_repeat=False)


def decisions(service: m.ReadModel) -> Call[tuple[m.Decision, ...]]:
    def read(body: Any, _: httpx.Response) -> tuple[m.Decision, ...]:
        return tuple(m.Decision.from_json(d) for d in m.Fields(body, "decisions").array("items"))

    return Call(service, "GET", "/admin/decisions", read)


# -- the stream service -----------------------------------------------------------------------


def read_stream(stream: str, from_version: int, limit: int | None) -> Call[ev.StreamPage]:
    return Call(
        "stream",
        "GET",
        f"/streams/{segment(stream)}",
        _body(ev.StreamPage.from_json),
        params=_query(from_version=from_version, limit=limit),
    )


def read_log(
    after: int, limit: int | None, event_type: str | None, stream_prefix: str | None
) -> Call[ev.LogPage]:
    return Call(
        "stream",
        "GET",
        "/events",
        _body(ev.LogPage.from_json),
        params=_query(after=after, limit=limit, type=event_type, stream_prefix=stream_prefix),
    )


def append(
    stream: str, expected_version: ExpectedVersion, events: list[ev.NewEvent]
) -> Call[ev.Appended]:
    body = {"expected_version": expected_version, "events": [e.to_json() for e in events]}
    return Call(
        "stream", "POST", f"/streams/{segment(stream)}", _body(ev.Appended.from_json), json=body
    )


def subscription(after: int, event_type: str | None, stream_prefix: str | None) -> Call[None]:
    """The SSE request (read as a stream of events by the clients, not by `result`)."""
    return Call(
        "stream",
        "GET",
        "/events/subscribe",
        lambda b, _: None,
        params=_query(after=after, type=event_type, stream_prefix=stream_prefix),
        headers={"Accept": "text/event-stream"},
    )


def at_text(at: datetime | str) -> str:
    """`at=` of a balance read: an aware datetime in RFC 3339 (UTC), or the text as given."""
    if isinstance(at, str):
        return at
    if at.tzinfo is None:
        raise ValueError("at= must be a timezone-aware datetime (e.g. datetime.now(UTC))")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
