"""Queries asked at the same time share one read snapshot (`GroupedReads`), and each still
gets exactly what a snapshot of its own would have given it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from eventledger.services.readside.checkpoints import Checkpoint
from eventledger.services.readside.db import ReadModelUnavailable, Session
from eventledger.services.readside.http import GroupedReads, Reads
from eventledger.services.readside.runner import ProjectionRunner
from eventledger.services.readside.status import Snapshot


class FakeRunner:
    """`snapshot` as the runner's: a snapshot at `position` answers a query asking for no more."""

    def __init__(self, position: int = 10, *, fail: Exception | None = None) -> None:
        self.position = position
        self.fail = fail
        self.snapshots = 0

    async def snapshot(
        self, query: Callable[[Session], Any], *, min_position: int
    ) -> Snapshot[Any]:
        self.snapshots += 1
        await asyncio.sleep(0)  # in a worker thread, in the service
        if self.fail is not None:
            raise self.fail
        checkpoint = Checkpoint(position=self.position)
        if min_position > self.position:
            return Snapshot(checkpoint, None, False)
        return Snapshot(checkpoint, query(cast(Session, None)), True)


def grouped(runner: FakeRunner) -> GroupedReads:
    return GroupedReads(cast(ProjectionRunner, runner))


def constant(value: int) -> Callable[[Session], int]:
    return lambda _: value


async def test_queries_asked_together_share_a_snapshot_and_each_gets_its_own_answer() -> None:
    runner = FakeRunner()
    reads = grouped(runner)
    answers = await asyncio.gather(
        *(reads.snapshot(constant(n), min_position=0) for n in range(20))
    )
    assert [a.answer for a in answers] == list(range(20))
    assert all(a.answered and a.checkpoint.position == 10 for a in answers)
    assert runner.snapshots == 1


async def test_a_query_alone_is_read_at_once() -> None:
    runner = FakeRunner()
    answer = await grouped(runner).snapshot(constant(7), min_position=3)
    assert (answer.answered, answer.answer, runner.snapshots) == (True, 7, 1)


async def test_a_query_asking_for_a_position_past_the_snapshot_is_not_answered_by_it() -> None:
    reads = grouped(FakeRunner(position=10))
    early, late, at = await asyncio.gather(
        reads.snapshot(constant(1), min_position=0),
        reads.snapshot(constant(2), min_position=11),
        reads.snapshot(constant(3), min_position=10),
    )
    assert (early.answered, early.answer) == (True, 1)
    assert (late.answered, late.answer, late.checkpoint.position) == (False, None, 10)
    assert (at.answered, at.answer) == (True, 3)


async def test_a_query_that_raises_fails_alone_and_the_next_ones_are_answered() -> None:
    runner = FakeRunner()
    reads = grouped(runner)

    def broken(_: Session) -> int:
        raise ValueError("refused")

    first, failed, after = await asyncio.gather(
        reads.snapshot(constant(1), min_position=0),
        reads.snapshot(broken, min_position=0),
        reads.snapshot(constant(3), min_position=0),
        return_exceptions=True,
    )
    assert isinstance(first, Snapshot) and first.answer == 1
    assert isinstance(failed, ValueError)
    assert isinstance(after, Snapshot) and after.answer == 3
    assert runner.snapshots == 2  # the one after the failure: in a snapshot of its own


async def test_a_snapshot_that_fails_fails_every_query_of_its_group() -> None:
    reads = grouped(FakeRunner(fail=ReadModelUnavailable("away")))
    outcomes = await asyncio.gather(
        *(reads.snapshot(constant(n), min_position=0) for n in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(o, ReadModelUnavailable) for o in outcomes)


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    reads = grouped(FakeRunner())
    gone = asyncio.ensure_future(reads.snapshot(constant(1), min_position=0))
    stays = asyncio.ensure_future(reads.snapshot(constant(2), min_position=0))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await stays).answer == 2
    with pytest.raises(asyncio.CancelledError):
        await gone


class CommittingRunner(FakeRunner):
    """A runner whose commit of `position` lands while the first snapshot is being read."""

    def __init__(self) -> None:
        super().__init__(position=4)
        self.database_error = None
        self.halted = None

    async def snapshot(
        self, query: Callable[[Session], Any], *, min_position: int
    ) -> Snapshot[Any]:
        answer = await super().snapshot(query, min_position=min_position)
        self.position = 5  # committed meanwhile: the next snapshot sees it
        return answer


async def test_a_read_whose_snapshot_began_before_the_commit_it_waits_for_reads_again() -> None:
    runner = CommittingRunner()
    reads = Reads(cast(ProjectionRunner, runner), min_position_wait=0.0)
    # No time left to wait, yet answered: the position was applied during the first snapshot.
    for grouped in (True, False):
        runner.position = 4
        runner.snapshots = 0
        assert await reads.answer(constant(7), min_position=5, grouped=grouped) == 7
        assert runner.snapshots == 2
