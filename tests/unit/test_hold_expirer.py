"""The hold expirer's bookkeeping, without a stream service: the deadlines it learns from
the log's envelopes, which it hands to `expire` and when, that its memory is bounded, and the
hand-over from its catch-up pages to the follower's feed (no gap, no duplicate)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from eventledger.services.transaction.accounts import AccountCache
from eventledger.services.transaction.expiry import HoldExpirer
from eventledger.services.transaction.follower import LogFollower

START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def tid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def sent(n: int, seconds: float | None, position: int = 1) -> dict[str, Any]:
    expires = None
    if seconds is not None:
        expires = (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "stream": "account-a",
        "type": "PendingTransferSent",
        "position": position,
        "data": {"transaction_id": tid(n), "expires_at": expires},
    }


def ended(n: int, kind: str = "PendingTransferPosted", position: int = 2) -> dict[str, Any]:
    return {
        "stream": "account-a",
        "type": kind,
        "position": position,
        "data": {"transaction_id": tid(n)},
    }


class Expiries:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    async def __call__(self, transaction_id: str) -> object:
        self.calls.append(transaction_id)
        if transaction_id in self.fail:
            self.fail.discard(transaction_id)
            raise ConnectionError("stream service away")
        return object()


@pytest.mark.asyncio
async def test_holds_are_expired_once_when_due_and_not_before() -> None:
    clock, expire = Clock(), Expiries()
    expirer = HoldExpirer("http://127.0.0.1:1", expire, clock=clock)
    expirer.apply(sent(1, 30))
    expirer.apply(sent(2, 10))
    expirer.apply(sent(3, None))  # no timeout: never
    expirer.apply(sent(4, 20))
    expirer.apply(ended(4))  # posted before its deadline
    clock.now = START + timedelta(seconds=9)
    assert await expirer.expire_due() == 0
    clock.now = START + timedelta(seconds=30)
    assert await expirer.expire_due() == 2
    assert expire.calls == [tid(2), tid(1)]  # earliest deadline first
    assert await expirer.expire_due() == 0 and len(expirer) == 0
    assert expirer.position == 2


@pytest.mark.asyncio
async def test_a_failed_expiry_is_tried_again_later() -> None:
    clock, expire = Clock(), Expiries(fail={tid(1)})
    expirer = HoldExpirer("http://127.0.0.1:1", expire, clock=clock)
    expirer.apply(sent(1, 5))
    clock.now = START + timedelta(seconds=5)
    assert await expirer.expire_due() == 0
    assert await expirer.expire_due() == 0  # not again at once
    clock.now += timedelta(seconds=1)
    assert await expirer.expire_due() == 1
    assert expire.calls == [tid(1), tid(1)]


@pytest.mark.asyncio
async def test_memory_is_bounded_and_dropped_deadlines_are_read_again_from_the_log() -> None:
    clock, expire = Clock(), Expiries()
    expirer = HoldExpirer("http://127.0.0.1:1", expire, clock=clock, max_tracked=4)
    expirer.caught_up = True
    for n in range(8):
        expirer.apply(sent(n, 100 - n, position=n + 1))  # later holds, earlier deadlines
    assert len(expirer) == 4 and expirer.overflowed
    clock.now = START + timedelta(seconds=100)
    assert await expirer.expire_due() == 4
    assert expire.calls == [tid(7), tid(6), tid(5), tid(4)]  # the earliest were kept
    # Worked off: the log is read again from 0 for the ones dropped.
    assert (expirer.position, expirer.caught_up, expirer.overflowed) == (0, False, False)


def test_holds_ended_long_before_their_deadline_do_not_pile_up() -> None:
    expirer = HoldExpirer("http://127.0.0.1:1", Expiries(), clock=Clock())
    for n in range(5000):
        expirer.apply(sent(n, 3600))
        expirer.apply(ended(n, "PendingTransferVoided"))
    assert len(expirer) == 0
    assert expirer.heap_size <= 1024 + 1


def test_events_of_other_streams_and_malformed_ones_are_ignored() -> None:
    expirer = HoldExpirer("http://127.0.0.1:1", Expiries(), clock=Clock())
    expirer.apply(sent(1, 10) | {"stream": "transfer-x"})
    expirer.apply({"type": "PendingTransferSent", "stream": "account-a", "data": "nonsense"})
    bad = sent(2, 10)
    bad["data"]["expires_at"] = "tomorrow"
    expirer.apply(bad)
    assert len(expirer) == 0


# -- fed by the follower's subscription ----------------------------------------------------------


def posted(n: int, position: int) -> dict[str, Any]:
    return ended(n, position=position)


def credited(position: int) -> dict[str, Any]:
    return {"stream": "account-b", "type": "MoneyDeposited", "position": position, "data": {}}


Page = list[dict[str, Any]]


class Paged(HoldExpirer):
    """An expirer fed by a real `LogFollower` (never connected: the test hands it the feed's
    messages) whose catch-up reads scripted pages: each catch-up takes the next script, a list
    of (page, what the feed delivers while that page is read)."""

    def __init__(self, expire: Expiries, clock: Clock) -> None:
        self.follower = LogFollower("http://127.0.0.1:9", AccountCache())
        super().__init__(
            "http://127.0.0.1:9", expire, clock=clock, idle_wait=0.01, feed=self.follower
        )
        self.scripts: list[list[tuple[Page, Callable[[], None]]]] = []
        self.caught_up_times = 0
        self.done = asyncio.Event()

    def deliver(self, *envelopes: dict[str, Any]) -> None:
        for envelope in envelopes:
            self.follower.apply_data(json.dumps(envelope))

    async def catch_up(self, session: aiohttp.ClientSession) -> None:
        for page, meanwhile in self.scripts.pop(0):
            for envelope in page:
                self.apply(envelope)
            meanwhile()
            await asyncio.sleep(0)
        self.caught_up = True
        self.caught_up_times += 1
        self.done.set()


async def _caught_up(expirer: Paged, times: int) -> None:
    async with asyncio.timeout(5):
        while expirer.caught_up_times < times:
            expirer.done.clear()
            await expirer.done.wait()
    # The hand-over runs on in the same turn as the catch-up's end: it is done by now.


@pytest.mark.asyncio
async def test_the_feed_takes_over_from_the_pages_without_a_gap_or_a_duplicate() -> None:
    clock, expire = Clock(), Expiries()
    expirer = Paged(expire, clock)
    expirer.scripts.append(
        [
            # While the first page is read the feed brings 2 and 3 (the pages will too).
            ([sent(1, 10, 1)], lambda: expirer.deliver(sent(2, 10, 2), posted(1, 3))),
            # While the second is read: 4 (read by the pages too, and ended there at 5) and 6,
            # past the pages' end. Applying 4 again would bring back a posted hold.
            (
                [sent(2, 10, 2), posted(1, 3), sent(4, 10, 4), posted(4, 5)],
                lambda: expirer.deliver(sent(4, 10, 4), sent(3, 20, 6)),
            ),
        ]
    )
    task = asyncio.create_task(expirer.run())
    try:
        assert expirer.caught_up_times == 0
        expirer.feed_connected()
        await _caught_up(expirer, 1)
        assert expirer.position == 6 and len(expirer) == 2  # 2 and 3
        # Live: each event as it comes, in order, once.
        expirer.deliver(posted(4, 5), ended(2, "PendingTransferVoided", 7), credited(8))
        assert expirer.position == 8 and len(expirer) == 1
        expirer.deliver(sent(5, 30, 9))
        clock.now = START + timedelta(seconds=60)
        async with asyncio.timeout(5):
            while len(expire.calls) < 2:  # noqa: ASYNC110 - the expirer offers nothing to await
                await asyncio.sleep(0.01)
        assert expire.calls == [tid(3), tid(5)]
        assert expirer.caught_up_times == 1  # no page read once the feed carries the log
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_lost_feed_is_joined_again_through_the_pages_from_where_the_log_was_read() -> None:
    clock, expire = Clock(), Expiries()
    expirer = Paged(expire, clock)

    def lost() -> None:
        expirer.deliver(sent(2, 10, 2))  # kept, then the feed ends: 3 never comes by it
        expirer.feed_lost()

    expirer.scripts.append([([sent(1, 10, 1)], lost)])
    expirer.scripts.append([([sent(2, 10, 2), sent(3, 10, 3)], lambda: None)])
    task = asyncio.create_task(expirer.run())
    try:
        expirer.feed_connected()
        await _caught_up(expirer, 1)
        assert expirer.position == 1 and len(expirer) == 1  # what the lost feed kept: dropped
        expirer.deliver(sent(9, 10, 9))  # not followed while the feed is away
        expirer.feed_connected()
        await _caught_up(expirer, 2)
        expirer.deliver(sent(4, 10, 4))
        assert len(expirer) == 4 and expirer.position == 4
        clock.now = START + timedelta(seconds=10)
        async with asyncio.timeout(5):
            while len(expire.calls) < 4:  # noqa: ASYNC110 - the expirer offers nothing to await
                await asyncio.sleep(0.01)
        assert sorted(expire.calls) == [tid(1), tid(2), tid(3), tid(4)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
