"""The transaction service: the command side of the ledger over HTTP (API.md, "Transaction
service").

A route only translates: it checks the Idempotency-Key header and the path, reads the body
strictly, builds the domain command and validates its values (nothing is loaded for a bad
request), then hands it to `handlers.CommandHandler`. Failures become problem documents
through the one table in `problems`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from eventledger.domain.commands import (
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    Withdraw,
    validate,
)
from eventledger.domain.errors import InvalidExpiry
from eventledger.domain.money import check_account_id
from eventledger.domain.pending import expiry_after
from eventledger.eventstore.ids import uuid7
from eventledger.services.http import (
    PROBLEM_JSON,
    ProblemError,
    create_service_app,
    is_json_media_type,
    json_body,
    parse_json,
    read_body,
    read_model,
    serve_directly,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.transaction.accounts import DEFAULT_CACHE_SIZE, AccountCache
from eventledger.services.transaction.expiry import HoldExpirer
from eventledger.services.transaction.follower import LogFollower
from eventledger.services.transaction.forget import add_forget_route
from eventledger.services.transaction.handlers import DEFAULT_MAX_RETRIES, CommandHandler
from eventledger.services.transaction.idempotency import (
    CORRELATION_ID_HEADER,
    IDEMPOTENCY_KEY_HEADER,
    CommandIds,
    check_correlation_id,
    check_key,
    fingerprint,
)
from eventledger.services.transaction.problems import RETRY_AFTER, problem_for
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.reversal_routes import (
    ReversalOut,
    ReverseBody,
    add_reversal_route,
)
from eventledger.services.transaction.schemas import (
    AccountClosedOut,
    AccountOpenedOut,
    CloseBody,
    Health,
    HoldOut,
    MoneyBody,
    MoneyMovedOut,
    OpenAccountBody,
    Problem,
    TransferBody,
    TransferOut,
)
from eventledger.services.transaction.snapshots import DEFAULT_EVERY, Snapshots, SnapshotStore
from eventledger.services.transaction.stream_client import StreamClient, StreamClientError
from eventledger.services.transaction.two_phase import TwoPhaseTransfers
from eventledger.services.transaction.two_phase_routes import add_two_phase_routes

B = TypeVar("B", bound=BaseModel)
C = TypeVar("C", OpenAccount, Deposit, Withdraw, Transfer, CloseAccount)

REQUEST_ID_HEADER = "X-Request-ID"
HEALTH_TIMEOUT = 0.8  # /health answers within a second even when the stream service hangs

DESCRIPTION = """\
The command side of eventledger: opens and closes accounts and moves money, by deciding
events on the account's history and appending them through the stream service.

