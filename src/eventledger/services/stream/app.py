"""The stream service: the event store over HTTP (API.md, "Stream service").

A thin adapter. Requests are validated strictly (`schemas.py`), handed to the `EventStore`,
and its answers written as JSON (`encoding.py`); store errors become problem documents in one
table (`problems.py`); subscriptions are Server-Sent Events (`sse.py`).

Shutdown: the lifespan's shutdown ends every subscription. Uvicorn runs the lifespan shutdown
only after open connections finish, so a server that must stop within seconds while clients
are subscribed either sets `timeout_graceful_shutdown` or calls `app.state.begin_shutdown()`
when it is asked to exit (every open stream then ends cleanly at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import FastAPI, Path, Request
from fastapi.responses import Response

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.records import AppendResult, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.services.http import (
    ProblemError,
    create_service_app,
    is_json_media_type,
    json_body,
    parse_json,
    problem_responses,
    read_body,
    serve_directly,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.limits import principal_of
from eventledger.services.stream import schemas as s
from eventledger.services.stream.appends import run_items
from eventledger.services.stream.decoding import (
    appends_items,
    batch_appends,
    expected_of,
    model_appends,
    new_events,
    stream_append,
)
from eventledger.services.stream.encoding import (
    JSONBytes,
    append_result,
    encode_items,
    envelopes,
    json_response,
)
from eventledger.services.stream.erasure import add_forget_route, refuse_erasure_appends
from eventledger.services.stream.guard_snapshots import GuardSnapshots, GuardSnapshotStore
from eventledger.services.stream.guards import AccountGuard
from eventledger.services.stream.metrics import StreamMetrics
from eventledger.services.stream.pages import (
    LOG_PAGE_BYTES,
    SizeEstimate,
    log_page_json,
    read_log_page,
    read_stream_page,
    stream_page_json,
)
from eventledger.services.stream.problems import (
    handle_store_error,
    invalid_field,
    invalid_stream_name,
    store_unavailable,
)
from eventledger.services.stream.sse import (
    DEFAULT_MAX_SUBSCRIBERS,
    DEFAULT_MAX_SUBSCRIBERS_PER_PRINCIPAL,
    EventStreamResponse,
    Subscriptions,
    event_stream,
)

DESCRIPTION = """\
The event store of eventledger over HTTP: appends with optimistic concurrency, stream and
global-log reads, and live subscriptions as Server-Sent Events.

Errors are RFC 9457 problem documents with a stable `type`. Store failures: 409
`wrong-expected-version`, 409 `duplicate-event-id`, 422 `invalid-append`, 404
`stream-not-found`, 503 `store-unavailable` (with `Retry-After`).
"""

StreamPath = Annotated[
    str,
    Path(
        description="1-128 letters, digits, `_`, `.`, `-`, starting with a letter or digit "
        "(otherwise 422 `invalid-stream-name`).",
        examples=["account-acc-42"],
    ),
]


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return problem_responses({code: _PROBLEM_TEXT[code] for code in codes}, s.Problem)


_PROBLEM_TEXT = {
    400: "`malformed-json`: not JSON, duplicate keys, NaN",
    404: "`stream-not-found` / `event-not-found`",
    409: "`wrong-expected-version` (with `actual_version`), `duplicate-event-id`, or "
    "`invalid-account-history` (the stored events of the account stream already break the "
    "account rules); nothing written",
    413: "`body-too-large`: over 1 MiB",
    415: "`unsupported-media-type`",
    422: "`validation-error` (with `errors`), `invalid-stream-name`, `invalid-append`, "
    "`invalid-account-event` (an `account-*` event no reader could apply: `stream`, `index`, "
    "`rule`) or `expected-version-required` (an `account-*` append without a numeric "
    "`expected_version`), `erasure-needs-forget` (`PersonalDataErased` is written only by "
    "`POST /admin/accounts/{id}/forget`); nothing written",
    503: "`store-unavailable`: retry after `Retry-After` seconds",
}
_SUBSCRIBE_503 = (
    "`store-unavailable`, or `too-many-subscribers` (the subscriber caps are reached): "
    "retry after `Retry-After` seconds"
)
SUBSCRIBERS_RETRY_AFTER = "10"


def too_many_subscribers(subscriptions: Subscriptions) -> ProblemError:
    return ProblemError(
        503,
        "too-many-subscribers",
        "Too many subscribers",
        f"this service serves at most {subscriptions.max_total} subscriptions, and at most "
        f"{subscriptions.max_per_principal} per caller; retry later",
        headers={"Retry-After": SUBSCRIBERS_RETRY_AFTER},
    )


async def _json_body(request: Request) -> tuple[Any, int]:
    """The parsed (strict) JSON body and its size in bytes, or a 415/413/400 problem."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    raw = await read_body(request)
    return parse_json(raw), len(raw)


