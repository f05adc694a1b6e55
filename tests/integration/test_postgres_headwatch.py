"""HeadWatch (postgres_listener.py): a feed woken by another instance's commit reads the head
once, not once to find nothing and once more when the NOTIFY arrives; the answer is still
always the table's, and a stale confirmation is renewed by a read."""

from __future__ import annotations

import asyncio

import pytest

from eventledger.eventstore.postgres_listener import RECHECK_INTERVAL, HeadWatch

pytestmark = pytest.mark.asyncio


class Table:
    def __init__(self, head: int) -> None:
        self.head = head
        self.reads = 0

    async def read(self) -> int:
        self.reads += 1
        return self.head


async def test_a_notified_commit_costs_one_read_of_the_head() -> None:
    watch, table = HeadWatch(), Table(5)
    assert await watch.wait_for_events(4, 1.0, read_head=table.read)
    assert table.reads == 1  # nothing confirmed yet: read
    waiting = asyncio.create_task(watch.wait_for_events(5, 5.0, read_head=table.read))
    await asyncio.sleep(0)  # the task runs until it waits: no read on its way
    assert watch.waiters == 1
    assert table.reads == 1  # confirmed a moment ago, nothing heard: no query
    table.head = 6
    watch.advance(6)  # the listener heard a NOTIFY
    assert await waiting
    assert table.reads == 2  # the one read that confirms the hint


async def test_the_answer_is_the_tables_and_an_old_confirmation_is_renewed() -> None:
    watch, table = HeadWatch(), Table(5)
    assert await watch.wait_for_events(4, 1.0, read_head=table.read)
    table.head = 7  # committed, its NOTIFY not heard yet
    assert await watch.wait_for_events(5, 0.0, read_head=table.read)  # no wait: read
    assert table.reads == 2
    watch.confirmed_at -= RECHECK_INTERVAL  # the last read is stale
    assert not await watch.wait_for_events(7, 0.05, read_head=table.read)
    assert table.reads == 4  # at once (stale), and at the deadline (the answer)


async def test_a_wake_up_by_our_own_commit_costs_no_read() -> None:
    watch, table = HeadWatch(), Table(5)
    known = 5
    assert await watch.wait_for_events(4, 1.0, read_head=table.read, known=lambda: known)
    assert table.reads == 0  # our own commit is known committed: no query
    waiting = asyncio.create_task(
        watch.wait_for_events(5, 5.0, read_head=table.read, known=lambda: known)
    )
    await asyncio.sleep(0)
    assert table.reads == 1  # nothing known past 5: the table is asked once
    known = 6  # our writer's COMMIT returned
    watch.advance(6)
    assert await waiting
    assert table.reads == 1
