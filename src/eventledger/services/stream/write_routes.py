"""The stream service's write routes: `POST /streams/{stream}` (one stream), `POST /batches`
(several streams, atomically) and `POST /appends` (many independent appends, one commit).
Each reads and checks its own body (plainly valid bodies skip the models) and appends through
`Runtime.append`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from eventledger.eventstore.records import StreamAppend
from eventledger.services.http import json_body, serve_directly, validate_body
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
    json_response,
)
from eventledger.services.stream.forwarding import every_event_has_an_id
from eventledger.services.stream.problems import invalid_stream_name
from eventledger.services.stream.route_support import (
    StreamPath,
    problems,
    read_json_body,
    read_json_bytes,
)
from eventledger.services.stream.runtime import Runtime


def add_write_routes(app: FastAPI, runtime: Runtime) -> None:
    """Add the routes to the stream service's app."""

    @app.post(
        "/streams/{stream}",
        status_code=201,
        response_model=s.AppendOut,
        responses={
            200: {"model": s.AppendOut, "description": "Idempotent re-send: nothing written"},
            **problems(400, 409, 413, 415, 422, 503),
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
        payload, size = await read_json_body(request)
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
            **problems(400, 409, 413, 415, 422, 503),
        },
        openapi_extra=json_body(s.BatchIn),
        summary="Append to several streams atomically",
        description="All appends are written, or none: one failed expected-version check "
        "(409) or invalid append (422) and nothing is written. One result per append, in "
        "request order; 200 when every append was an idempotent re-send. 1-100 appends, "
        "each stream at most once.",
    )
    async def append_batch(request: Request) -> Response:
        payload, size = await read_json_body(request)
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
        responses=problems(400, 413, 415, 422, 503),
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
        payload, raw = await read_json_bytes(request)
        raw_items = appends_items(payload)
        writer = runtime.forwarder.target(request, runtime.store.forward_to())
        if writer is not None and raw_items is not None and every_event_has_an_id(raw_items):
            answer = await runtime.forwarder.forward(request, writer, raw)
            if answer is not None:
                return answer
        if raw_items is None:
            raw_items = validate_body(payload, s.AppendsEnvelope).items
        items = await run_items(
            lambda appends: runtime.append("appends", appends), raw_items, body_bytes=len(raw)
        )
        return JSONBytes(encode_items(items))

    # The hot write routes read and check their bodies themselves: no parameter resolution.
    async def append_direct(request: Request) -> Response:
        return await append(request.path_params["stream"], request)

    serve_directly(app, "POST", "/streams/{stream}", append_direct)
    serve_directly(app, "POST", "/batches", append_batch)
    serve_directly(app, "POST", "/appends", append_many)
