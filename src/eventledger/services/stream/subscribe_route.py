"""The stream service's live subscription, `GET /events/subscribe` (Server-Sent Events,
`sse`): admitted under the subscriber caps (503 `too-many-subscribers` past them), checked
against the store before the stream opens."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from eventledger.services.http import ProblemError, problem_responses
from eventledger.services.limits import principal_of
from eventledger.services.stream import schemas as s
from eventledger.services.stream.problems import store_unavailable
from eventledger.services.stream.route_support import check_filters, problems
from eventledger.services.stream.runtime import Runtime
from eventledger.services.stream.sse import EventStreamResponse, Subscriptions, event_stream

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


def add_subscribe_route(app: FastAPI, runtime: Runtime) -> None:
    """Add the route to the stream service's app."""

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
            **problems(422),
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
        type_list, prefix = check_filters(types, stream_prefix)
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
