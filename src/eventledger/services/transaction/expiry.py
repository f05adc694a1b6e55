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

log = logging.getLogger(__name__)

TYPES = (PendingTransferSent.TYPE, PendingTransferPosted.TYPE, PendingTransferVoided.TYPE)
DEFAULT_MAX_TRACKED = 100_000
PAGE = 1000
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 30.0  # no heartbeat for this long: the feed is gone
RETRY_AFTER = timedelta(seconds=1)  # a failed expiry is tried again this much later


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
        return written

    async def run(self) -> None:
        """Follow the log and expire holds, for ever (until cancelled)."""
        follower = asyncio.create_task(self._follow_forever())
        try:
            while True:
                if self.caught_up:
                    await self.expire_due()
                wait = self._idle_wait
                deadline = self.next_deadline()
                if deadline is not None:
                    wait = min(wait, max(0.0, (deadline - self._clock()).total_seconds()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                if follower.done():  # it only ends by failing: say so, start again
                    log.error("hold expirer feed ended: %s", follower.exception())
                    follower = asyncio.create_task(self._follow_forever())
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    # -- reading the log --------------------------------------------------------------------

    async def _follow_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
        )
        delay = 0.05
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            while True:
                try:
                    await self.catch_up(session)
                    delay = 0.05
                    await self._subscribe(session)
                except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                    log.debug("hold expirer: %s; again in %.2f s", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                delay = min(delay * 2, 2.0)

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
