"""The stream service's read routes: pages of one stream (`GET /streams/{stream}`) and of the
global log (`GET /events`), the live subscription in between (`subscribe_route`), and lookups
by id (`GET /events/{event_id}`, `GET /transactions/{transaction_id}/events`)."""

from __future__ import annotations

from uuid import UUID

from fastapi import FastAPI
from fastapi.responses import Response

from eventledger.services.http import ProblemError
from eventledger.services.stream import schemas as s
from eventledger.services.stream.encoding import JSONBytes, envelopes, json_response
from eventledger.services.stream.pages import (
    LOG_PAGE_BYTES,
    log_page_json,
    read_log_page,
    read_stream_page,
    stream_page_json,
)
from eventledger.services.stream.problems import invalid_field, invalid_stream_name
from eventledger.services.stream.route_support import StreamPath, check_filters, problems
from eventledger.services.stream.runtime import Runtime
from eventledger.services.stream.subscribe_route import add_subscribe_route


def add_read_routes(app: FastAPI, runtime: Runtime) -> None:
    """Add the routes to the stream service's app."""

    @app.get(
        "/streams/{stream}",
        response_model=s.StreamPage,
        responses=problems(404, 422, 503),
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
        responses=problems(422, 503),
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
        type_list, prefix = check_filters(types, stream_prefix)
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

    # Before `/events/{event_id}`: the first declared route that matches a path answers it.
    add_subscribe_route(app, runtime)

    @app.get(
        "/events/{event_id}",
        response_model=s.Envelope,
        responses=problems(404, 422, 503),
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
        responses=problems(422, 503),
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
