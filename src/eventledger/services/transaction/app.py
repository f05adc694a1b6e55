"""The transaction service: the command side of the ledger over HTTP (API.md, "Transaction
service").

`create_app` wires the service: the stream client, the account cache and its follower,
snapshots, two-phase transfers and hold expiry, metrics, and the routes, one module per
resource (`account_routes`, `transfer_routes`, `two_phase_routes`, `reversal_routes`,
`forget`), each going through one `execute` (`execution`). A route only translates: it checks
the Idempotency-Key header and the path, reads the body strictly, builds the domain command and
validates its values (nothing is loaded for a bad request), then hands it to
`handlers.CommandHandler`. Failures become problem documents through the one table in
`problems`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Gauge

from eventledger.eventstore.ids import uuid7
from eventledger.services.http import ProblemError, create_service_app
from eventledger.services.transaction.account_routes import add_account_routes
from eventledger.services.transaction.accounts import DEFAULT_CACHE_SIZE, AccountCache
from eventledger.services.transaction.command_docs import (
    INPUT_PROBLEMS,
    command_body,
    problems,
    replayed_response,
)
from eventledger.services.transaction.execution import (
    REQUEST_ID_HEADER,
    checked,
    command_executor,
    counting,
    read_optional_model,
)
from eventledger.services.transaction.expiry import HoldExpirer
from eventledger.services.transaction.follower import LogFollower
from eventledger.services.transaction.forget import add_forget_route
from eventledger.services.transaction.handlers import DEFAULT_MAX_RETRIES, CommandHandler
from eventledger.services.transaction.problems import RETRY_AFTER
from eventledger.services.transaction.reversal_routes import (
    ReversalOut,
    ReverseBody,
    add_reversal_route,
)
from eventledger.services.transaction.schemas import Health
from eventledger.services.transaction.snapshots import DEFAULT_EVERY, Snapshots, SnapshotStore
from eventledger.services.transaction.stream_client import StreamClient, StreamClientError
from eventledger.services.transaction.transfer_routes import add_transfer_route
from eventledger.services.transaction.two_phase import TwoPhaseTransfers
from eventledger.services.transaction.two_phase_routes import add_two_phase_routes

__all__ = ["DESCRIPTION", "HEALTH_TIMEOUT", "REQUEST_ID_HEADER", "checked", "create_app"]

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
            on_outcome=counting(follow_events),
            writer=client,
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
        on_retry=counting(retries),
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
            feed=follower,  # its subscription, not a second one (see expiry.py)
        )
    app.state.expirer = expirer
    app.state.follower = follower
    execute = command_executor(secret=secret, new_id=new_id, commands=commands)
    add_account_routes(app, handler, execute)
    add_transfer_route(app, handler, two_phase, execute, clock=clock)

    @app.get(
        "/health",
        summary="Health",
        response_model=Health,
        responses=problems(_503="The stream service does not answer (`stream-unavailable`)."),
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

    add_two_phase_routes(
        app,
        two_phase,
        execute,
        read_optional=read_optional_model,
        command_body=command_body,
        responses=lambda model, described: {
            **replayed_response(model),
            **problems(**{**INPUT_PROBLEMS, **described}),
        },
    )
    add_forget_route(
        app,
        client,
        problems(
            _404="`account-not-found`",
            _403="`forbidden`: the caller's token lacks scope `admin` (here or at the stream "
            "service)",
            _400="Malformed JSON, or an invalid Idempotency-Key header "
            "(`invalid-idempotency-key`).",
            _413="Body over 1 MiB (`body-too-large`).",
            _415="A body that is not `application/json`.",
            _422="`invalid-account-id`, or a body other than none or `{}` (`validation-error`)",
            _502="`stream-error`",
            _503="`stream-unavailable`, `too-much-contention` (retry after `Retry-After`)",
        ),
    )
    add_reversal_route(
        app,
        handler,
        execute,
        read_body=lambda request: read_optional_model(request, ReverseBody),
        openapi_extra=command_body(ReverseBody, required=False),
        responses={
            **replayed_response(ReversalOut),
            **problems(
                _404="`transaction-not-found`",
                _409="`already-reversed` (with `reversed_by`), `not-reversible`, "
                "`transfer-pending`, `account-closed`, `insufficient-funds`, "
                "`balance-out-of-range`, `reversal-blocked` (its marker stream holds an event "
                "that is no reversal of it: see docs/reversals.md)",
                **{
                    **INPUT_PROBLEMS,
                    "_422": INPUT_PROBLEMS["_422"] + " `invalid-transaction-id`.",
                },
            ),
        },
    )
    return app
