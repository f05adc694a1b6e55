"""Live subscriptions: the global log as Server-Sent Events, catch-up then live.

One pull loop serves both phases, so there is no hand-over and hence no gap and no duplicate
at the boundary between them:

    read_all(after=last) ── page? ──▶ send it, last = its last position
          ▲                  │ short page (caught up)
          └─ events, or ─────┴──▶ wait_for_events(last, heartbeat) ── timeout ──▶ ": heartbeat"
             a heartbeat

The store's ordering guarantee (a reader that has seen P never later sees a new event below P)
makes `last` a safe resume point. With filters, `last` also advances to the head read *before*
the page: every event up to that head was visible to the read, so none that matches was missed,
and the next wait sleeps until something newer than the head arrives instead of spinning.

Backpressure: the loop yields one page at a time and the response awaits each `send`, which
waits while the client's socket buffer is full; a slow consumer slows its own loop and nothing
is queued without bound. The loop ends when the client disconnects (the response cancels it),
when the store fails (the stream ends; the client reconnects with `Last-Event-ID`), or when
`Subscriptions.close()` is called at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import anyio
from prometheus_client import Gauge
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.encoding import sse_comment, sse_frames

PAGE_SIZE = 500

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Subscriptions:
    """The live subscriptions of one app: counts them and ends them all at shutdown."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._closed: asyncio.Future[None] | None = None

    def open(self) -> None:
        """Called at startup, inside the running event loop."""
        self._closed = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        """End every subscription at its next wait (they finish their response cleanly).
        Safe to call more than once; must be called from the event loop's thread."""
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed is None or self._closed.done()

    async def wait_for_events(self, store: EventStore, after: int, seconds: float) -> bool:
        """`store.wait_for_events`, cut short by `close()`. True when there may be news."""
        if self._closed is None:
            return False
        waiter = asyncio.ensure_future(store.wait_for_events(after, seconds))
        try:
            await asyncio.wait((waiter, self._closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        return waiter.done() and not waiter.cancelled() and waiter.result()


async def event_stream(
    store: EventStore,
    subscriptions: Subscriptions,
    *,
    after: int,
    types: Sequence[str],
    stream_prefix: str | None,
    heartbeat: float,
) -> AsyncIterator[bytes]:
    """The SSE body: a `: connected` comment, then every matching event after `after`."""
    yield sse_comment(f"connected after={after}")
    filtered = bool(types) or bool(stream_prefix)
    last = after
    quiet_since = time.monotonic()
    while not subscriptions.closed:
        try:
            # With filters, read the head first: see the module docstring for why it is safe.
            head = await store.head_position() if filtered else 0
            page = await store.read_all(
                after=last, limit=PAGE_SIZE, types=types, stream_prefix=stream_prefix
            )
        except EventStoreError as exc:
            yield sse_comment(f"store-unavailable: {type(exc).__name__}; reconnect later")
            return
        if page:
            yield sse_frames(page)
            last = page[-1].position
            quiet_since = time.monotonic()
            if len(page) == PAGE_SIZE:
                continue  # still catching up
        last = max(last, head)
        idle = time.monotonic() - quiet_since
        if idle >= heartbeat:
            yield sse_comment("heartbeat")
            quiet_since = time.monotonic()
            idle = 0.0
        try:
            await subscriptions.wait_for_events(store, last, heartbeat - idle)
        except EventStoreError as exc:
            yield sse_comment(f"store-unavailable: {type(exc).__name__}; reconnect later")
            return


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` that stops its body when the client disconnects, whatever the ASGI
    spec version of the server, and counts itself in the subscribers gauge."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], *, gauge: Gauge) -> None:
        super().__init__(content, headers=SSE_HEADERS)
        self._body = content
        self._gauge = gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._gauge.inc()
        try:
            async with anyio.create_task_group() as group:

                async def until_done(step: Callable[[], Awaitable[None]]) -> None:
                    await step()
                    group.cancel_scope.cancel()

                group.start_soon(until_done, partial(self.stream_response, send))
                group.start_soon(until_done, partial(self.listen_for_disconnect, receive))
        except* OSError:
            pass  # the client went away mid-write (ASGI 2.4 servers): nothing left to tell it
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
            self._gauge.dec()
