"""The account cache as a projection of the log: it follows the stream service's live feed.

Without it, each transaction instance decides from what it last wrote or read itself: as
soon as another instance writes an account, the cached state is stale, the append fails its
expected-version check and the command is decided again. With several instances behind a
load balancer almost every command then conflicts, although no two commands met.

`LogFollower` subscribes to `GET /events/subscribe?after=<head>&stream_prefix=account-`
and applies every account event to the cached state it follows (`fold_recorded`, with the
validity rule):

* an event at the version after the cached one advances the entry;
* an event at or below the cached version is already in it (this instance's own write,
  remembered when its append answered) and is skipped;
* an event beyond the next version (a gap: the entry was cached from a read that raced this
  feed) or one that breaks the account rules drops the entry: the next command loads it;
* accounts that are not cached are not loaded: the feed only keeps what is held fresh.

A lost connection drops the whole cache (nothing cached while the feed was away can be
vouched for) and the follower subscribes again from the head then, with backoff. Either way
the cache stays a guess that the append's expected version checks: the follower only makes
the guess right far more often.

The subscription is shared: every envelope it carries is also handed to the `FeedListener`s
added (the hold expirer, `expiry`), in log order, with word of each connection made and lost.
One subscription per instance, not one per consumer: each costs the stream service a wake-up
and, for a commit of another stream instance, a page read from the store, at every commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from eventledger.domain.account import Account
from eventledger.domain.events import stream_name
from eventledger.domain.plain import money_move
from eventledger.eventstore.codec import from_envelope
from eventledger.services.readside.subscription import SSEParser, auth_headers
from eventledger.services.transaction.accounts import (
    AccountCache,
    InvalidAccountHistory,
    fold_recorded,
)

log = logging.getLogger(__name__)

ACCOUNT_PREFIX = stream_name("")  # "account-"
# A silent feed (no heartbeat for this long) is treated as gone; the stream service sends a
# heartbeat comment every few seconds when idle.
READ_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0


class FeedListener(Protocol):
    """Something else that reads the follower's subscription (`LogFollower.add_listener`)."""

    def feed_connected(self) -> None:
        """A subscription is open: from here on every account event after the follower's
        `last_position` is handed to `feed_event`, in log order, until `feed_lost`."""

    def feed_event(self, envelope: dict[str, Any]) -> None:
        """One event envelope of the feed (decoded JSON; not checked beyond being an object).
        Called synchronously from the follower's read loop: keep it short, never raise."""

    def feed_lost(self) -> None:
        """The subscription ended: events may be missed until the next `feed_connected`."""


class WriterHint(Protocol):
    """Where the stream instance that writes is (StreamClient): None when ours writes, or
    none was named; a follower that cannot reach it sets it back to None."""

    writer_url: str | None


