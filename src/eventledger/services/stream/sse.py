"""Live subscriptions: the global log as Server-Sent Events, catch-up then live.

One pull loop serves both phases, so there is no hand-over and hence no gap and no duplicate
at the boundary between them:

    feed.page(after=last) ── events? ──▶ send them, last = the page's resume point
          ▲                     │ not cut (caught up)
          └─ news, or ──────────┴──▶ feed.wait_past(last, heartbeat) ── timeout ──▶ ": heartbeat"
             a heartbeat

The store's ordering guarantee (a reader that has seen P never later sees a new event below P)
makes `last` a safe resume point. With filters, `last` also advances to the head read *before*
the page: every event up to that head was visible to the read, so none that matches was missed,
and the next wait sleeps until something newer than the head arrives instead of spinning.

Many subscribers cost the store and the event loop about what one does (`LogFeed`):

* one waiter watches the store's head for all of them, instead of one per subscriber;
* a page is read and encoded once for every subscriber asking for it at the same time (they
  all wake together at the same position when an event is committed), and pages that are
  complete are kept in a small cache bounded in bytes, so subscribers catching up from the
  same place share the work;
* what this service just committed is served from memory (`EventStore.live_page`,
  eventstore/recent.py): a live subscriber's page costs no query, thread hop or decode, and
  personal data in it is opened once for all subscribers (a page showing it is served once
  the store has heard every forget committed before; never kept in the page cache);
* what other instances committed (PostgreSQL) is read into that memory once, by one query
  for every subscriber and filter at the tail (`EventStore.fill_recent`), not by a page read
  per filter per wake-up; a subscriber far behind reads the store as before;
* at most `READ_CONCURRENCY` page reads run at once: the store's threads and connections stay
  free for appends, reads and `/health` however many subscribers catch up;
* every page is bounded in bytes (`SSE_PAGE_BYTES`) as well as in count (`PAGE_SIZE`);
* at most `SENDS_PER_TICK` pages are sent per turn of the event loop (`Turnstile`), so an
  append or a `/health` among hundreds of subscribers catching up waits for a few sends at
  each of its steps, not for all of them.

Backpressure: the loop yields one page at a time and the response awaits each `send`, which
waits while the client's socket buffer is full; a slow consumer slows its own loop and nothing
is queued without bound. The loop ends when the client disconnects (the response cancels it),
when the store fails (the stream ends; the client reconnects with `Last-Event-ID`), or when
`Subscriptions.close()` is called at shutdown, which ends every open response at once.

Admission: `Subscriptions.admit` caps the subscriptions in all and per principal (the caller's
token name, or its address when the service runs open); past a cap the route answers 503
`too-many-subscribers` with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
from prometheus_client import Gauge
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.encoding import sse_comment
from eventledger.services.stream.pages import SizeEstimate, read_log_page

PAGE_SIZE = 500
SSE_PAGE_BYTES = 64 * 1024  # per step of a subscription; also what a slow client may buffer
READ_CONCURRENCY = 2  # page reads in flight for all subscribers together
SENDS_PER_TICK = 4  # pages handed to subscribers per turn of the event loop
CACHE_BYTES = 16 * 1024 * 1024  # complete pages kept for subscribers catching up together
WATCH_SECONDS = 5.0  # the head watcher's longest single wait on the store
FINAL_SEND_SECONDS = 0.5  # at shutdown, how long to try to end a response cleanly

DEFAULT_MAX_SUBSCRIBERS = 256
DEFAULT_MAX_SUBSCRIBERS_PER_PRINCIPAL = 64

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class FramesPage:
    """A page as SSE bytes: `frames` to send, `last` to resume after, `cut` when more events
    follow at once (the subscriber is still catching up)."""

    frames: bytes
    last: int
    count: int
    cut: bool
    personal: bool = False  # shows personal data: never cached (pages.Page.personal)


PageKey = tuple[int, tuple[str, ...], str | None]


class Turnstile:
    """At most `per_tick` passes per turn of the event loop; later callers wait, in order.

    Without it, every subscriber with a page to send runs in the same turn of the loop, and
    anything else (an append, `/health`) waits for all of them at each of its own steps. With
    it, a turn does a bounded amount of subscription work and the other requests interleave."""

    def __init__(self, per_tick: int) -> None:
        self._per_tick = per_tick
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def wait(self) -> None:
        if self._used < self._per_tick and not self._waiters:
            self._used += 1
            self._schedule()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule()
        await waiter

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_tick)

    def _next_tick(self) -> None:
        self._scheduled = False
        self._used = 0
        while self._waiters and self._used < self._per_tick:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter (its client left) takes no pass
                waiter.set_result(None)
                self._used += 1
        if self._used:
            self._schedule()


class LogFeed:
    """What every subscription of one app shares: the head watcher and the page reader."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.head = 0  # the highest head seen by the watcher
        self._news: asyncio.Future[EventStoreError | None] = _future()
        self._watcher: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self._in_flight: dict[PageKey, asyncio.Task[FramesPage]] = {}
        self._cache: OrderedDict[PageKey, FramesPage] = OrderedDict()
        self._cache_bytes = 0
        self._estimate = SizeEstimate()
        self._waiters = 0
        self.turns = Turnstile(SENDS_PER_TICK)
        self._head_read: asyncio.Task[int] | None = None

    async def check(self) -> int:
        """The store's head, read once for every caller asking at the same time: a burst of
        new subscriptions costs the store one query, not one each. Raises the store's error."""
        task = self._head_read
        if task is None or task.done():
            task = self._head_read = asyncio.create_task(self.store.head_position())
            task.add_done_callback(_retrieved)
        return await asyncio.shield(task)

    # -- waiting for news ----------------------------------------------------------------

    async def wait_past(self, after: int, seconds: float) -> bool:
        """True once the head is above `after`, False after `seconds`. Raises the store's
        error when the watcher cannot read the head."""
        if self.head > after:
            return True
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="eventledger-head-watch")
        deadline = time.monotonic() + seconds
        self._waiters += 1
        try:
            while self.head <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                news = self._news
                try:
                    async with asyncio.timeout(remaining):
                        error = await asyncio.shield(news)
                except TimeoutError:
                    return False
                if error is not None:
                    raise error
            return True
        finally:
            self._waiters -= 1

    async def _watch(self) -> None:
        # Runs while someone waits: an idle service asks its store nothing.
        while self._waiters:
            try:
                if await self.store.wait_for_events(self.head, WATCH_SECONDS):
                    # Our own commits are known without a query (one read and one thread
                    # hop saved per commit); another writer's are found by asking the store.
                    head = self.store.known_head()
                    if head <= self.head:
                        head = await self.store.head_position()
                    if head > self.head:
                        self.head = head
                        self._announce(None)
            except EventStoreError as exc:
                self._announce(exc)
                await asyncio.sleep(1.0)  # the waiters end their streams; new ones retry

    def _announce(self, error: EventStoreError | None) -> None:
        news, self._news = self._news, _future()
        news.set_result(error)

    # -- pages ---------------------------------------------------------------------------

    async def page(self, key: PageKey) -> FramesPage:
        """The page after `key`'s position with `key`'s filters, read once for everyone."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.create_task(self._read(key))
            self._in_flight[key] = task
            task.add_done_callback(partial(self._done, key))
        # Shielded: one subscriber leaving does not cancel the read the others wait for.
        return await asyncio.shield(task)

    def _done(self, key: PageKey, task: asyncio.Task[FramesPage]) -> None:
        self._in_flight.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return  # the exception is retrieved above: no "never retrieved" warning
        page = task.result()
        # Cut: its content is final, nothing newer can appear below its last event. Not one
        # showing personal data: a forget would change it (pages.Page.personal).
        if page.cut and not page.personal:
            self._cache[key] = page
            self._cache_bytes += len(page.frames)
            while self._cache_bytes > CACHE_BYTES and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old.frames)

    async def _read(self, key: PageKey) -> FramesPage:
        after, types, prefix = key
        # What this service just committed is served from memory: no thread hop, no query,
        # no decode (eventstore/recent.py says when that is exact; None: read the store).
        # Personal data is opened there once for every subscriber; a page showing it is served
        # once the store has heard every forget committed before (EventStore.live_page).
        recent = await self.store.live_page(
            after, limit=PAGE_SIZE, max_bytes=SSE_PAGE_BYTES, types=types, stream_prefix=prefix
        )
        if (
            recent is None
            and self.head > after
            and await self.store.fill_recent(self.head, after=after)
        ):
            # At the tail, past what the store holds in memory: another instance's commits,
            # read once into it for every subscriber and filter (PostgreSQL), then served
            # from there. A subscriber far behind is not filled for: it reads the store.
            recent = await self.store.live_page(
                after, limit=PAGE_SIZE, max_bytes=SSE_PAGE_BYTES, types=types, stream_prefix=prefix
            )
        if recent is not None:
            frames = "".join(
                f"id: {e.position}\nevent: {e.type}\ndata: {e.text}\n\n" for e in recent.events
            ).encode("ascii")
            return FramesPage(frames, recent.last, len(recent.events), recent.cut, recent.sealed)
        async with self._reads:
            # With filters, the head before the page: see the module docstring for why it is
            # safe. Any position known committed and visible will do; the store's own lower
            # bound saves a query per page when it has reached what the watcher announced
            # (below that, a filtered subscriber would wake again at once; and with nothing
            # announced yet there is nothing to compare with: ask the store).
            head = 0
            if types or prefix:
                head = self.store.known_head()
                if head < self.head or not self.head:
                    head = await self.store.head_position()
            page = await read_log_page(
                self.store,
                self._estimate,
                after=after,
                limit=PAGE_SIZE,
                max_bytes=SSE_PAGE_BYTES,
                types=types,
                stream_prefix=prefix,
            )
        frames = "".join(
            f"id: {e.position}\nevent: {e.type}\ndata: {text}\n\n"
            for e, text in zip(page.events, page.encoded, strict=True)
        ).encode("ascii")
        last = page.events[-1].position if page.events else after
        if not page.cut:
            last = max(last, head)
        return FramesPage(frames, last, len(page.events), page.cut, page.personal)

    def forget(self) -> None:
        """Drop the cached pages (when nobody is subscribed, they serve no one)."""
        self._cache.clear()
        self._cache_bytes = 0

    async def close(self) -> None:
        tasks = [t for t in (self._watcher, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.forget()


def _retrieved(task: asyncio.Task[int]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here: no "never retrieved" warning if all waiters left


def _future() -> asyncio.Future[EventStoreError | None]:
    return asyncio.get_running_loop().create_future()


class Subscriptions:
    """The live subscriptions of one app: admits them under the caps, counts them, and ends
    them all at shutdown."""

    def __init__(
        self,
        gauge: Gauge,
        *,
        max_total: int = DEFAULT_MAX_SUBSCRIBERS,
        max_per_principal: int = DEFAULT_MAX_SUBSCRIBERS_PER_PRINCIPAL,
    ) -> None:
        if max_total < 1 or max_per_principal < 1:
            raise ValueError("subscriber caps must be at least 1")
        self.gauge = gauge
        self.max_total = max_total
        self.max_per_principal = max_per_principal
        self.feed: LogFeed | None = None
        self._closed = True
        self._by_principal: dict[str, int] = {}
        self._total = 0
        self._scopes: set[anyio.CancelScope] = set()

    def open(self, store: EventStore) -> None:
        """Called at startup, inside the running event loop."""
        self.feed = LogFeed(store)
        self._closed = False

    def close(self) -> None:
        """End every subscription now: each open response stops and finishes its body.
        Safe to call more than once; must be called from the event loop's thread."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()

    async def aclose(self) -> None:
        """`close()`, then stop the shared watcher and reads (before the store closes)."""
        self.close()
        feed, self.feed = self.feed, None
        if feed is not None:
            await feed.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def admit(self, principal: str) -> Callable[[], None] | None:
        """Count a new subscription of `principal`; None when a cap is reached. The returned
        function releases it (once)."""
        if self._total >= self.max_total:
            return None
        if self._by_principal.get(principal, 0) >= self.max_per_principal:
            return None
        self._total += 1
        self._by_principal[principal] = self._by_principal.get(principal, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._total -= 1
            left = self._by_principal[principal] - 1
            if left:
                self._by_principal[principal] = left
            else:
                del self._by_principal[principal]
            if not self._total and self.feed is not None:
                self.feed.forget()

        return release

    def track(self, scope: anyio.CancelScope) -> None:
        if self._closed:
            scope.cancel()
        self._scopes.add(scope)

    def untrack(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)


async def event_stream(
    subscriptions: Subscriptions,
    *,
    after: int,
    types: tuple[str, ...],
    stream_prefix: str | None,
    heartbeat: float,
) -> AsyncIterator[bytes]:
    """The SSE body: a `: connected` comment, then every matching event after `after`."""
    yield sse_comment(f"connected after={after}")
    last = after
    quiet_since = time.monotonic()
    news = True  # there may be events after `last`: read before waiting
    while not subscriptions.closed and (feed := subscriptions.feed) is not None:
        if news:
            try:
                page = await feed.page((last, types, stream_prefix))
            except EventStoreError as exc:
                yield sse_comment(f"store-unavailable: {type(exc).__name__}; reconnect later")
                return
            last = page.last
            if page.count:
                await feed.turns.wait()
                yield page.frames
                quiet_since = time.monotonic()
                if page.cut:
                    await asyncio.sleep(0)  # still catching up: let the others have a turn
                    continue
        idle = time.monotonic() - quiet_since
        if idle >= heartbeat:
            yield sse_comment("heartbeat")
            quiet_since = time.monotonic()
            idle = 0.0
        try:
            # No news within the heartbeat: nothing to read (an idle subscriber costs the
            # store nothing), only the next heartbeat to send.
            news = await feed.wait_past(last, heartbeat - idle)
        except EventStoreError as exc:
            yield sse_comment(f"store-unavailable: {type(exc).__name__}; reconnect later")
            return


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` that stops its body when the client disconnects (whatever the ASGI
    spec version of the server) or when the subscriptions close, counts itself in the
    subscribers gauge, and releases its admission when it ends."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        subscriptions: Subscriptions,
        release: Callable[[], None],
    ) -> None:
        super().__init__(content, headers=SSE_HEADERS)
        self._body = content
        self._subscriptions = subscriptions
        self._release = release
        self._started = False
        self._finished = False

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self._started = True
        async for chunk in self._body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gauge = self._subscriptions.gauge
        gauge.inc()
        cancel_scope: anyio.CancelScope | None = None
        try:
            async with anyio.create_task_group() as group:
                cancel_scope = group.cancel_scope
                self._subscriptions.track(cancel_scope)

                async def until_done(step: Callable[[], Awaitable[None]]) -> None:
                    await step()
                    group.cancel_scope.cancel()

                group.start_soon(until_done, partial(self._stream, send))
                group.start_soon(until_done, partial(self.listen_for_disconnect, receive))
            if self._started and not self._finished:
                # Ended by shutdown: finish the body so the client sees a clean end of stream
                # (it reconnects with Last-Event-ID). A client that reads nothing is not
                # waited for long.
                self._finished = True
                with anyio.move_on_after(FINAL_SEND_SECONDS):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except* OSError:
            pass  # the client went away mid-write (ASGI 2.4 servers): nothing left to tell it
        finally:
            if cancel_scope is not None:
                self._subscriptions.untrack(cancel_scope)
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
            gauge.dec()
            self._release()