def _check_filters(types: list[str] | None, stream_prefix: str | None) -> tuple[list[str], str]:
    types = types or []
    if len(types) > s.MAX_TYPE_FILTERS:
        raise invalid_field("query.type", f"at most {s.MAX_TYPE_FILTERS} types")
    for event_type in types:
        if not s.is_event_type(event_type):
            raise invalid_field("query.type", f"{event_type[:200]!r} is not an event type")
    prefix = stream_prefix or ""
    if prefix and not s.STREAM_PREFIX.fullmatch(prefix):
        raise invalid_field(
            "query.stream_prefix", "1-128 letters, digits, '_', '.', '-' (or empty)"
        )
    return types, prefix


class _Runtime:
    """What the lifespan opens and the routes use."""

    def __init__(
        self,
        heartbeat: float,
        metrics: StreamMetrics,
        subscriptions: Subscriptions,
        snapshots: GuardSnapshots | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.subscriptions = subscriptions
        self.estimate = SizeEstimate()  # the encoded size of an event, to size store reads
        # The validity rule of account streams, on cached facts (and snapshots of them).
        self.guard = AccountGuard(snapshots=snapshots)
        self.snapshots = snapshots
        self._snapshot_writer: asyncio.Task[None] | None = None
        self._store: EventStore | None = None

    async def start(self, store: EventStore) -> None:
        self._store = store
        self.subscriptions.open(store)
        if self.snapshots is not None:
            self._snapshot_writer = asyncio.create_task(self.snapshots.run())

    async def stop(self) -> None:
        await self.subscriptions.aclose()
        writer, self._snapshot_writer = self._snapshot_writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self.snapshots is not None:
            try:
                await self.snapshots.flush()  # what was noted, not lost to the stop
            except Exception as exc:
                logging.getLogger(__name__).warning("guard snapshots not written: %s", exc)
            await self.snapshots.store.close()
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise store_unavailable("the stream service is not started")
        return self._store

    async def append(self, endpoint: str, appends: list[StreamAppend]) -> list[AppendResult]:
        store = self.store
        refuse_erasure_appends(appends)  # only a forget writes PersonalDataErased
        try:
            checked = await self.guard.check(store, appends)
            results = await store.append_batch(appends)
        except EventStoreError as exc:
            self.metrics.refused(endpoint, exc)
            raise  # the app's store error handler answers with the problem document
        self.guard.remember(checked, results)
        replayed = all(r.replayed for r in results)
        self.metrics.appended(
            endpoint, events=sum(len(a.events) for a in appends), replayed=replayed
        )
        return results


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
    runtime: _Runtime

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
    runtime = _Runtime(heartbeat_seconds, metrics, subscriptions, snapshots)
    app.state.subscriptions = runtime.subscriptions
    app.state.begin_shutdown = runtime.subscriptions.close
    app.add_exception_handler(EventStoreError, handle_store_error)

    # -- writing ----------------------------------------------------------------------------

    @app.post(
        "/streams/{stream}",
        status_code=201,
        response_model=s.AppendOut,
        responses={
            200: {"model": s.AppendOut, "description": "Idempotent re-send: nothing written"},
            **_problems(400, 409, 413, 415, 422, 503),
        },
        openapi_extra=json_body(s.AppendIn),
        summary="Append events to one stream",
        description="Appends if the stream is at `expected_version` (a number, `any`, "
        "`no_stream` or `exists`); 409 `wrong-expected-version` with `actual_version` "
        "otherwise, and nothing is written. Events without `id` get a UUID. Re-sending "
        "events whose ids are stored in this stream at the same place answers 200 with the "
        "original versions and positions and writes nothing; ids stored anywhere else are "
        "409 `duplicate-event-id`. 1-1000 events per append.",
    )
    async def append(stream: StreamPath, request: Request) -> Response:
        if not s.is_stream_name(stream):
            raise invalid_stream_name(stream)
        payload, size = await _json_body(request)
        one = stream_append(stream, payload, size)
        if one is None:  # not plainly valid: the model decides, and names what is wrong
            body = validate_body(payload, s.AppendIn)
            one = StreamAppend(stream, expected_of(body.expected_version), new_events(body.events))
        (result,) = await runtime.append("stream", [one])
        return json_response(append_result(result), 200 if result.replayed else 201)

    @app.post(
        "/batches",
        status_code=201,
        response_model=s.BatchOut,
        responses={
            200: {"model": s.BatchOut, "description": "Every append was an idempotent re-send"},
            **_problems(400, 409, 413, 415, 422, 503),
        },
        openapi_extra=json_body(s.BatchIn),
        summary="Append to several streams atomically",
        description="All appends are written, or none: one failed expected-version check "
        "(409) or invalid append (422) and nothing is written. One result per append, in "
        "request order; 200 when every append was an idempotent re-send. 1-100 appends, "
        "each stream at most once.",
    )
    async def append_batch(request: Request) -> Response:
        payload, size = await _json_body(request)
        appends = batch_appends(payload, size)
        if appends is None:  # not plainly valid: the model decides, and names what is wrong
            appends = model_appends(validate_body(payload, s.BatchIn).appends)
        results = await runtime.append("batch", appends)
        replayed = all(r.replayed for r in results)
        return json_response(
            {"results": [append_result(r) for r in results]}, 200 if replayed else 201
        )

    @app.post(
        "/appends",
        status_code=200,
        response_model=s.AppendsOut,
        responses=_problems(400, 413, 415, 422, 503),
        openapi_extra=json_body(s.AppendsIn),
        summary="Many independent appends, each with its own outcome",
        description="Each item is atomic like `POST /batches` (an item of one append is a "
        "plain stream append) and independent of the others: it is validated, checked and "
        "written on its own, and a failed check fails only its own item. The items are "
        "handed to the store together, so that one commit writes them all: one request and "
        "one commit serve many appends. Items run concurrently, in no order among them. "
        "The answer is 200 with one outcome per item, in request order: `status` 201 (or "
        "200 for an idempotent re-send) with `results`, or the status of the `problem` the "
        "item alone would have been answered with (409, 422, 503 `outcome-unknown` when "
        "the commit failed: re-send the item with the same event ids). 1-1000 items and at "
        "most 1 MiB; a request that is not such an envelope is refused as a whole (the "
        "problems below) and nothing is written.",
    )
    async def append_many(request: Request) -> Response:
        payload, size = await _json_body(request)
        raw_items = appends_items(payload)
        if raw_items is None:
            raw_items = validate_body(payload, s.AppendsEnvelope).items
        items = await run_items(
            lambda appends: runtime.append("appends", appends), raw_items, body_bytes=size
        )
        return JSONBytes(encode_items(items))

    # The hot write routes read and check their bodies themselves: no parameter resolution.
    async def append_direct(request: Request) -> Response:
        return await append(request.path_params["stream"], request)

    serve_directly(app, "POST", "/streams/{stream}", append_direct)
    serve_directly(app, "POST", "/batches", append_batch)
    serve_directly(app, "POST", "/appends", append_many)

    # -- reading ----------------------------------------------------------------------------

    @app.get(
        "/streams/{stream}",
        response_model=s.StreamPage,
        responses=_problems(404, 422, 503),
        summary="Read one stream",
        description="Events of the stream from `from_version` on, oldest first, at most "
        "`limit` (1-10000, default 100) and about 1 MiB of events (at least one event). "
        "`version` is the stream's current version: continue with `from_version` one above "
        "the last event's `stream_version` while it is below `version`. 404 "
        "`stream-not-found` when the stream has no events.",
    )
    async def read_stream(
        stream: StreamPath, from_version: s.FromVersion = 1, limit: s.StreamLimit = 100
    ) -> Response:
        if not s.is_stream_name(stream):
            raise invalid_stream_name(stream)
        store = runtime.store
        page = await read_stream_page(
            store,
            runtime.estimate,
            stream,
            from_version=from_version,
            limit=limit,
            max_bytes=LOG_PAGE_BYTES,
        )
        events = page.events
        if events and not page.cut:
            version = events[-1].stream_version  # the page reaches the end of the stream
        else:
            version = await store.stream_version(stream)
            if events:
                version = max(version, events[-1].stream_version)
        return JSONBytes(stream_page_json(stream, version, page))

    @app.get(
        "/events",
        response_model=s.LogPage,
        responses=_problems(422, 503),
        summary="Read a page of the global log",
        description="Events with a position above `after`, oldest first, at most `limit` "
        "(1-10000, default 1000) and about 1 MiB of events (a page always holds at least "
        "one event when there is one), optionally only of the given `type`s (repeatable) and "
        "of streams starting with `stream_prefix`. Continue with `after=last_position`. "
        "`last_position` is the position of the last event in the page; when the page is "
        "not full (neither `limit` events nor the byte bound reached) it is at least the "
        "head of the log as it was before the read, so a filtered reader skips past "
        "non-matching events instead of reading them again. An empty page answers "
        "`last_position` = max(after, head).",
    )
    async def read_log(
        after: s.Position = 0,
        limit: s.LogLimit = 1000,
        types: s.TypeFilter = None,
        stream_prefix: s.PrefixFilter = None,
    ) -> Response:
        type_list, prefix = _check_filters(types, stream_prefix)
        store = runtime.store
        filtered = bool(type_list) or bool(prefix)
        # Read the head *before* the page: every event up to it was visible to the read.
        head = await store.head_position() if filtered else 0
        page = await read_log_page(
            store,
            runtime.estimate,
            after=after,
            limit=limit,
            max_bytes=LOG_PAGE_BYTES,
            types=tuple(type_list),
            stream_prefix=prefix or None,
        )
        last = page.events[-1].position if page.events else after
        if not page.cut:
            last = max(last, head)
        return JSONBytes(log_page_json(page, last))

    @app.get(
        "/events/subscribe",
        status_code=200,
        response_class=EventStreamResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "`id:` the position, `event:` the type, `data:` the envelope; "
                "comment lines (`: …`) on connect and as heartbeat when idle.",
            },
            **_problems(422),
            **problem_responses({503: _SUBSCRIBE_503}, s.Problem),
        },
        summary="Subscribe to the global log (Server-Sent Events)",
        description="Every event after `after` (or after the `Last-Event-ID` header, which "
        "wins when both are given, as SSE reconnection expects), oldest first, then live as "
        "events are committed, with no gap or duplicate in between. Same filters as "
        "`GET /events`. A `: connected` comment is sent at once and `: heartbeat` after "
        "`heartbeat` seconds (0.1-60) of silence. If the store fails mid-stream, the stream "
        "ends after a `: store-unavailable` comment: reconnect with `Last-Event-ID`. "
        "Subscriptions are capped in all and per caller: past a cap the answer is 503 "
        "`too-many-subscribers` with `Retry-After`.",
    )
    async def subscribe(
        request: Request,
        after: s.Position = 0,
        last_event_id: s.LastEventId = None,
        types: s.TypeFilter = None,
        stream_prefix: s.PrefixFilter = None,
        heartbeat: s.Heartbeat = None,
    ) -> Response:
        type_list, prefix = _check_filters(types, stream_prefix)
        feed = runtime.subscriptions.feed
        if feed is None:
            raise store_unavailable("the stream service is not started")
        release = runtime.subscriptions.admit(principal_of(request.scope))
        if release is None:  # refused before any work: a flood of subscriptions costs little
            runtime.metrics.subscriptions_refused.inc()
            raise too_many_subscribers(runtime.subscriptions)
        try:
            await feed.check()  # answer 503 now, rather than open a dead stream
        except BaseException:
            release()
            raise
        body = event_stream(
            runtime.subscriptions,
            after=after if last_event_id is None else last_event_id,
            types=tuple(type_list),
            stream_prefix=prefix or None,
            heartbeat=runtime.heartbeat if heartbeat is None else heartbeat,
        )
        return EventStreamResponse(body, subscriptions=runtime.subscriptions, release=release)

    @app.get(
        "/events/{event_id}",
        response_model=s.Envelope,
        responses=_problems(404, 422, 503),
        summary="Get one event by id",
        description="Extension of API.md: the stored event with this id, or 404 "
        "`event-not-found`. Lets a writer find out whether an event it sent was stored.",
    )
    async def get_event(event_id: str) -> Response:
        if not s.UUID_RE.fullmatch(event_id):
            raise invalid_field("path.event_id", "must be a UUID")
        event = await runtime.store.get_event(UUID(event_id))
        if event is None:
            raise ProblemError(
                404, "event-not-found", "Event not found", f"no event with id {event_id}"
            )
        return json_response(envelopes([event])[0])

    @app.get(
        "/transactions/{transaction_id}/events",
        response_model=s.TransactionEvents,
        responses=_problems(422, 503),
        summary="Get the events of one transaction",
        description="Extension of API.md: the events of `account-*` streams whose data's "
        "`transaction_id` is this id (a canonical UUID, else 422), oldest first, at most "
        "`limit` (1-1000, default 100); an empty list when there are none. Found through the "
        "store's index of transaction ids, not by reading the log: the command side finds "
        "the events of a transaction it reverses this way.",
    )
    async def read_transaction(transaction_id: str, limit: s.TransactionLimit = 100) -> Response:
        if not s.UUID_RE.fullmatch(transaction_id) or transaction_id != transaction_id.lower():
            raise invalid_field("path.transaction_id", "must be a UUID in canonical form")
        events = await runtime.store.read_transaction(transaction_id, limit=limit)
        return json_response({"transaction_id": transaction_id, "events": envelopes(events)})

    add_forget_route(app, runtime, _problems(404, 409, 413, 415, 422, 503))

    # -- operations -------------------------------------------------------------------------

    @app.get(
        "/health",
        response_model=s.Health,
        responses=_problems(503),
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
