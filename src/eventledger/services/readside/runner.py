"""Keeping a read model up to date with the log.

`ProjectionRunner` loads its checkpoint, consumes a `StreamSubscription`, and applies *batches*
(whatever has arrived, up to `batch_size`) in one read-model transaction together with the
checkpoint: a kill -9 never applies an event twice or skips one. An event the projection
cannot apply *halts* it there (balances are money: never skip); reads go on.
`wait_for(position)` gives read-your-writes; `rebuild()` resets the read model and replays the
log from 0. What a read-model service exposes about its runner is in http.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import aiohttp

from eventledger.eventstore.codec import format_time
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.db import (
    CheckpointMoved,
    ReadModelDB,
    ReadModelError,
    Session,
    claim_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from eventledger.services.readside.projection import EventRejected, Projection
from eventledger.services.readside.subscription import (
    StreamSubscription,
    Undecodable,
    fetch_head_position,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Halt:
    """Where and why a projection stopped."""

    position: int | None
    event_id: str | None
    stream: str | None
    type: str
    reason: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "event_id": self.event_id,
            "stream": self.stream,
            "type": self.type,
            "reason": self.reason,
            "at": self.at,
        }


Status = Literal["ok", "halted", "catching-up"]


class ProjectionRunner:
    """Keeps one read model up to date with the log. Start it once; it runs in the background
    until `stop()`, reconnecting to the stream service and retrying the database as needed."""

    def __init__(
        self,
        projection: Projection,
        *,
        stream_url: str,
        open_db: Callable[[], ReadModelDB],
        batch_size: int = 500,
        head_poll_interval: float = 1.0,
        max_delay: float = 2.0,
        stream_token: str | None = None,
    ) -> None:
        self.projection = projection
        self._stream_token = stream_token  # presented to the stream service; never logged
        self.name = projection.name
        self.stream_url = stream_url.rstrip("/")
        self._open_db = open_db
        self._db: ReadModelDB | None = None
        self.batch_size = batch_size
        self._head_poll_interval = head_poll_interval
        self._max_delay = max_delay
        self.position = 0
        self.halted: Halt | None = None
        self.last_error: str | None = None
        self.rebuilding = False
        self._polled_head: int | None = None
        self._changed = asyncio.Condition()
        self._control = asyncio.Lock()
        # One writer thread: batches and resets run in order, never two at once, and a batch
        # already handed to the database finishes before a reset or a stop.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-writer")
        self._inflight: Future[Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._subscription: StreamSubscription | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None

    # -- what the service reads ------------------------------------------------------------

    @property
    def db(self) -> ReadModelDB:
        if self._db is None:
            raise RuntimeError("the projection runner is not started")
        return self._db

    @property
    def connected(self) -> bool:
        return self._subscription is not None and self._subscription.connected

    @property
    def head_position(self) -> int | None:
        """The stream service's head as last seen, None while it does not answer."""
        if self._polled_head is None and not self.connected:
            return None
        seen = self._subscription.last_seen if self._subscription and self.connected else 0
        return max(self._polled_head or 0, seen)

    @property
    def lag(self) -> int | None:
        head = self.head_position
        return None if head is None else max(0, head - self.position)

    @property
    def status(self) -> Status:
        if self.halted is not None:
            return "halted"
        lag = self.lag
        return "catching-up" if self.rebuilding or (lag is not None and lag > 0) else "ok"

    def health(self, service: str) -> dict[str, Any]:
        return {
            "status": self.status,
            "service": service,
            "position": self.position,
            "head_position": self.head_position,
            "lag": self.lag,
            "halted": None if self.halted is None else self.halted.to_json(),
            "stream_connected": self.connected,
            "rebuilding": self.rebuilding,
            "error": self.last_error,
        }

    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once `position` is applied; False after `timeout` seconds or on a halt below it."""
        if self.position >= position:
            return True
        async with self._changed:
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: self.position >= position or self.halted is not None
                    ),
                    timeout,
                )
        return self.position >= position

    async def read(self, query: Callable[[Session], T]) -> T:
        """Run a query on a read snapshot in a worker thread."""
        db = self.db

        def run() -> T:
            with db.read() as session:
                return query(session)

        return await asyncio.to_thread(run)

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
        self._db = await asyncio.to_thread(self._open_db)
        db = self._db
        await self._write(lambda: db.migrate(self.projection.migrations))
        self.position = await self._write(self._load_checkpoint)
        log.info("%s: starting after position %d", self.name, self.position)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8), raise_for_status=False
        )
        self._subscription = StreamSubscription(
            self.stream_url, self._session, max_delay=self._max_delay, token=self._stream_token
        )
        self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")
        self._poll_task = asyncio.create_task(self._poll_head(), name=f"{self.name}-head")

    async def stop(self) -> None:
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
        self._writer.shutdown(wait=True)
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None

    async def rebuild(self) -> None:
        """Reset the read model and its checkpoint in one transaction, then replay from 0."""
        async with self._control:
            if self._follow_task is not None:
                self._follow_task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._follow_task
            await self._settle()
            await self._write(self._reset)
            log.warning("%s: read model reset; replaying the log from position 0", self.name)
            self.rebuilding = True
            self.halted = None
            self.last_error = None
            await self._set_position(0)
            self._follow_task = asyncio.create_task(self._run(), name=f"{self.name}-follow")

    # -- following -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow()
                return  # halted
            except CheckpointMoved as exc:
                # Another process applied events to this read model: go on from where it is.
                log.warning("%s: %s (another writer?); reloading it", self.name, exc)
                delay = 0.0
            except ReadModelError as exc:
                self.last_error = str(exc)
                log.warning("%s: read model unavailable: %s; retrying", self.name, exc)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: unexpected error while projecting; retrying", self.name)
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.05), self._max_delay)
            # The outcome of a failed commit is unknown: the database's checkpoint is the truth.
            with suppress(ReadModelError):
                await self._set_position(await self._write(self._load_checkpoint))

    async def _follow(self) -> None:
        assert self._subscription is not None
        queue: asyncio.Queue[RecordedEvent | Undecodable | BaseException] = asyncio.Queue(
            maxsize=self.batch_size * 4
        )
        reader = asyncio.create_task(self._read_into(queue, after=self.position))
        try:
            while True:
                batch = [await queue.get()]
                while len(batch) < self.batch_size and not queue.empty():
                    batch.append(queue.get_nowait())
                if not await self._apply(batch):
                    return
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader

    async def _read_into(
        self, queue: asyncio.Queue[RecordedEvent | Undecodable | BaseException], *, after: int
    ) -> None:
        assert self._subscription is not None
        try:
            async with aclosing(self._subscription.events(after=after)) as items:
                async for item in items:
                    await queue.put(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    async def _apply(self, batch: list[RecordedEvent | Undecodable | BaseException]) -> bool:
        """Apply a batch; False when the projection halted."""
        events: list[RecordedEvent] = []
        stop: Undecodable | None = None
        for item in batch:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Undecodable):
                stop = item
                break
            if item.position > (events[-1].position if events else self.position):
                events.append(item)
        rejected: EventRejected | None = None
        if events:
            expected = self.position
            position, rejected = await self._write(lambda: self._apply_sync(events, expected))
            self.last_error = None
            await self._set_position(position)
        if rejected is not None:
            event = rejected.event
            await self._halt(
                event.position, str(event.id), event.stream, event.type, rejected.reason
            )
            return False
        if stop is not None:
            await self._halt(stop.position, None, None, stop.type, stop.reason)
            return False
        return True

    def _apply_sync(
        self, events: Sequence[RecordedEvent], expected: int
    ) -> tuple[int, EventRejected | None]:
        with self.db.transaction() as tx:
            claim_checkpoint(tx, self.name, expected)
            rejected = self.projection.apply(tx, events)
            position = events[-1].position
            if rejected is not None:
                index = next(i for i, e in enumerate(events) if e is rejected.event)
                position = events[index - 1].position if index else expected
            if position != expected:
                write_checkpoint(tx, self.name, position)
            return position, rejected

    async def _halt(
        self, position: int | None, event_id: str | None, stream: str | None, type: str, reason: str
    ) -> None:
        at = format_time(datetime.now(UTC))
        self.halted = Halt(position, event_id, stream, type, reason, at)
        self.rebuilding = False
        log.error(
            "%s: HALTED at position %s (%s on %s): %s. Reads go on from position %d; fix the "
            "projection or the data, then restart or rebuild.",
            self.name,
            position,
            type,
            stream,
            reason,
            self.position,
        )
        await self._notify()

    async def _set_position(self, position: int) -> None:
        self.position = position
        if self.rebuilding and self.lag == 0:
            self.rebuilding = False
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _poll_head(self) -> None:
        assert self._session is not None
        while True:
            self._polled_head = await fetch_head_position(
                self._session, self.stream_url, token=self._stream_token
            )
            if self.rebuilding and self.lag == 0:
                self.rebuilding = False
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

    def _load_checkpoint(self) -> int:
        with self.db.transaction() as tx:
            return read_checkpoint(tx, self.name)

    def _reset(self) -> None:
        with self.db.transaction() as tx:
            # The checkpoint first: on PostgreSQL its row lock waits for another writer's batch.
            write_checkpoint(tx, self.name, 0)
            self.projection.reset(tx)
