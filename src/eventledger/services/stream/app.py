"""The stream service: the event store over HTTP (API.md, "Stream service").

A thin adapter. Requests are validated strictly (`schemas.py`), handed to the `EventStore`,
and its answers written as JSON (`encoding.py`); store errors become problem documents in one
table (`problems.py`); subscriptions are Server-Sent Events (`sse.py`). `create_app` wires the
service (`runtime.py`: what the lifespan opens and the routes use) and its routes, one module
per group: `write_routes.py`, `read_routes.py` (with `subscribe_route.py`), `erasure.py`.

Shutdown: the lifespan's shutdown ends every subscription. Uvicorn runs the lifespan shutdown
only after open connections finish, so a server that must stop within seconds while clients
are subscribed either sets `timeout_graceful_shutdown` or calls `app.state.begin_shutdown()`
when it is asked to exit (every open stream then ends cleanly at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.store import EventStore
from eventledger.services.http import create_service_app
from eventledger.services.stream import schemas as s
from eventledger.services.stream.encoding import json_response
from eventledger.services.stream.erasure import add_forget_route
from eventledger.services.stream.guard_snapshots import GuardSnapshots, GuardSnapshotStore
from eventledger.services.stream.metrics import StreamMetrics
from eventledger.services.stream.problems import handle_store_error, store_unavailable
from eventledger.services.stream.read_routes import add_read_routes
from eventledger.services.stream.route_support import StreamPath, problems
from eventledger.services.stream.runtime import Runtime
from eventledger.services.stream.sse import (
    DEFAULT_MAX_SUBSCRIBERS,
    DEFAULT_MAX_SUBSCRIBERS_PER_PRINCIPAL,
    Subscriptions,
)
from eventledger.services.stream.subscribe_route import (
    SUBSCRIBERS_RETRY_AFTER,
    too_many_subscribers,
)
from eventledger.services.stream.write_routes import add_write_routes

__all__ = [
    "DESCRIPTION",
    "SUBSCRIBERS_RETRY_AFTER",
    "StreamPath",
    "create_app",
    "too_many_subscribers",
]

DESCRIPTION = """\
The event store of eventledger over HTTP: appends with optimistic concurrency, stream and
global-log reads, and live subscriptions as Server-Sent Events.

Errors are RFC 9457 problem documents with a stable `type`. Store failures: 409
`wrong-expected-version`, 409 `duplicate-event-id`, 422 `invalid-append`, 404
`stream-not-found`, 503 `store-unavailable` (with `Retry-After`).
"""


def create_app(
    *,
    open_store: Callable[[], Awaitable[EventStore]],
    heartbeat_seconds: float = 15.0,
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
    max_subscribers_per_principal: int = DEFAULT_MAX_SUBSCRIBERS_PER_PRINCIPAL,
    guard_snapshot_store: GuardSnapshotStore | None = None,
    guard_snapshot_every: int = 1000,
) -> FastAPI:
    """The stream service app. Its lifespan opens the store with `open_store` and closes it;
    `heartbeat_seconds` is how long a subscription stays silent before a heartbeat comment;
    past `max_subscribers` open subscriptions, or `max_subscribers_per_principal` of one
    caller, a new one is refused (503 `too-many-subscribers`). `guard_snapshot_store`: where
    the guard keeps account facts every `guard_snapshot_every` events, so a cold service does
    not fold whole account streams (`guard_snapshots`; None: it does)."""
    if not 0 < heartbeat_seconds <= 3600:
        raise ValueError(f"heartbeat_seconds must be in (0, 3600], not {heartbeat_seconds!r}")
    runtime: Runtime

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start(await open_store())
        try:
            yield
        finally:
            await runtime.stop()

    app, http_metrics = create_service_app(
        service="stream",
        title="eventledger stream service",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    metrics = StreamMetrics(http_metrics.registry)
    subscriptions = Subscriptions(
        metrics.subscribers,
        max_total=max_subscribers,
        max_per_principal=max_subscribers_per_principal,
    )
    snapshots = (
        GuardSnapshots(guard_snapshot_store, every=guard_snapshot_every)
        if guard_snapshot_store is not None
        else None
    )
    runtime = Runtime(heartbeat_seconds, metrics, subscriptions, snapshots)
    app.state.subscriptions = runtime.subscriptions
    app.state.begin_shutdown = runtime.subscriptions.close
    app.add_exception_handler(EventStoreError, handle_store_error)

    add_write_routes(app, runtime)
    add_read_routes(app, runtime)
    add_forget_route(app, runtime, problems(404, 409, 413, 415, 422, 503))

    # -- operations -------------------------------------------------------------------------

    @app.get(
        "/health",
        response_model=s.Health,
        responses=problems(503),
        summary="Health",
        description="200 with the head position while the store answers; 503 "
        "`store-unavailable` otherwise.",
    )
    async def health() -> Response:
        store = runtime.store
        try:
            await store.ping()
            head = await store.head_position()
        except Exception as exc:  # any store failure means we cannot serve
            raise store_unavailable(f"{type(exc).__name__}: {exc}") from exc
        return json_response({"status": "ok", "service": "stream", "head_position": head})

    return app
