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
Following the log itself (batches, the writer thread, halts): following.py.

The read model may have several *versions* (versions.py): the runner serves from the live one
and follows the log into it. A blue/green rebuild (bluegreen.py) builds the next version with
a second runner of its own and then calls `replace_version`; an instance that finds its
version retired (another instance switched) moves to the live one with `adopt`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime

import aiohttp

from eventledger.eventstore.codec import format_time, to_envelope
from eventledger.services.readside import apply
from eventledger.services.readside.apply import Applied
from eventledger.services.readside.checkpoints import (
    Action,
    Checkpoint,
    Decision,
    load_checkpoint,
)
from eventledger.services.readside.db import ReadModelDB
from eventledger.services.readside.following import (
    BATCH_SIZE,
    QUEUED_PAGES,
    RunnerFollowing,
    load,
)
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.status import Halt, NotHaltedThere
from eventledger.services.readside.subscription import StreamSubscription, fetch_head_position
from eventledger.services.readside.versions import Hold, Versions, owned, versions_of

log = logging.getLogger(__name__)


class ProjectionRunner(RunnerFollowing):
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
        super().__init__(
            projection, batch_size=batch_size, max_delay=max_delay, probe_interval=probe_interval
        )
        # False for the runner that builds a new version: it writes where `open_db` says.
        self._versioned = versioned
        self.versions: Versions | None = None
        self.version = 1  # the version it serves from (versions.py)
        self._base: ReadModelDB | None = None
        self._hold: Hold | None = None
        self._adopting: asyncio.Task[bool] | None = None
        self._stream_token = stream_token  # presented to the stream service; never logged
        self.stream_url = stream_url.rstrip("/")
        self._open_db = open_db
        self._head_poll_interval = head_poll_interval
        self._control = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
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
        checkpoint = await self._write(lambda: load(db, self.name))
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

    async def _poll_head(self) -> None:
        assert self._session is not None
        while True:
            self._polled_head = await fetch_head_position(
                self._session, self.stream_url, token=self._stream_token
            )
            await asyncio.sleep(self._head_poll_interval)

    def _reset(self, head: int) -> Checkpoint:
        with self.db.transaction() as tx:
            old = load_checkpoint(tx, self.name)
            return apply.reset(tx, self.projection, rebuild_until=max(old.position, head))


__all__ = ["BATCH_SIZE", "QUEUED_PAGES", "Halt", "NotHaltedThere", "ProjectionRunner"]
