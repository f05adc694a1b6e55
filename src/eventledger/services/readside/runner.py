"""Keeping a read model up to date with the log.

`ProjectionRunner` loads its checkpoint, consumes a `StreamSubscription`, and applies *batches*
(whatever has arrived, up to `batch_size`, always ending where an atomic append ends) through
`apply.apply_batch`: the read model's rows and the checkpoint in one transaction, so a kill -9
never applies an event twice or skips one, and no reader ever sees half a transfer.

An event that will fail again however often it is tried (the projection refuses it, the
database refuses what it writes, it cannot be decoded) *halts* the runner there; reads go on.
The operator gets past it with `decide` (skip or park it: recorded with the checkpoint, kept
as an audit record, honoured by every later rebuild). Only the database's own condition
(unreachable, locked, full) is retried. `rebuild()` resets the read model and replays the log;
the reset is stored in the checkpoint, so every instance sharing the database stops answering
until the replay is back where it was. What the service shows of all this: status.py, http.py.

The read model may have several *versions* (versions.py): the runner serves from the live one
and follows the log into it. A blue/green rebuild (bluegreen.py) builds the next version with
a second runner of its own and then calls `replace_version`; an instance that finds its
version retired (another instance switched) moves to the live one with `adopt`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp

from eventledger.eventstore.codec import format_time, to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside import apply
from eventledger.services.readside.apply import Applied, Item, Stop, at_boundary
from eventledger.services.readside.checkpoints import (
    Action,
    Checkpoint,
    Decision,
    load_checkpoint,
)
from eventledger.services.readside.db import (
    CheckpointMoved,
    ReadModelDataError,
    ReadModelDB,
    ReadModelError,
)
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.status import Halt, NotHaltedThere, RunnerStatus
from eventledger.services.readside.subscription import StreamSubscription, fetch_head_position
from eventledger.services.readside.versions import Hold, Versions, owned, versions_of

log = logging.getLogger(__name__)
T = TypeVar("T")

# Pages of the subscription (one per chunk read, 64 KiB or so) received ahead of the writer.
QUEUED_PAGES = 32
# Events per transaction at most. Catching up, every batch is full: one commit (an fsync on
# SQLite, ~10 ms here) and one checkpoint write per 4,000 events, not per 500. Live, a batch is
# what has arrived, usually one commit of the log. Memory: a batch of small events is ~8 MB.
BATCH_SIZE = 4000


class ProjectionRunner(RunnerStatus):
    """Keeps one read model up to date with the log. Start it once; it runs in the background
    until `stop()`, reconnecting to the stream service and retrying the database as needed.
    What it shows (health, probes, snapshots for queries) is in `RunnerStatus`."""

    def __init__(
        self,
        projection: Projection,
        *,
        stream_url: str,
        open_db: Callable[[], ReadModelDB],
        batch_size: int = BATCH_SIZE,
        head_poll_interval: float = 1.0,
        max_delay: float = 2.0,
        stream_token: str | None = None,
        probe_interval: float = 1.0,
        versioned: bool = True,
    ) -> None:
        super().__init__(projection.name, probe_interval=probe_interval)
        # False for the runner that builds a new version: it writes where `open_db` says.
        self._versioned = versioned
        self.versions: Versions | None = None
        self.version = 1  # the version it serves from (versions.py)
        self._base: ReadModelDB | None = None
        self._hold: Hold | None = None
        self._adopting: asyncio.Task[bool] | None = None
        self.projection = projection
        self._stream_token = stream_token  # presented to the stream service; never logged
        self.stream_url = stream_url.rstrip("/")
        self._open_db = open_db
        self.batch_size = batch_size
        self._head_poll_interval = head_poll_interval
        self._max_delay = max_delay
        self._held: tuple[Item, ...] = ()  # what the halted batch did not apply
        self._halted_event: RecordedEvent | None = None  # None: it could not be decoded
        self._control = asyncio.Lock()
        # One writer thread: batches and resets run in order, never two at once, and a batch
        # already handed to the database finishes before a reset or a stop.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-writer")
        self._inflight: Future[Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None

    @property
    def head_poll_interval(self) -> float:
        return self._head_poll_interval

    @property
    def stream_token(self) -> str | None:
        return self._stream_token

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, migrate it, load the checkpoint and start following the log.
        Raises (ReadModelError among others) when the database cannot be opened."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._base = await asyncio.to_thread(self._open_db)
        if self._versioned:
            versions = self.versions = versions_of(self._base, name=self.name)
            await self._write(versions.ensure_control)
            self.version, self._db, self._hold = await self._open_live_owned(versions)
        else:
            self._db = self._base
            db = self._db
            await self._write(lambda: db.migrate(self.projection.migrations))
        self.checkpoint = await self._write(self._load_checkpoint)
        self.position = self.checkpoint.position
        log.info("%s: starting after position %d", self.name, self.position)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8), raise_for_status=False
        )
        self._subscription = StreamSubscription(
            self.stream_url, self._session, max_delay=self._max_delay, token=self._stream_token
        )
        self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
        self._poll_task = asyncio.create_task(self._poll_head(), name=f"{self.name}-head")
        self._start_watching()

    async def stop(self) -> None:
        await self._stop_watching()
        for task in (self._follow_task, self._poll_task):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        self._follow_task = self._poll_task = None
        await self._settle()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._adopting is not None:
            self._adopting.cancel()
            with suppress(asyncio.CancelledError):
                await self._adopting
        self._writer.shutdown(wait=True)
        for db in {id(d): d for d in (self._db, self._base) if d is not None}.values():
            await asyncio.to_thread(db.close)
        self._db = self._base = None
        if self._hold is not None:
            self._hold.release()  # a plain call: a cancellation cannot skip it
            self._hold = None

    # -- versions (blue/green) -------------------------------------------------------------

    def _open_live(self, versions: Versions) -> tuple[int, ReadModelDB, Hold]:
        """The live version, opened, migrated and held (in the writer thread)."""
        while True:
            live = versions.live()
            hold = versions.hold(live)
            # Still live once held: from now on nobody drops it under this process.
            if versions.live() == live:
                break
            hold.release()
        try:
            db = versions.open(live)
            db.migrate(self.projection.migrations)
        except BaseException:
            hold.release()
            raise
        return live, db, hold

    async def _open_live_owned(self, versions: Versions) -> tuple[int, ReadModelDB, Hold]:
        def discard(opened: tuple[int, ReadModelDB, Hold]) -> None:
            if opened[1] is not self._base:
                opened[1].close()
            opened[2].release()

        return await owned(lambda: self._open_live(versions), discard, self._writer)

    async def adopt(self) -> bool:
        """Serve from the live version when another instance switched; True if it moved."""
        versions = self.versions
        if versions is None or self._db is None:
            return False
        async with self._control:
            # In the writer thread, as all this runner's database work: `stop` waits for it.
            if await self._write(versions.live) == self.version:
                return False
            await self._stop_following()
            version, db, hold = await self._open_live_owned(versions)
            log.warning(
                "%s: version %d is live now (another instance switched)", self.name, version
            )
            await self._swap(version, db, hold)
            return True

    def _retired(self) -> None:
        self.adopt_soon()

    def adopt_soon(self) -> None:
        """`adopt` in the background (from a place that cannot wait for it)."""
        if self.versions is not None and (self._adopting is None or self._adopting.done()):
            self._adopting = asyncio.create_task(self.adopt(), name=f"{self.name}-adopt")

    async def replace_version(
        self,
        version: int,
        switch: Callable[[ReadModelDB], int],
        *,
        before_swap: Callable[[], Awaitable[None]],
    ) -> int:
        """The blue/green switch of this process: stop following, run `switch(old db)` (the
        transaction that makes `version` live; it raises to refuse, and this runner follows
        on as before), `before_swap`, then serve from `version`. Its position."""
        versions = self.versions
        assert versions is not None
        async with self._control:
            await self._stop_following()
            old = self.db
            try:
                position = await self._write(lambda: switch(old))
            except BaseException:
                if self.halted is None:
                    self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
                raise
            await before_swap()
            try:
                opened = await self._open_live_owned(versions)
            except BaseException:
                # Switched, but the new version cannot be opened now: follow on where it is;
                # the old version is retired, so its writes stop and `adopt` retries.
                self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
                raise
            await self._swap(*opened)
            return position

    async def _swap(self, version: int, db: ReadModelDB, hold: Hold) -> None:
        """Serve from `db` (held, migrated; the caller holds `_control`, nothing follows)."""
        old_db, old_hold = self._db, self._hold
        checkpoint = await self._write(lambda: _load(db, self.name))
        self._db, self._hold, self.version = db, hold, version
        self._unhalt()
        self.last_error = None
        self.checkpoint = checkpoint
        # Never backwards: the switch made the new version live only at or past the old one.
        await self._set_position(max(checkpoint.position, self.position))
        self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
        if old_db is not None and old_db is not db:
            await self.drain(old_db)
            if old_db is not self._base:
                await asyncio.to_thread(old_db.close)
        if old_hold is not None:
            old_hold.release()

    async def rebuild(self) -> Checkpoint:
        """Reset the read model and its checkpoint in one transaction, then replay from 0.
        Until the replay is back at the old position (or the head, if further), every instance
        reading this read model answers `rebuilding`. Decisions are kept and honoured."""
        async with self._control:
            await self._stop_following()
            head = self.head_position or 0
            try:
                checkpoint = await self._write(lambda: self._reset(head))
            except BaseException:
                # Nothing was reset (one transaction): go on as before, and say why it failed.
                if self.halted is None:
                    self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
                raise
            log.warning(
                "%s: read model reset (generation %d); replaying the log from position 0 "
                "up to at least %s",
                self.name,
                checkpoint.generation,
                checkpoint.rebuild_until,
            )
            self._unhalt()
            self.last_error = None
            self.checkpoint = checkpoint
            await self._set_position(0)
            self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
            return checkpoint

    async def decide(
        self, action: Action, position: int, *, reason: str, by: str
    ) -> tuple[Decision, Applied]:
        """Skip or park the event the runner halted on, at `position`; raises NotHaltedThere
        when it is not halted there (any more). In one transaction with the checkpoint: the
        audit record (and the parked event), and what the halted batch held behind it."""
        async with self._control:
            halt = self.halted
            if halt is None or halt.position != position:
                raise NotHaltedThere(position, halt)
            await self._stop_following()
            event = self._halted_event
            decision = Decision(
                self.name,
                position,
                action,
                halt.event_id,
                halt.stream,
                halt.type,
                halt.reason,
                reason,
                by,
                format_time(datetime.now(UTC)),
                self.position,
            )
            envelope = None if event is None else json.dumps(to_envelope(event))
            held = self._held

            def work() -> Applied:
                with self.db.transaction() as tx:
                    return apply.decide(tx, self.projection, decision, envelope=envelope, held=held)

            applied = await self._write(work)
            log.warning(
                "%s: %s of the event at position %d (%s on %s) by %s: %s",
                self.name,
                "PARK" if action == "park" else "SKIP",
                position,
                halt.type,
                halt.stream,
                by,
                reason or "no reason given",
            )
            self._unhalt()
            self.decisions = self.decisions.after(decision)
            await self._applied(applied)
            if applied.stop is None:
                self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
            return decision, applied

    async def _resume_if_moved(self, checkpoint: Checkpoint) -> None:
        """Another instance got past the event this one halted on (or reset the read model):
        follow again from the stored checkpoint."""
        halt = self.halted
        if halt is None or halt.position is None:
            return
        if (
            checkpoint.position < halt.position
            and checkpoint.generation == self.checkpoint.generation
        ):
            return
        async with self._control:
            if self.halted is not halt:
                return
            log.warning("%s: the read model moved past the halt (another instance)", self.name)
            self._unhalt()
            self.checkpoint = checkpoint
            await self._set_position(checkpoint.position)
            self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")

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
        while True:
            if not pending and not queue.empty():
                page = queue.get_nowait()
                if isinstance(page, BaseException):
                    raise page
                pending.extend(page)
            if (
                batch
                and ((not pending and queue.empty()) or len(batch) >= self.batch_size)
                and at_boundary(batch)
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

    async def _poll_head(self) -> None:
        assert self._session is not None
        while True:
            self._polled_head = await fetch_head_position(
                self._session, self.stream_url, token=self._stream_token
            )
            await asyncio.sleep(self._head_poll_interval)

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
        return _load(self.db, self.name)

    def _reset(self, head: int) -> Checkpoint:
        with self.db.transaction() as tx:
            old = load_checkpoint(tx, self.name)
            return apply.reset(tx, self.projection, rebuild_until=max(old.position, head))


__all__ = ["Halt", "NotHaltedThere", "ProjectionRunner"]


def _load(db: ReadModelDB, name: str) -> Checkpoint:
    with db.transaction() as tx:
        return load_checkpoint(tx, name)
