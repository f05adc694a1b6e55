"""The accounting service over HTTP: balances and histories, fed by a subscription.

Reads are served from this instance's read model, even while the stream service is down; a
request with `X-Min-Position: P` (or `?min_position=P`) waits until P is applied.
`create_app` is `ReadModelService.create_app` (readside/http.py) with the routes below.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from eventledger.domain.money import ACCOUNT_ID, INT64_MAX
from eventledger.eventstore.codec import format_time, parse_time
from eventledger.services.accounting import queries
from eventledger.services.accounting.projection import Account, HistoryItem, Hold
from eventledger.services.accounting.store import AccountingProjection
from eventledger.services.asgi import lean_route, send_json
from eventledger.services.http import ProblemError
from eventledger.services.readside.db import Session
from eventledger.services.readside.http import (
    MAX_POS,
    MinPosition,
    ReadModelService,
    Reads,
    floor_of,
    int_param,
    invalid_param,
    query_responses,
)

SERVICE = "accounting"
DEFAULT_PAGE = 50
MAX_PAGE = 1000

AccountIdPath = Annotated[str, Path(description="The account id")]
NOT_FOUND = "`account-not-found`: this instance has not seen the account (or not then)."


def _add_routes(app: FastAPI, reads: Reads) -> None:
    """The accounting queries, on top of what every read-model service has."""

    @app.get(
        "/accounts/{account_id}",
        tags=["accounts"],
        responses=query_responses(not_found=NOT_FOUND),
    )
    async def get_account(account_id: AccountIdPath, floor: MinPosition) -> Response:
        """One account as of the last event this instance applied to it."""
        return JSONResponse(_account_json(await _find_account(reads, account_id, floor)))

    async def lean_get_account(scope: Scope, receive: Receive, send: Send) -> None:
        account_id = scope["path_params"]["account_id"]
        found = await _find_account(reads, account_id, floor_of(scope))
        await send_json(send, _account_json(found))

    # The hottest read, answered in plain ASGI in front of the documented route above (which
    # stays for the OpenAPI document and /docs): FastAPI's dependency injection, Request and
    # JSONResponse were 40% of the route's CPU. Same parameters, same checks in the same
    # order, same answers and problems (tests/integration/test_accounting_lean_read.py).
    lean_route(app, "/accounts/{account_id}", lean_get_account, methods=["GET"])

    @app.get(
        "/accounts/{account_id}/transactions",
        tags=["accounts"],
        responses=query_responses(not_found=NOT_FOUND),
    )
    async def get_transactions(
        account_id: AccountIdPath,
        floor: MinPosition,
        limit: Annotated[str | None, Query(description=f"1..{MAX_PAGE}, default 50")] = None,
        before: Annotated[str | None, Query(description="The `next` cursor of a page")] = None,
    ) -> JSONResponse:
        """Movements of money on the account, newest first, one page at a time."""
        size = int_param("limit", limit, default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        below = None if before is None else _decode_cursor(before)
        check_account_id(account_id)

        def query(session: Session) -> tuple[Account | None, list[HistoryItem]]:
            found = queries.get_account(session, account_id)
            if found is None:
                return None, []
            return found, queries.history(session, account_id, before=below, limit=size + 1)

        account, items = await reads.answer(query, min_position=floor)
        if account is None:
            raise _not_found(account_id)
        page = items[:size]
        more = len(items) > size
        return JSONResponse(
            {
                "account_id": account_id,
                "items": [_item_json(i) for i in page],
                "next": _encode_cursor(page[-1].position) if more else None,
            }
        )

    @app.get(
        "/accounts/{account_id}/balance",
        tags=["accounts"],
        responses=query_responses(not_found=NOT_FOUND),
    )
    async def get_balance(
        account_id: AccountIdPath,
        floor: MinPosition,
        at: Annotated[str | None, Query(description="An RFC 3339 time")] = None,
        at_position: Annotated[str | None, Query(description="A global position")] = None,
    ) -> JSONResponse:
        """The balance as it was at a time or right after a global position (exactly one),
        with what was available then (the balance less the transfers pending out)."""
        if (at is None) == (at_position is None):
            raise invalid_param("at", "give exactly one of `at` (RFC 3339) or `at_position`")
        check_account_id(account_id)
        position: int | None = None
        moment: str | None = None
        if at_position is not None:
            position = int_param("at_position", at_position, default=0, minimum=0, maximum=MAX_POS)
            # The balance after P is only known once P is applied: wait as for X-Min-Position.
            floor = max(floor, position)
        else:
            assert at is not None
            moment = _time_key(at)

        def query(session: Session) -> tuple[Account | None, queries.BalanceThen | None]:
            found = queries.get_account(session, account_id)
            if found is None:
                return None, None
            if position is not None:
                if found.opened_position > position:
                    return None, None
                return found, queries.balance_at_position(session, found, position)
            assert moment is not None
            if found.opened_at > moment:
                return None, None
            return found, queries.balance_at_time(session, found, moment)

        account, then = await reads.answer(query, min_position=floor)
        if account is None or then is None:
            raise _not_found(account_id, then=True)
        body: dict[str, Any] = {
            "account_id": account_id,
            "currency": account.currency,
            "balance": then.balance,
            "available": then.available,
            "pending_debits": then.pending_debits,
            "pending_credits": then.pending_credits,
            "as_of_position": then.position,
        }
        body.update({"at": at} if at is not None else {"at_position": position})
        return JSONResponse(body)

    @app.get(
        "/accounts/{account_id}/pending",
        tags=["accounts"],
        responses=query_responses(not_found=NOT_FOUND),
    )
    async def get_pending_transfers(
        account_id: AccountIdPath,
        floor: MinPosition,
        limit: Annotated[str | None, Query(description=f"1..{MAX_PAGE}, default 50")] = None,
        after: Annotated[str | None, Query(description="The `next` cursor of a page")] = None,
    ) -> JSONResponse:
        """The two-phase transfers pending on the account (either side), oldest first, one page
        at a time, with the account's pending sums. A transfer leaves the list once it is
        posted, voided or expired; its history items stay in `/transactions`."""
        size = int_param("limit", limit, default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        since = None if after is None else _decode_cursor(after, name="after")
        check_account_id(account_id)

        def query(session: Session) -> tuple[Account | None, list[Hold]]:
            found = queries.get_account(session, account_id)
            if found is None:
                return None, []
            return found, queries.pending_transfers(
                session, account_id, after=since, limit=size + 1
            )

        account, holds = await reads.answer(query, min_position=floor)
        if account is None:
            raise _not_found(account_id)
        page = holds[:size]
        more = len(holds) > size
        return JSONResponse(
            {
                "account_id": account_id,
                "pending_debits": account.pending_debits,
                "pending_credits": account.pending_credits,
                "items": [_hold_json(h) for h in page],
                "next": _encode_cursor(page[-1].position) if more else None,
            }
        )

    @app.get("/accounts", tags=["accounts"], responses=query_responses())
    async def list_accounts(
        floor: MinPosition,
        limit: Annotated[str | None, Query(description=f"1..{MAX_PAGE}, default 50")] = None,
        after: Annotated[str | None, Query(description="The `next` of the previous page")] = None,
    ) -> JSONResponse:
        """Every account this instance knows, ordered by id, one page at a time."""
        size = int_param("limit", limit, default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        if after is not None and not ACCOUNT_ID.fullmatch(after):
            raise invalid_param("after", "must be an account id (the `next` of a page)")
        accounts = await reads.answer(
            lambda session: queries.list_accounts(session, after=after, limit=size + 1),
            min_position=floor,
        )
        page = accounts[:size]
        more = len(accounts) > size
        return JSONResponse(
            {
                "items": [_account_json(a) for a in page],
                "next": page[-1].account_id if more else None,
            }
        )


ACCOUNTING = ReadModelService(
    name=SERVICE,
    title="eventledger accounting",
    description="Balances and transaction histories: a read model fed by the stream service.",
    projection=AccountingProjection,
    add_routes=_add_routes,
)
create_app = ACCOUNTING.create_app


# -- helpers ------------------------------------------------------------------------------


async def _find_account(reads: Reads, account_id: str, floor: int) -> Account:
    check_account_id(account_id)
    account = await reads.answer(
        lambda session: queries.get_account(session, account_id),
        min_position=floor,
        grouped=True,  # a lookup by key: quick
    )
    if account is None:
        raise _not_found(account_id)
    return account


def check_account_id(account_id: str) -> None:
    if not ACCOUNT_ID.fullmatch(account_id):
        raise invalid_param(
            "account_id",
            "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )


def _not_found(account_id: str, *, then: bool = False) -> ProblemError:
    detail = (
        f"account {account_id!r} did not exist then"
        if then
        else f"no account {account_id!r} (this instance has not seen it)"
    )
    return ProblemError(
        404, "account-not-found", "Account not found", detail, account_id=account_id
    )


def _time_key(text: str) -> str:
    """The stored form of an RFC 3339 time (`format_time`), whose text order is time order."""
    try:
        moment = parse_time(text)
    except ValueError as exc:
        raise invalid_param("at", f"must be an RFC 3339 time with an offset: {exc}") from exc
    if moment.year < 1000:
        return "0"  # before any event; format_time does not pad such years
    return format_time(moment)


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, *, name: str = "before") -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    digits = raw[1:]
    # A position is a signed 64-bit integer: 19 digits may be more ('p9999999999999999999'
    # was a 500 from the database), so the value is bounded, not only its length.
    if (
        raw[:1] != "p"
        or not digits.isdigit()
        or len(digits) > 19
        or int(digits) > INT64_MAX
        or not cursor.isascii()
    ):
        raise invalid_param(name, "is not a cursor given by this service (`next`)")
    return int(digits)


def _account_json(a: Account) -> dict[str, Any]:
    return {
        "account_id": a.account_id,
        "currency": a.currency,
        "balance": a.balance,
        "available": a.available,
        "pending_debits": a.pending_debits,
        "pending_credits": a.pending_credits,
        "overdraft_limit": a.overdraft_limit,
        "owner": a.owner,
        "status": a.status,
        "version": a.version,
        "opened_at": a.opened_at,
        "updated_at": a.updated_at,
        "position": a.position,
    }


def _item_json(i: HistoryItem) -> dict[str, Any]:
    return {
        "transaction_id": i.transaction_id,
        "kind": i.kind,
        "amount": i.amount,
        "balance_after": i.balance_after,
        "available_after": i.available_after,
        "held": i.held,
        "reverses": i.reverses,
        "reversed_by": i.reversed_by,
        "counterparty": i.counterparty,
        "reference": i.reference,
        "recorded_at": i.recorded_at,
        "position": i.position,
    }


def _hold_json(h: Hold) -> dict[str, Any]:
    return {
        "transaction_id": h.transaction_id,
        "direction": h.direction,
        "counterparty": h.counterparty,
        "amount": h.amount,
        "reference": h.reference,
        "expires_at": h.expires_at,
        "recorded_at": h.recorded_at,
        "position": h.position,
    }
