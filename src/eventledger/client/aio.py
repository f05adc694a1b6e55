"""`AsyncClient`: the API from asyncio code, over one `httpx.AsyncClient` for all four services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import httpx

from eventledger.client import calls, core
from eventledger.client import erasure as er
from eventledger.client import events as ev
from eventledger.client import holds as h
from eventledger.client import models as m
from eventledger.client import rebuilds as rb
from eventledger.client import reversals as rv
from eventledger.client.calls import ExpectedVersion
from eventledger.client.core import Call, Positioned
from eventledger.client.errors import EventLedgerError, RateLimited, Unavailable

T = TypeVar("T")


class AsyncClient(core.Shared):
    """The eventledger API, typed. Use it as an async context manager (or await `close()`).

    URLs default to 127.0.0.1 on the default ports; the token to EVENTLEDGER_TOKEN. Commands
    get a new Idempotency-Key per call (or the one given) and are retried with it after a
    connection error or a 503/429, `retries` times at most; reads are retried the same way.
    """

    def __init__(
        self,
        *,
        transaction_url: str | None = None,
        accounting_url: str | None = None,
        statistics_url: str | None = None,
        stream_url: str | None = None,
        token: str | None = None,
        timeout: float | httpx.Timeout = core.DEFAULT_TIMEOUT,
        retries: int = 3,
        max_retry_wait: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        urls: dict[core.Service, str | None] = {
            "transaction": transaction_url,
            "accounting": accounting_url,
            "statistics": statistics_url,
            "stream": stream_url,
        }
        self.config = core.Config.make(urls, token, retries, max_retry_wait)
        self.floor = 0
        self._http = httpx.AsyncClient(
            timeout=timeout, headers=self.config.headers(), transport=transport
        )
        self._owner = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (a view from `consistent_with` leaves it to its parent)."""
        if self._owner:
            await self._http.aclose()

    def consistent_with(self, result: Positioned | int) -> AsyncClient:
        """A view of this client whose reads reflect `result` (a command's result, an append,
        or a position): they send `X-Min-Position` and wait for the read model to apply it."""
        view = object.__new__(AsyncClient)
        view.config, view._http, view._owner = self.config, self._http, False
        view.floor = max(self.floor, self._position_of(result))
        return view

    async def _run(self, call: Call[T]) -> T:
        attempts = core.Attempts(call, self.config)
        url = self.config.urls[call.service]
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    url + call.path,
                    params=dict(call.params),
                    json=call.json,
                    headers=dict(call.headers),
                )
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc, url)
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    try:
                        return call.result(response)
                    except EventLedgerError as exc:
                        exc.idempotency_key = call.key
                        raise
                delay = wait
            await asyncio.sleep(delay)

    # -- commands (transaction service) -------------------------------------------------------

    async def open_account(
        self,
        currency: str,
        *,
        account_id: str | None = None,
        overdraft_limit: int = 0,
        owner: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.AccountOpened:
        """Open an account (its id is generated when not given)."""
        call = calls.open_account(currency, account_id, overdraft_limit, owner, idempotency_key)
        return await self._run(call)

    async def deposit(
        self,
        account_id: str,
        amount: int,
        *,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.MoneyMoved:
        """Deposit `amount` minor units."""
        return await self._run(calls.deposit(account_id, amount, reference, idempotency_key))

    async def withdraw(
        self,
        account_id: str,
        amount: int,
        *,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.MoneyMoved:
        """Withdraw `amount` minor units (InsufficientFunds below -overdraft_limit)."""
        return await self._run(calls.withdraw(account_id, amount, reference, idempotency_key))

    async def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: int,
        *,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.Transfer:
        """Move `amount` minor units between two accounts, atomically."""
        call = calls.transfer(from_account, to_account, amount, reference, idempotency_key)
        return await self._run(call)

    async def hold(
        self,
        from_account: str,
        to_account: str,
        amount: int,
        *,
        timeout_seconds: int | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> h.Hold:
        """Place a pending transfer (phase one of two): `amount` is no longer available to
        `from_account` until it is posted, voided, or expires after `timeout_seconds`."""
        call = calls.hold(
            from_account, to_account, amount, reference, timeout_seconds, idempotency_key
        )
        return await self._run(call)

    async def post_transfer(
        self,
        transaction_id: str,
        *,
        amount: int | None = None,
        idempotency_key: str | None = None,
    ) -> h.HoldOutcome:
        """Complete a pending transfer: move `amount` (all of the hold when None)."""
        return await self._run(calls.post_transfer(transaction_id, amount, idempotency_key))

    async def void_transfer(
        self, transaction_id: str, *, idempotency_key: str | None = None
    ) -> h.HoldOutcome:
        """Release a pending transfer, moving nothing."""
        return await self._run(calls.void_transfer(transaction_id, idempotency_key))

    async def transfer_state(self, transaction_id: str) -> h.TransferState:
        """A two-phase transfer as the command side knows it: pending, posted, voided or
        expired."""
        return await self._run(calls.transfer_state(transaction_id))

    async def reverse(
        self,
        transaction_id: str,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> rv.Reversal:
        """Undo a transaction with new events on every account it touched (409
        `already-reversed`, `insufficient-funds`, ... when it cannot be)."""
        return await self._run(calls.reverse(transaction_id, reason, idempotency_key))

    async def close_account(
        self, account_id: str, *, idempotency_key: str | None = None
    ) -> m.AccountClosed:
        """Close an account whose balance is 0."""
        return await self._run(calls.close_account(account_id, idempotency_key))

    async def forget(self, account_id: str) -> er.Erasure:
        """Erase the account's personal data (owner, references) for good; needs a token
        with scope `admin`. Forgetting twice erases once (`replayed`)."""
        return await self._run(er.forget(account_id))

    # -- reads (accounting and statistics) ----------------------------------------------------

    async def account(self, account_id: str, *, min_position: int | None = None) -> m.Account:
        return await self._run(calls.account(account_id, self._min(min_position)))

    async def history(
        self,
        account_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        min_position: int | None = None,
    ) -> m.Page[m.HistoryItem]:
        """One page of the account's movements, newest first (`before=page.next` for more)."""
        return await self._run(calls.history(account_id, limit, before, self._min(min_position)))

    async def pending_transfers(
        self,
        account_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        min_position: int | None = None,
    ) -> m.Page[m.PendingTransfer]:
        """One page of the two-phase transfers pending on the account, oldest first
        (`after=page.next` for more)."""
        return await self._run(
            calls.pending_transfers(account_id, limit, after, self._min(min_position))
        )

    async def balance_at(
        self,
        account_id: str,
        *,
        at: datetime | str | None = None,
        at_position: int | None = None,
        min_position: int | None = None,
    ) -> m.BalanceAt:
        """The balance as it was at a time (inclusive) or right after a global position."""
        text = None if at is None else calls.at_text(at)
        return await self._run(
            calls.balance_at(account_id, text, at_position, self._min(min_position))
        )

    async def accounts(
        self, *, limit: int | None = None, after: str | None = None, min_position: int | None = None
    ) -> m.Page[m.Account]:
        """One page of all accounts by id (`after=page.next` for more)."""
        return await self._run(calls.accounts(limit, after, self._min(min_position)))

    async def stats(self, *, min_position: int | None = None) -> m.Stats:
        return await self._run(calls.stats(self._min(min_position)))

    async def daily_stats(
        self,
        *,
        first: date | None = None,
        last: date | None = None,
        min_position: int | None = None,
    ) -> m.DailyStats:
        """Per UTC day from `first` to `last` (default: the last 30 days)."""
        days = [None if d is None else d.isoformat() for d in (first, last)]
        return await self._run(calls.daily_stats(days[0], days[1], self._min(min_position)))

    # -- read-model operations ----------------------------------------------------------------

    async def health(self, service: m.ReadModel) -> m.ReadModelHealth:
        return await self._run(calls.health(service))

    async def rebuild(self, service: m.ReadModel) -> m.ReadModelHealth:
        """Start replaying the log into the read model from position 0 (admin scope)."""
        return await self._run(calls.rebuild(service))

    async def rebuild_blue_green(self, service: m.ReadModel) -> rb.RebuildStatus:
        """Start building a new version of the read model beside the live one, which goes on
        serving until the new one has caught up and takes over (admin scope). Raises
        `RebuildInProgress` while another blue/green rebuild goes on."""
        return await self._run(calls.rebuild_blue_green(service))

    async def rebuild_status(self, service: m.ReadModel) -> rb.RebuildStatus:
        """The last blue/green rebuild (state, position of head, error) and the live version."""
        return await self._run(calls.rebuild_status(service))

    async def cancel_rebuild(self, service: m.ReadModel) -> rb.RebuildStatus:
        """Cancel the blue/green rebuild in progress; the live version stays (admin scope).
        Raises `NotRebuilding` when none is in progress."""
        return await self._run(calls.cancel_rebuild(service))

    async def skip(
        self, service: m.ReadModel, *, position: int, reason: str = "", by: str = ""
    ) -> dict[str, Any]:
        """Move the halted read model past the event at `position` (audited; admin)."""
        return await self._run(calls.decide(service, "skip", position, reason, by))

    async def park(
        self, service: m.ReadModel, *, position: int, reason: str = "", by: str = ""
    ) -> dict[str, Any]:
        """As `skip`, keeping the event aside in the read model's database."""
        return await self._run(calls.decide(service, "park", position, reason, by))

    async def decisions(self, service: m.ReadModel) -> tuple[m.Decision, ...]:
        return await self._run(calls.decisions(service))

    # -- every page -----------------------------------------------------------------------------

    async def iter_history(
        self, account_id: str, *, page_size: int = 200, min_position: int | None = None
    ) -> AsyncIterator[m.HistoryItem]:
        """Every movement of the account, newest first, a page at a time."""
        before: str | None = None
        while True:
            page = await self.history(
                account_id, limit=page_size, before=before, min_position=min_position
            )
            for item in page.items:
                yield item
            if page.next is None:
                return
            before = page.next

    async def iter_accounts(
        self, *, page_size: int = 200, min_position: int | None = None
    ) -> AsyncIterator[m.Account]:
        """Every account, by id, a page at a time."""
        after: str | None = None
        while True:
            page = await self.accounts(limit=page_size, after=after, min_position=min_position)
            for item in page.items:
                yield item
            if page.next is None:
                return
            after = page.next

    async def iter_stream(
        self, stream: str, *, from_version: int = 1
    ) -> AsyncIterator[ev.RecordedEvent]:
        """Every event of a stream from `from_version` to its version when read."""
        while True:
            page = await self.read_stream(stream, from_version=from_version)
            for event in page.events:
                yield event
            if not page.events or page.events[-1].stream_version >= page.version:
                return
            from_version = page.events[-1].stream_version + 1

    async def iter_log(
        self,
        *,
        after: int = 0,
        event_type: str | None = None,
        stream_prefix: str | None = None,
    ) -> AsyncIterator[ev.RecordedEvent]:
        """Every event of the global log after `after`, up to the head when reached (for
        what comes later, `subscribe`)."""
        while True:
            page = await self.read_log(
                after=after, event_type=event_type, stream_prefix=stream_prefix
            )
            for event in page.events:
                yield event
            if not page.events or page.last_position <= after:
                return
            after = page.last_position

    # -- the event store (stream service) -----------------------------------------------------

    async def read_stream(
        self, stream: str, *, from_version: int = 1, limit: int | None = None
    ) -> ev.StreamPage:
        """Events of one stream from `from_version` on, oldest first (StreamNotFound)."""
        return await self._run(calls.read_stream(stream, from_version, limit))

    async def read_log(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_type: str | None = None,
        stream_prefix: str | None = None,
    ) -> ev.LogPage:
        """A page of the global log after `after` (continue with `after=page.last_position`)."""
        return await self._run(calls.read_log(after, limit, event_type, stream_prefix))

    async def append(
        self, stream: str, *, expected_version: ExpectedVersion, events: Sequence[ev.NewEvent]
    ) -> ev.Appended:
        """Append to one stream if it is at `expected_version` (else WrongExpectedVersion)."""
        return await self._run(calls.append(stream, expected_version, list(events)))

    async def subscribe(
        self,
        *,
        after: int = 0,
        event_type: str | None = None,
        stream_prefix: str | None = None,
    ) -> AsyncIterator[ev.RecordedEvent]:
        """Every event after `after`, then live, forever: reconnects after the last event it
        yielded when the connection drops (so none is skipped or repeated)."""
        failures = 0
        url = self.config.urls["stream"]
        while True:
            call = calls.subscription(after, event_type, stream_prefix)
            try:
                async with self._http.stream(
                    "GET",
                    url + call.path,
                    params=dict(call.params),
                    headers=dict(call.headers),
                    timeout=core.SSE_TIMEOUT,
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        call.result(response)  # raises the problem
                    parser = core.SseParser()
                    async for chunk in response.aiter_bytes():
                        for _, _, data in parser.feed_bytes(chunk):
                            event = core.sse_event(data)
                            failures, after = 0, event.position
                            yield event
            except httpx.TransportError as exc:
                if failures >= len(core.RECONNECT_DELAYS):
                    raise core.transport_error("stream", url, exc, False, None) from exc
            except (Unavailable, RateLimited):
                if failures >= len(core.RECONNECT_DELAYS):
                    raise
            await asyncio.sleep(
                core.RECONNECT_DELAYS[min(failures, len(core.RECONNECT_DELAYS) - 1)]
            )
            failures += 1
