"""Following the log into a read model: the half of a projection runner that reads the
subscription's pages, cuts them into batches that end where an atomic append ends, applies each
batch with its checkpoint in the runner's one writer thread (`apply.apply_batch`), retries what
the database's condition fails, and halts on an event that would fail again however often it is
tried. Starting, stopping, versions, rebuilds and decisions: runner.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventledger.eventstore.codec import format_time
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside import apply
from eventledger.services.readside.apply import Applied, Item, Stop, batch_end
from eventledger.services.readside.checkpoints import Checkpoint, load_checkpoint
from eventledger.services.readside.db import (
    CheckpointMoved,
    ReadModelDataError,
    ReadModelDB,
    ReadModelError,
)
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.status import Halt, RunnerStatus

# The runner's logger, as before this half moved here: operators filter on its name.
log = logging.getLogger("eventledger.services.readside.runner")
T = TypeVar("T")

# Pages of the subscription (one per chunk read, 64 KiB or so) received ahead of the writer.
QUEUED_PAGES = 32
# Events per transaction at most. Catching up, every batch is full: one commit (an fsync on
# SQLite, ~10 ms here) and one checkpoint write per 4,000 events, not per 500. Live, a batch is
# what has arrived, usually one commit of the log. Memory: a batch of small events is ~8 MB.
BATCH_SIZE = 4000


class RunnerFollowing(RunnerStatus):
    """What `runner.ProjectionRunner` follows the log with; the runner adds the rest."""

    def __init__(
        self,
        projection: Projection,
        *,
        batch_size: int,
        max_delay: float,
        probe_interval: float,
    ) -> None:
        super().__init__(projection.name, probe_interval=probe_interval)
        self.projection = projection
        self.batch_size = batch_size
        self._max_delay = max_delay
        self._held: tuple[Item, ...] = ()  # what the halted batch did not apply
        self._halted_event: RecordedEvent | None = None  # None: it could not be decoded
        # One writer thread: batches and resets run in order, never two at once, and a batch
        # already handed to the database finishes before a reset or a stop.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-writer")
        self._inflight: Future[Any] | None = None
        self._follow_task: asyncio.Task[None] | None = None

    def adopt_soon(self) -> None:
        """Called when the checkpoint says another instance switched versions (the runner
        moves to the live one)."""

    async def _stop_following(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
        await self._settle()

    # -- following -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow()
                return  # halted
            except CheckpointMoved as exc:
                # Another process applied events to this read model: go on from where it is.
                log.info("%s: %s (another writer?); reloading it", self.name, exc)
                delay = 0.0
            except ReadModelError as exc:
                self._retrying(f"read model unavailable: {exc}")
            except Exception as exc:
                self._retrying(f"{type(exc).__name__}: {exc}", trace=True)
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.05), self._max_delay)
            # The outcome of a failed commit is unknown: the database's checkpoint is the truth.
            with suppress(ReadModelError):
                checkpoint = await self._write(self._load_checkpoint)
                if checkpoint.retired_to is not None:
                    self.adopt_soon()  # another instance switched versions: follow the live one
                    return
                self.checkpoint = checkpoint
                await self._set_position(self.checkpoint.position)

    def _retrying(self, error: str, *, trace: bool = False) -> None:
        # Said once per distinct error, not at every retry.
        if error != self.last_error:
            log.warning("%s: %s; retrying", self.name, error, exc_info=trace)
        self.last_error = error

    async def _follow(self) -> None:
        assert self._subscription is not None
        # Pages as they arrive (one per chunk read): a bounded queue, so a read model slower
        # than the stream service stops reading and TCP holds the rest.
        queue: asyncio.Queue[list[Item] | BaseException] = asyncio.Queue(maxsize=QUEUED_PAGES)
        pending: deque[Item] = deque()  # received, not yet in a batch
        reader = asyncio.create_task(self._read_into(queue, after=self.position))
        try:
            while True:
                if not await self._apply(await self._next_batch(queue, pending)):
                    return
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader

    async def _next_batch(
        self, queue: asyncio.Queue[list[Item] | BaseException], pending: deque[Item]
    ) -> list[Item]:
        """What has arrived, up to `batch_size` events, but never ending inside an atomic
        append: then it waits for the rest of it, however long the append. Catching up, the
        batches are full (few transactions); live, a batch is what one commit wrote."""
        batch: list[Item] = []
        last = self.position
        # The furthest batch_end of the batch's items: it ends at a boundary when that is
        # `last` or before (`apply.at_boundary`, kept up per item instead of a pass over the
        # batch per item: a batch of 4,000 waiting for the end of a 1,000-event append cost
        # millions of checks).
        reach = 0
        while True:
            if not pending and not queue.empty():
                page = queue.get_nowait()
                if isinstance(page, BaseException):
                    raise page
                pending.extend(page)
            if (
                batch
                and ((not pending and queue.empty()) or len(batch) >= self.batch_size)
                and reach <= last
            ):
                return batch
            if not pending:
                page = await queue.get()
                if isinstance(page, BaseException):
                    raise page
                pending.extend(page)
                continue
            item = pending.popleft()
            if item.position is None:
                return [*batch, item]  # nothing can follow what has no place in the log
            if item.position <= last:
                continue  # already applied or delivered
            batch.append(item)
            last = item.position
            reach = max(reach, batch_end(item))

    async def _read_into(
        self, queue: asyncio.Queue[list[Item] | BaseException], *, after: int
    ) -> None:
        assert self._subscription is not None
        try:
            async with aclosing(self._subscription.pages(after=after)) as pages:
                async for page in pages:
                    await queue.put(page)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    async def _apply(self, batch: Sequence[Item]) -> bool:
        """Apply a batch; False when the runner halted."""
        expected = self.position

        def work() -> Applied:
            with self.db.transaction() as tx:
                return apply.apply_batch(tx, self.projection, batch, expected=expected)

        try:
            applied = await self._write(work)
        except ReadModelDataError as exc:  # our own statements refused: it would repeat
            first = batch[0]
            event = first if isinstance(first, RecordedEvent) else None
            stop = Stop(first.position, event, first.type, str(exc))
            applied = Applied(self.checkpoint, stop=stop, rest=tuple(batch))
        self.last_error = None
        await self._applied(applied)
        return applied.stop is None

    async def _applied(self, applied: Applied) -> None:
        self.checkpoint = applied.checkpoint
        await self._set_position(applied.checkpoint.position)
        if applied.stop is not None:
            await self._halt(applied.stop, applied.rest)

    async def _halt(self, stop: Stop, rest: tuple[Item, ...]) -> None:
        event = stop.event
        self.halted = Halt(
            stop.position,
            None if event is None else str(event.id),
            None if event is None else event.stream,
            stop.type,
            stop.reason,
            format_time(datetime.now(UTC)),
        )
        self._halted_event = event
        self._held = rest
        log.error(
            "%s: HALTED at position %s (%s on %s): %s. Reads go on from position %d; skip or "
            "park the event (eventledger projection skip|park %s --position %s), or fix the "
            "projection and restart or rebuild.",
            self.name,
            stop.position,
            stop.type,
            self.halted.stream,
            stop.reason,
            self.position,
            self.name,
            stop.position,
        )
        await self._notify()

    def _unhalt(self) -> None:
        self.halted = None
        self._halted_event = None
        self._held = ()

    # -- the writer thread -----------------------------------------------------------------

    async def _write(self, work: Callable[[], T]) -> T:
        future = self._writer.submit(work)
        self._inflight = future
        return await asyncio.wrap_future(future)

    async def _settle(self) -> None:
        """Wait for a batch already handed to the database (its task may have been cancelled)."""
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            with suppress(Exception):
                await asyncio.wrap_future(inflight)

    def _load_checkpoint(self) -> Checkpoint:
        return load(self.db, self.name)


def load(db: ReadModelDB, name: str) -> Checkpoint:
    with db.transaction() as tx:
        return load_checkpoint(tx, name)