class LogFollower:
    """Keeps `cache` following the account streams of the log at `stream_url`.

    `on_outcome` is told what became of each account event ("applied", "skipped",
    "dropped") and of each connection ("reconnected"), for the metrics."""

    def __init__(
        self,
        stream_url: str,
        cache: AccountCache,
        *,
        token: str | None = None,
        on_outcome: Callable[[str], None] | None = None,
        min_delay: float = 0.05,
        max_delay: float = 2.0,
        writer: WriterHint | None = None,
    ) -> None:
        self._base = stream_url.rstrip("/")
        # The stream instance that writes, when ours named one (StreamClient.writer_url): its
        # feed has every row the moment it commits, where ours reads them back first.
        self._writer = writer
        self._cache = cache
        self._headers = auth_headers(token)
        self._on_outcome = on_outcome
        self._min_delay = min_delay
        self._max_delay = max_delay
        self.connected = False
        self.last_position = 0
        self.last_error: str | None = None
        self._listeners: list[FeedListener] = []

    def add_listener(self, listener: FeedListener) -> None:
        """Hand every envelope of the feed to `listener` too (see `FeedListener`)."""
        self._listeners.append(listener)

    async def run(self) -> None:
        """Follow for ever (until cancelled), reconnecting with backoff."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
        )
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            delay = self._min_delay
            while True:
                try:
                    await self._follow(session)
                    self.last_error = "the stream service ended the subscription"
                except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    if self.connected:
                        delay = self._min_delay
                        for listener in self._listeners:
                            listener.feed_lost()
                    self.connected = False
                    # What was cached while the feed is away cannot be vouched for.
                    self._cache.clear()
                log.debug("log follower: %s; again in %.2f s", self.last_error, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                delay = min(delay * 2, self._max_delay)

    def _target(self) -> str:
        writer = self._writer.writer_url if self._writer is not None else None
        return writer or self._base

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        target = self._target()
        try:
            await self._follow_at(session, target)
        except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError):
            if target != self._base and self._writer is not None:
                # The writer went away: our own instance again (it appends or hands over).
                self._writer.writer_url = None
            raise

    async def _follow_at(self, session: aiohttp.ClientSession, base: str) -> None:
        # The head first, then the cache emptied, then the feed from that head: an entry
        # cached after this point was read at or after the head, so the feed carries every
        # event it lacks.
        head = await self._head(session, base)
        self._cache.clear()
        params = {"after": str(head), "stream_prefix": ACCOUNT_PREFIX}
        sse_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=CONNECT_TIMEOUT,
            sock_connect=CONNECT_TIMEOUT,
            sock_read=READ_TIMEOUT,
        )
        async with session.get(
            base + "/events/subscribe",
            params=params,
            headers={"Accept": "text/event-stream"},
            timeout=sse_timeout,
        ) as response:
            if response.status != 200:
                raise ValueError(f"subscribe answered HTTP {response.status}")
            self.connected = True
            self.last_position = head
            self._outcome("connected")
            for listener in self._listeners:
                listener.feed_connected()
            parser = SSEParser()
            async for chunk in response.content.iter_any():
                for message in parser.feed(chunk):
                    self.apply_data(message.data)
                if self._target() != base:
                    return  # another instance writes now: follow its feed instead

    async def _head(self, session: aiohttp.ClientSession, base: str) -> int:
        async with session.get(
            base + "/health", timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT)
        ) as response:
            body: Any = await response.json(content_type=None)
        head = body.get("head_position") if isinstance(body, dict) else None
        if response.status != 200 or type(head) is not int:
            raise ValueError(f"the stream service's /health answered {response.status}")
        return head

    def apply_data(self, data: str) -> str:
        """Apply one SSE message's envelope to the cache; what became of it."""
        try:
            envelope = json.loads(data)
        except ValueError:
            return self._outcome("skipped")
        if not isinstance(envelope, dict):
            return self._outcome("skipped")
        for listener in self._listeners:
            listener.feed_event(envelope)
        try:
            stream = envelope["stream"]
            version = envelope["stream_version"]
            position = envelope["position"]
        except KeyError:
            return self._outcome("skipped")
        if type(position) is int:
            self.last_position = max(self.last_position, position)
        if not isinstance(stream, str) or not stream.startswith(ACCOUNT_PREFIX):
            return self._outcome("skipped")
        account_id = stream[len(ACCOUNT_PREFIX) :]
        # Cheap checks before decoding: most events are of accounts not cached here, or
        # this instance's own writes, already in the entry.
        state = self._cache.peek(account_id)
        if state is None or (type(version) is int and version <= state.version):
            return self._outcome("skipped")
        if version != state.version + 1:
            self._cache.drop(account_id)
            return self._outcome("dropped")
        after = _plain_next(state, envelope)
        if after is not None:
            self._cache.advance(after)
            return self._outcome("applied")
        try:
            recorded = from_envelope(envelope)
            after = fold_recorded(state, [recorded])
        except (ValueError, KeyError, TypeError, InvalidAccountHistory):
            # Not an event this code can fold: the next command loads the account and
            # meets the same history (and answers for it).
            self._cache.drop(account_id)
            return self._outcome("dropped")
        self._cache.advance(after)
        return self._outcome("applied")

    def _outcome(self, outcome: str) -> str:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        return outcome


def _plain_next(state: Account, envelope: dict[str, Any]) -> Account | None:
    """The state after the envelope's event when it is a plain money event on the open
    account that passes the rule's per-event checks (`domain.plain.money_move`, the checks
    `fold_recorded` would make), without decoding it into a recorded and a domain event: a
    third of the cost of applying the usual traffic. None for anything else: the full fold
    decides, and words any refusal."""
    data = envelope.get("data")
    if not state.exists or state.closed or not isinstance(data, dict):
        return None
    move = money_move(
        envelope.get("type"),
        envelope.get("schema_version"),
        data,
        state.account_id,
        state.balance,
        state.pending_debits,
        state.pending_credits,
    )
    if move is None:
        return None
    # Spelled out rather than dataclasses.replace (the cost of the rest of this function).
    return Account(
        state.account_id,
        state.exists,
        state.currency,
        state.overdraft_limit,
        state.owner,
        move[4],
        state.closed,
        state.version + 1,
        state.pending,
        state.pending_debits,
        state.pending_credits,
    )