Every command accepts an `Idempotency-Key` header (1-255 visible ASCII characters). A retry
with the same key and body answers the first response again (200, `Idempotent-Replayed:
true`) and writes nothing; the same key with another body is a 422 `idempotency-key-reused`.
The `position` of a success is the global position of the last event written: send it as
`X-Min-Position` to a read model to read your writes.
"""


def _problems(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of problem answers, keyed by status (`_404="..."`)."""
    schema = Problem.model_json_schema()
    return {
        int(status.lstrip("_")): {
            "description": text,
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status, text in described.items()
    }


_INPUT_PROBLEMS = {
    "_400": "Malformed JSON, or an invalid Idempotency-Key header (`invalid-idempotency-key`).",
    "_413": "Body over 1 MiB (`body-too-large`).",
    "_415": "Not `application/json`.",
    "_422": "Invalid body or values (`validation-error`, `invalid-amount`, "
    "`invalid-account-id`, …), or `idempotency-key-reused`.",
    "_503": "The stream service cannot be reached (`stream-unavailable`), Retry-After.",
}


_HEADERS = [
    {
        "name": IDEMPOTENCY_KEY_HEADER,
        "in": "header",
        "required": False,
        "description": "1-255 visible ASCII characters. A retry with the same key and body "
        "answers the first response and writes nothing.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    },
    {
        "name": CORRELATION_ID_HEADER,
        "in": "header",
        "required": False,
        "description": "Kept as `correlation_id` in the metadata of the events written.",
        "schema": {"type": "string", "maxLength": 255},
    },
]


def _command_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` of a command: its JSON body (read with `read_model`) and headers."""
    extra = json_body(model)
    extra["requestBody"]["required"] = required
    return {**extra, "parameters": _HEADERS}


def _replayed_response(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": "An idempotent replay: the first response again, with the header "
            "`Idempotent-Replayed: true`; nothing was written.",
        }
    }


async def _read_optional_model(request: Request, model: type[B]) -> B:
    """Like `read_model`, but an empty body means `{}` (still sent as application/json)."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    raw = await read_body(request)
    if not raw.strip():
        return model()
    return validate_body(parse_json(raw), model)


def checked(command: C) -> C:
    """The command, once every value of it is valid: nothing is loaded for a bad request."""
    validate(command)
    return command


def _outcome(status: int) -> str:
    if status in (404, 409):
        return "refused"
    if status == 503:
        return "unavailable"
    if 400 <= status < 500:
        return "invalid"
    return "failed"


def create_app(
    *,
    stream_url: str,
    max_retries: int = DEFAULT_MAX_RETRIES,
    cache_size: int = DEFAULT_CACHE_SIZE,
    new_id: Callable[[], UUID] = uuid7,
    stream_token: str | None = None,
    idempotency_secret: bytes | None = None,
    follow_log: bool = False,
    snapshot_store: SnapshotStore | None = None,
    snapshot_every: int = DEFAULT_EVERY,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    expire_holds: bool | None = None,
) -> FastAPI:
    """The transaction service, talking to the stream service at `stream_url`.

    `max_retries`: how many times a command is decided again after its append met another
    writer. `cache_size`: how many accounts' folded states are kept (0: none). `new_id`:
    where ids come from when a request has no Idempotency-Key. `stream_token`: what this
    service presents to the stream service. `idempotency_secret`: the installation's key for
    the ids of keyed commands, shared by every instance (`bootstrap` reads it; None: a random
    one for this app alone, so replays work only within it). `follow_log`: keep the cached
    states fresh from the stream service's live feed (`follower`; `bootstrap` turns it on,
    so that several instances decide on current state; off, a test decides when a cached
    state is stale). `snapshot_store`: where account snapshots are kept, written every
    `snapshot_every` events (`snapshots`; None: accounts are folded from their whole stream).
    `clock`: the time holds are placed and expire by. `expire_holds`: expire due holds from
    the log (`expiry`; default: as `follow_log`).
    """
    client = StreamClient(stream_url, token=stream_token)
    secret = idempotency_secret if idempotency_secret else secrets.token_bytes(32)
    cache = AccountCache(cache_size)
    follower: LogFollower | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await client.open()
        tasks = [
            asyncio.create_task(work.run())
            for work in (follower, snapshots, expirer)
            if work is not None
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if snapshots is not None:
                await snapshots.store.close()
            await client.close()

    app, metrics = create_service_app(
        service="transaction",
        title="eventledger transaction service",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    commands = Counter(
        "eventledger_transaction_commands",
        "Commands answered, by outcome (accepted, replayed, refused, invalid, unavailable, "
        "failed) and problem type",
        ["command", "outcome", "reason"],
        registry=metrics.registry,
    )
    retries = Counter(
        "eventledger_transaction_retries",
        "Commands decided again because their append met another writer",
        ["command"],
        registry=metrics.registry,
    )
    if follow_log and cache_size > 0:
        follow_events = Counter(
            "eventledger_transaction_cache_follow_events",
            "Account events of the live feed, by what became of them in the cache: applied "
            "(entry advanced), skipped (not cached, or already in it), dropped (a gap); "
            "connected counts the subscriptions opened",
            ["outcome"],
            registry=metrics.registry,
        )
        follower = LogFollower(
            stream_url,
            cache,
            token=stream_token,
            on_outcome=lambda o: follow_events.labels(o).inc(),
        )
        Gauge(
            "eventledger_transaction_cache_following",
            "1 while the account cache follows the stream service's live feed",
            registry=metrics.registry,
        ).set_function(lambda: 1.0 if follower is not None and follower.connected else 0.0)
    snapshots: Snapshots | None = None
    if snapshot_store is not None:
        snapshot_outcomes = Counter(
            "eventledger_transaction_snapshots",
            "Account snapshots: used, discarded (another log at that version), stale (other "
            "code), unavailable (store away), written, failed",
            ["outcome"],
            registry=metrics.registry,
        )
        snapshots = Snapshots(
            snapshot_store,
            every=snapshot_every,
            on_outcome=lambda o: snapshot_outcomes.labels(o).inc(),
        )
    handler = CommandHandler(
        client,
        max_retries=max_retries,
        cache=cache,
        snapshots=snapshots,
        on_retry=lambda name: retries.labels(name).inc(),
    )
    app.state.handler = handler
    two_phase = TwoPhaseTransfers(handler, clock=clock, secret=secret)
    app.state.two_phase = two_phase
    expirer: HoldExpirer | None = None
    if follow_log if expire_holds is None else expire_holds:
        expiries = Counter(
            "eventledger_transaction_hold_expiries",
            "Holds whose deadline passed, by what this instance did: expired (wrote the "
            "expiry), ended (already posted, voided or expired), failed (tried again later)",
            ["outcome"],
            registry=metrics.registry,
        )
        expirer = HoldExpirer(
            stream_url,
            two_phase.expire,
            clock=clock,
            token=stream_token,
            on_outcome=lambda o: expiries.labels(o).inc(),
        )
    app.state.expirer = expirer
    app.state.follower = follower

    async def execute(
        request: Request,
        name: str,
        read: Callable[[], Awaitable[BaseModel]],
        run: Callable[[Any, CommandIds], Awaitable[Result]],
        *,
        path_account_id: str | None = None,
    ) -> Response:
        """Check the input, run the command, answer JSON or a problem; count the outcome."""
        try:
            # Two header lines are the list "k1, k2" (RFC 9110): no valid key, not the first.
            keys = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
            key = check_key(", ".join(keys) if keys else None)
            if path_account_id is not None:
                check_account_id(path_account_id)
            body = await read()
            plain = None if key is None else body.model_dump(mode="json")
            ids = CommandIds(
                key=key,
                secret=secret,
                request_fingerprint=None
                if plain is None
                else fingerprint(request.method, request.url.path, plain, secret),
                legacy_fingerprint=None
                if plain is None
                else fingerprint(request.method, request.url.path, plain),
                # A caller's correlation id, else its request id: one id follows the
                # request from the access log into the events it wrote.
                correlation_id=check_correlation_id(
                    request.headers.get(CORRELATION_ID_HEADER)
                    or request.headers.get(REQUEST_ID_HEADER)
                ),
                command=name,
                new_id=new_id,
            )
            result = await run(body, ids)
        except Exception as exc:
            problem = problem_for(exc)
            if problem is None:
                commands.labels(name, "failed", "internal-error").inc()
                raise
            commands.labels(name, _outcome(problem.status), problem.type).inc()
            if problem is exc:
                raise
            raise problem from exc
        commands.labels(name, "replayed" if result.replayed else "accepted", "").inc()
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return JSONResponse(
            result.body(), status_code=200 if result.replayed else 201, headers=headers
        )

    @app.post(
        "/accounts",
        summary="Open an account",
        status_code=201,
        response_model=AccountOpenedOut,
        openapi_extra=_command_body(OpenAccountBody),
        responses={
            **_replayed_response(AccountOpenedOut),
            **_problems(_409="`account-exists`", **_INPUT_PROBLEMS),
        },
    )
    async def open_account(request: Request) -> Response:
        """Open an account in one ISO 4217 currency, with an optional overdraft limit. An
        account id is generated when none is given."""

        async def run(body: OpenAccountBody, ids: CommandIds) -> Result:
            command = OpenAccount(
                account_id=body.account_id if body.account_id is not None else ids.account_id(),
                currency=body.currency,
                overdraft_limit=body.overdraft_limit,
                owner=body.owner,
            )
            return await handler.open_account(checked(command), ids)

        return await execute(request, "open", lambda: read_model(request, OpenAccountBody), run)

    async def move_money(
        request: Request, account_id: str, kind: type[Deposit | Withdraw]
    ) -> Response:
        async def run(body: MoneyBody, ids: CommandIds) -> Result:
            values = (account_id, ids.transaction_id, body.amount, body.reference)
            if kind is Deposit:
                return await handler.deposit(checked(Deposit(*values)), ids)
            return await handler.withdraw(checked(Withdraw(*values)), ids)

        name = "deposit" if kind is Deposit else "withdraw"
        return await execute(
            request, name, lambda: read_model(request, MoneyBody), run, path_account_id=account_id
        )

    money_problems = _problems(
        _404="`account-not-found`",
        _409="`account-closed`, `insufficient-funds`, `balance-out-of-range`",
        **_INPUT_PROBLEMS,
    )

    @app.post(
        "/accounts/{account_id}/deposits",
        summary="Deposit money",
        status_code=201,
        response_model=MoneyMovedOut,
        openapi_extra=_command_body(MoneyBody),
        responses={**_replayed_response(MoneyMovedOut), **money_problems},
    )
    async def deposit(account_id: str, request: Request) -> Response:
        """Put `amount` minor units into the account."""
        return await move_money(request, account_id, Deposit)

    @app.post(
        "/accounts/{account_id}/withdrawals",
        summary="Withdraw money",
        status_code=201,
        response_model=MoneyMovedOut,
        openapi_extra=_command_body(MoneyBody),
        responses={**_replayed_response(MoneyMovedOut), **money_problems},
    )
    async def withdraw(account_id: str, request: Request) -> Response:
        """Take `amount` minor units out of the account, down to -overdraft_limit at most
        (409 `insufficient-funds` otherwise)."""
        return await move_money(request, account_id, Withdraw)

    @app.post(
        "/transfers",
        summary="Transfer money between two accounts",
        status_code=201,
        response_model=TransferOut | HoldOut,
        openapi_extra=_command_body(TransferBody),
        responses={
            **_replayed_response(TransferOut),
            **_problems(
                _404="`account-not-found`",
                _409="`account-closed`, `currency-mismatch`, `insufficient-funds`, "
                "`balance-out-of-range`",
                **{
                    **_INPUT_PROBLEMS,
                    "_422": _INPUT_PROBLEMS["_422"]
                    + " `same-account-transfer`, `invalid-expires-at` (a timeout without "
                    "`pending`).",
                },
            ),
        },
    )
    async def transfer(request: Request) -> Response:
        """Move `amount` from one account to another of the same currency, atomically: both
        accounts change, or neither does. With `"pending": true`, only hold it (a two-phase
        transfer: `status` pending; the sender's `available` drops, its balance does not),
        to post or void later (`/transfers/{id}/post`, `/void`), voided automatically
        (`expired`) after `timeout_seconds` when given."""

        async def run(body: TransferBody, ids: CommandIds) -> Result:
            if body.timeout_seconds is not None and not body.pending:
                raise InvalidExpiry(
                    "only a pending transfer has a timeout", field="timeout_seconds"
                )
            command = Transfer(
                transaction_id=ids.transaction_id,
                from_account=body.from_account,
                to_account=body.to_account,
                amount=body.amount,
                reference=body.reference,
                pending=body.pending,
                expires_at=None
                if body.timeout_seconds is None
                else expiry_after(clock(), body.timeout_seconds),
            )
            if command.pending:
                return await two_phase.hold(checked(command), ids)
            return await handler.transfer(checked(command), ids)

        return await execute(request, "transfer", lambda: read_model(request, TransferBody), run)

    @app.post(
        "/accounts/{account_id}/close",
        summary="Close an account",
        status_code=201,
        response_model=AccountClosedOut,
        openapi_extra=_command_body(CloseBody, required=False),
        responses={
            **_replayed_response(AccountClosedOut),
            **_problems(
                _404="`account-not-found`",
                _409="`balance-not-zero`, `account-closed`, `pending-transfers`",
                **_INPUT_PROBLEMS,
            ),
        },
    )
    async def close_account(account_id: str, request: Request) -> Response:
        """Close an account whose balance is exactly 0. The body is empty or `{}`."""

        async def run(_: CloseBody, ids: CommandIds) -> Result:
            command = CloseAccount(account_id=account_id)
            return await handler.close_account(checked(command), ids)

        return await execute(
            request,
            "close",
            lambda: _read_optional_model(request, CloseBody),
            run,
            path_account_id=account_id,
        )

    @app.get(
        "/health",
        summary="Health",
        response_model=Health,
        responses=_problems(_503="The stream service does not answer (`stream-unavailable`)."),
    )
    async def health() -> Response:
        """200 while the stream service answers its /health; answers within a second."""
        try:
            await client.health(within=HEALTH_TIMEOUT)
        except StreamClientError as exc:
            raise ProblemError(
                503,
                "stream-unavailable",
                "Stream service unavailable",
                str(exc),
                headers=RETRY_AFTER,
                service="transaction",
                stream="down",
            ) from exc
        return JSONResponse({"status": "ok", "service": "transaction", "stream": "up"})

    # The command routes read and validate their own bodies (and `execute` checks the path's
    # account id): FastAPI's parameter resolution would only add ~50 µs a command.
    async def deposit_direct(request: Request) -> Response:
        return await deposit(request.path_params["account_id"], request)

    async def withdraw_direct(request: Request) -> Response:
        return await withdraw(request.path_params["account_id"], request)

    async def close_direct(request: Request) -> Response:
        return await close_account(request.path_params["account_id"], request)

    serve_directly(app, "POST", "/accounts/{account_id}/deposits", deposit_direct)
    serve_directly(app, "POST", "/accounts/{account_id}/withdrawals", withdraw_direct)
    serve_directly(app, "POST", "/accounts/{account_id}/close", close_direct)
    serve_directly(app, "POST", "/accounts", open_account)
    serve_directly(app, "POST", "/transfers", transfer)
    add_two_phase_routes(
        app,
        two_phase,
        execute,
        read_optional=_read_optional_model,
        command_body=_command_body,
        responses=lambda model, problems: {
            **_replayed_response(model),
            **_problems(**{**_INPUT_PROBLEMS, **problems}),
        },
    )
    add_forget_route(
        app,
        client,
        _problems(
            _404="`account-not-found`",
            _403="`forbidden`: the caller's token lacks scope `admin` (here or at the stream "
            "service)",
            _422="`invalid-account-id`",
            _502="`stream-error`",
            _503="`stream-unavailable`, `too-much-contention` (retry after `Retry-After`)",
        ),
    )
    add_reversal_route(
        app,
        handler,
        execute,
        read_body=lambda request: _read_optional_model(request, ReverseBody),
        openapi_extra=_command_body(ReverseBody, required=False),
        responses={
            **_replayed_response(ReversalOut),
            **_problems(
                _404="`transaction-not-found`",
                _409="`already-reversed` (with `reversed_by`), `not-reversible`, "
                "`transfer-pending`, `account-closed`, `insufficient-funds`, "
                "`balance-out-of-range`, `reversal-blocked` (its marker stream holds an event "
                "that is no reversal of it: see docs/reversals.md)",
                **{
                    **_INPUT_PROBLEMS,
                    "_422": _INPUT_PROBLEMS["_422"] + " `invalid-transaction-id`.",
                },
            ),
        },
    )
    return app
