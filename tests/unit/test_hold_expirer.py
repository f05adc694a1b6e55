"""The hold expirer's bookkeeping, without a stream service: the deadlines it learns from
the log's envelopes, which it hands to `expire` and when, and that its memory is bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventledger.services.transaction.expiry import HoldExpirer

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
