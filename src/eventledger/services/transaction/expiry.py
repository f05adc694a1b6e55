"""Expiring holds from the log, exactly once, across restarts and instances.

The deadlines are not kept anywhere but in the log: every `PendingTransferSent` with an
`expires_at` is one. `HoldExpirer` reads them from the stream service: first the filtered
pages of `GET /events?type=PendingTransferSent&type=PendingTransferPosted&
type=PendingTransferVoided&stream_prefix=account-` from position 0 (catch-up: the holds
still pending, whatever happened while no instance ran), then the live feed of the same
filter from where the pages ended. A posted or voided hold is forgotten as its event
passes. Once caught up, each hold whose deadline has passed (by the injected `clock`) is
handed to `expire` (`TwoPhaseTransfers.expire`), which decides on the two accounts' states
and writes the void with reason "expired".

Why no timer is the truth: a restart re-reads the deadlines from the log, and a deadline
that passed while no instance ran fires at once. Why exactly once: the expiry's event ids
are derived from the transfer id (`two_phase.expiry_ids`) and its append expects both
accounts' versions, so of several instances firing together one writes and the others meet
a conflict (they decide again and find the hold ended) or their own ids (a replay). A
failure (stream service away) keeps the deadline and tries again after a backoff.

Memory is bounded: at most `max_tracked` deadlines, the earliest; past that the latest are
dropped and the log is read again from 0 once the tracked ones have been worked off.

Given the instance's `LogFollower` (`feed`), the expirer opens no subscription of its own: the
follower's feed carries every account event, and a second subscription would cost the stream
service a wake-up at every commit (and, for another stream instance's commit, a page read from
the store) to deliver almost nothing. The hand-over from the pages to that feed leaves no gap
and repeats nothing:

    feed connected ─▶ keep its events from now on ─▶ pages from `position` until one is not
                      (those after the follower's      full: they reach at least the head,
                       last_position, in order)        hence the follower's position then
                    ─▶ apply the kept events past the pages' end ─▶ live: apply each as it comes

A feed lost (or kept events past `BUFFER_LIMIT`, or a rescan after an overflow) goes back to
the pages from `position` and joins the feed again the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from eventledger.domain.events import (
    ACCOUNT_STREAM_PREFIX,
    PendingTransferPosted,
    PendingTransferSent,
    PendingTransferVoided,
)
from eventledger.domain.pending import parse_time
from eventledger.services.readside.subscription import SSEParser, auth_headers
from eventledger.services.transaction.follower import LogFollower

log = logging.getLogger(__name__)

TYPES = (PendingTransferSent.TYPE, PendingTransferPosted.TYPE, PendingTransferVoided.TYPE)
DEFAULT_MAX_TRACKED = 100_000
PAGE = 1000
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 30.0  # no heartbeat for this long: the feed is gone
RETRY_AFTER = timedelta(seconds=1)  # a failed expiry is tried again this much later
# Events of the feed kept while the pages catch up; past this the pages are slower than the
# log grows, and the hand-over starts again from where they got to.
BUFFER_LIMIT = 10 * PAGE


class HoldExpirer:
    """Follows the deadlines of pending holds in the log and expires them when due."""

    def __init__(
        self,
        stream_url: str,
        expire: Callable[[str], Awaitable[object]],
        *,
        clock: Callable[[], datetime],
        token: str | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        idle_wait: float = 1.0,
        on_outcome: Callable[[str], None] | None = None,
        feed: LogFollower | None = None,
    ) -> None:
        self._base = stream_url.rstrip("/")
        self._expire = expire
        self._clock = clock
        self._headers = auth_headers(token)
        self._max_tracked = max_tracked
        self._idle_wait = idle_wait
        self._on_outcome = on_outcome
        self._deadlines: dict[str, datetime] = {}  # transaction id -> deadline
        self._heap: list[tuple[datetime, str]] = []  # may hold stale entries: see _due
        self._wake = asyncio.Event()
        self.position = 0  # the log is read up to here
        self.caught_up = False
        self.overflowed = False
        self.expired = 0  # expiries this instance wrote
        # Fed by the follower's subscription (None: the expirer subscribes itself).
        self._feed = feed
        self._feed_up = asyncio.Event()  # the feed is connected
        self._detached = asyncio.Event()  # live no more: catch up and join the feed again
        self._kept: list[dict[str, Any]] | None = None  # the feed's events during catch-up
        self._live = False  # the feed's events are applied as they come
        if feed is not None:
            feed.add_listener(self)

    def __len__(self) -> int:
        return len(self._deadlines)

    @property
    def heap_size(self) -> int:
        return len(self._heap)

    # -- what the log says --------------------------------------------------------------------

    def apply(self, envelope: Mapping[str, Any]) -> None:
        """Take one event envelope of the filtered log into account."""
        position = envelope.get("position")
        if type(position) is int:
            self.position = max(self.position, position)
        data = envelope.get("data")
        stream = envelope.get("stream")
        if not isinstance(data, Mapping) or not isinstance(stream, str):
            return
        if not stream.startswith(ACCOUNT_STREAM_PREFIX):
            return
        transaction_id = data.get("transaction_id")
        if not isinstance(transaction_id, str):
            return
        event_type = envelope.get("type")
        if event_type in (PendingTransferPosted.TYPE, PendingTransferVoided.TYPE):
            self._deadlines.pop(transaction_id, None)  # its heap entry is skipped later...
            if len(self._heap) > 2 * len(self._deadlines) + 1024:
                # ...or dropped here, so that holds ended long before their deadline do not
                # pile up in the heap: it stays within twice the deadlines tracked.
                self._heap = [(d, t) for t, d in self._deadlines.items()]
                heapq.heapify(self._heap)
        elif event_type == PendingTransferSent.TYPE:
            expires_at = data.get("expires_at")
            if isinstance(expires_at, str):
                try:
                    self._track(transaction_id, parse_time(expires_at))
                except ValueError:
                    return  # the guard refuses such a hold: nothing to expire

    def _track(self, transaction_id: str, deadline: datetime) -> None:
        if transaction_id in self._deadlines:
            return
        if len(self._deadlines) >= self._max_tracked:
            latest = max(self._deadlines, key=self._deadlines.__getitem__)
            self.overflowed = True
            if self._deadlines[latest] <= deadline:
                return  # read again from the log once the earlier ones are worked off
            del self._deadlines[latest]
        self._deadlines[transaction_id] = deadline
        heapq.heappush(self._heap, (deadline, transaction_id))
        self._wake.set()

    # -- firing -----------------------------------------------------------------------------

    def _due(self, now: datetime) -> list[str]:
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, transaction_id = heapq.heappop(self._heap)
            if self._deadlines.get(transaction_id) == deadline:
                due.append(transaction_id)
        return due

    def next_deadline(self) -> datetime | None:
        while self._heap and self._deadlines.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # posted, voided or dropped meanwhile
        return self._heap[0][0] if self._heap else None

    async def expire_due(self) -> int:
        """Expire every tracked hold whose deadline has passed; how many this call wrote."""
        written = 0
        now = self._clock()
        for transaction_id in self._due(now):
            try:
                result = await self._expire(transaction_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log keeps the deadline: try again a bit later
                log.warning("could not expire hold %s yet: %s", transaction_id, exc)
                heapq.heappush(self._heap, (now + RETRY_AFTER, transaction_id))
                self._deadlines[transaction_id] = now + RETRY_AFTER
                self._outcome("failed")
                continue
            self._deadlines.pop(transaction_id, None)
            if result is not None:
                written += 1
                self.expired += 1
            self._outcome("expired" if result is not None else "ended")
        if self.overflowed and len(self._deadlines) < self._max_tracked // 2:
            # Some deadlines were dropped: read the log again for them.
            self.overflowed = False
            self.position = 0
            self.caught_up = False
            self._detach()
        return written

    async def run(self) -> None:
        """Follow the log and expire holds, for ever (until cancelled)."""
        follower = asyncio.create_task(self._follow())
        try:
            while True:
                if self.caught_up:
                    await self.expire_due()
                wait = self._idle_wait
                deadline = self.next_deadline()
                if deadline is not None:
                    wait = min(wait, max(0.0, (deadline - self._clock()).total_seconds()))
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                # that arrives as the wake-up does, and the expirer would outlive its app.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                if follower.done():  # it only ends by failing: say so, start again
                    log.error("hold expirer feed ended: %s", follower.exception())
                    follower = asyncio.create_task(self._follow())
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    # -- the follower's feed (FeedListener) ---------------------------------------------------

    def feed_connected(self) -> None:
        self._feed_up.set()

    def feed_event(self, envelope: dict[str, Any]) -> None:
        if self._live:
            position = envelope.get("position")
            if type(position) is not int or position <= self.position:
                return  # read by the pages already (or no place in the log)
            if envelope.get("type") in TYPES:
                self.apply(envelope)
            else:  # every account event comes in order: nothing before it is missing
                self.position = position
        elif self._kept is not None and envelope.get("type") in TYPES:
            if len(self._kept) < BUFFER_LIMIT:
                self._kept.append(envelope)
            else:
                self._kept = None  # the hand-over starts again once the pages are done

    def feed_lost(self) -> None:
        self._feed_up.clear()
        self._detach()

    def _detach(self) -> None:
        self._live = False
        self._kept = None
        self._detached.set()

    # -- reading the log --------------------------------------------------------------------

    async def _follow(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
        )
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            if self._feed is None:
                await self._follow_forever(session)
            else:
                await self._follow_feed(session)

    async def _follow_forever(self, session: aiohttp.ClientSession) -> None:
        delay = 0.05
        while True:
            try:
                await self.catch_up(session)
                delay = 0.05
                await self._subscribe(session)
            except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                log.debug("hold expirer: %s; again in %.2f s", exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, 2.0)

    async def _follow_feed(self, session: aiohttp.ClientSession) -> None:
        """Catch up with pages, then apply the follower's feed (see the module docstring)."""
        delay = 0.05
        while True:
            await self._feed_up.wait()
            # No await between the wait and here: the feed has handed out every event up to
            # its last_position, and keeps each one after it from now on.
            self._detached.clear()
            self._kept = []
            try:
                await self.catch_up(session)
            except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                self._kept = None
                log.debug("hold expirer: %s; again in %.2f s", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            kept, self._kept = self._kept, None
            if kept is None or not self.caught_up:
                continue  # the feed was lost, kept too much, or a rescan was asked for
            # The pages ended at or past the feed's position when it was joined: what the
            # feed brought since, past the pages, follows them without a gap.
            self._live = True
            for envelope in kept:
                self.feed_event(envelope)
            await self._detached.wait()

    def _params(self, after: int) -> list[tuple[str, str]]:
        return [
            ("after", str(after)),
            *(("type", t) for t in TYPES),
            ("stream_prefix", ACCOUNT_STREAM_PREFIX),
        ]

    async def catch_up(self, session: aiohttp.ClientSession) -> None:
        """Read the filtered log in pages from `position` up to the head."""
        while True:
            params = [*self._params(self.position), ("limit", str(PAGE))]
            async with session.get(
                self._base + "/events", params=params, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                if response.status != 200:
                    raise ValueError(f"GET /events answered {response.status}")
                page: Any = await response.json(content_type=None)
            events, last = page.get("events"), page.get("last_position")
            if not isinstance(events, list) or type(last) is not int:
                raise ValueError("malformed page of the log")
            for envelope in events:
                if isinstance(envelope, dict):
                    self.apply(envelope)
            self.position = max(self.position, last)
            if len(events) < PAGE:  # not full: `last` is at least the head before the read
                self.caught_up = True
                self._wake.set()
                return

    async def _subscribe(self, session: aiohttp.ClientSession) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=CONNECT_TIMEOUT,
            sock_connect=CONNECT_TIMEOUT,
            sock_read=READ_TIMEOUT,
        )
        async with session.get(
            self._base + "/events/subscribe",
            params=self._params(self.position),
            headers={"Accept": "text/event-stream"},
            timeout=timeout,
        ) as response:
            if response.status != 200:
                raise ValueError(f"subscribe answered HTTP {response.status}")
            parser = SSEParser()
            async for chunk in response.content.iter_any():
                for message in parser.feed(chunk):
                    try:
                        envelope = json.loads(message.data)
                    except ValueError:
                        continue
                    if isinstance(envelope, dict):
                        self.apply(envelope)
                if not self.caught_up:  # a rescan was asked for (overflow)
                    return

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
