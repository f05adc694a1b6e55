"""What a projection runner shows: where it stands, whether it can serve, consistent reads.

* `RunnerStatus.health()` — the JSON of `/health`: position, the stored checkpoint (its hash,
  generation, rebuild), lag, a halt, the operator's decisions, and `reason` when the service
  cannot serve;
* `RunnerStatus.check()` — a probe of the read model database that answers within a bounded
  time however the database hangs (one probe in flight at a time, joined by every caller),
  refreshed in the background and logged once when it changes, not at every poll;
* `RunnerStatus.snapshot()` — a query run in one read snapshot *after* checking, in that same
  snapshot, that the read model is not being rebuilt and has applied the position asked for:
  the stored checkpoint says so, not this process's memory, which another instance sharing the
  database may have made wrong. A snapshot of a version that is no longer live (`retired_to`
  in its checkpoint: another instance switched) answers nothing: the caller moves on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from eventledger.services.readside.checkpoints import (
    Checkpoint,
    DecisionSummary,
    decision_summary,
    load_checkpoint,
)
from eventledger.services.readside.db import ReadModelDB, ReadModelError, Session
from eventledger.services.readside.subscription import StreamSubscription

log = logging.getLogger(__name__)
T = TypeVar("T")

Status = Literal["ok", "halted", "catching-up", "rebuilding", "unavailable"]
PROBE_BUDGET = 0.5  # seconds a health check waits for the database


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


class NotHaltedThere(Exception):
    """Raised when an operator skips or parks a position the projection is not halted at."""

    def __init__(self, position: int, halt: Halt | None) -> None:
        where = "is not halted" if halt is None else f"is halted at position {halt.position}"
        super().__init__(f"the projection {where}, not at position {position}")
        self.position = position
        self.halt = halt


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """A query's answer with the checkpoint of the snapshot it was read in; `answered` is False
    (and `answer` None) when that snapshot could not answer: rebuilding, or not there yet."""

    checkpoint: Checkpoint
    answer: T | None
    answered: bool


class RunnerStatus:
    """The state a projection runner keeps and shows (the runner itself: runner.py)."""

    def __init__(self, name: str, *, probe_interval: float) -> None:
        self.name = name
        self.position = 0
        self.checkpoint = Checkpoint()
        self.halted: Halt | None = None
        self.last_error: str | None = None
        self.decisions = DecisionSummary()
        self.database_error: str | None = None
        self._db: ReadModelDB | None = None
        self._subscription: StreamSubscription | None = None
        self._polled_head: int | None = None
        self._head_seen = 0
        self._changed = asyncio.Condition()
        self._probe_interval = probe_interval
        self._prober = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-probe")
        self._probe: Future[tuple[ReadModelDB, Checkpoint, DecisionSummary]] | None = None
        # Reads in flight per database object, so that a version is closed only once idle.
        self._readers: Counter[int] = Counter()
        self._readers_lock = threading.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping = False
        # When it was last seen with everything applied that the stream service had (the
        # start counts: a read model starting behind has been behind since then).
        self._caught_up_at = time.monotonic()

    # -- what it knows -----------------------------------------------------------------------

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
        # Never backwards: a subscription opened again (after a halt, a reconnect) has seen
        # nothing yet, and the log's head does not shrink.
        self._head_seen = max(self._head_seen, self._polled_head or 0, seen)
        return self._head_seen

    @property
    def lag(self) -> int | None:
        head = self.head_position
        return None if head is None else max(0, head - self.position)

    @property
    def lag_seconds(self) -> float | None:
        """How long this read model has been behind: seconds since it was last seen with
        every event of the stream service's head applied; 0 while it is caught up, None while
        the head is unknown. (Cheap by design: no event's time is looked up; a read model
        that falls behind is noticed when its position or this value is next looked at.)"""
        lag = self.lag
        if lag is None:
            return None
        now = time.monotonic()
        if lag == 0:
            self._caught_up_at = now
            return 0.0
        return round(now - self._caught_up_at, 3)

    @property
    def rebuilding(self) -> bool:
        return self.checkpoint.rebuilding

    @property
    def status(self) -> Status:
        if self.database_error is not None:
            return "unavailable"
        if self.rebuilding:
            return "rebuilding"
        if self.halted is not None:
            return "halted"
        lag = self.lag
        return "catching-up" if lag is not None and lag > 0 else "ok"

    @property
    def cannot_serve(self) -> str | None:
        """Why this service cannot answer queries now (None: it can). A halt is not a reason:
        reads go on, as of the position before it."""
        if self.database_error is not None:
            return self.database_error
        if self.rebuilding:
            return (
                f"the read model is being rebuilt (generation {self.checkpoint.generation}): "
                f"replaying the log up to position {self.checkpoint.rebuild_until}"
            )
        return None

    def health(self, service: str) -> dict[str, Any]:
        return {
            "status": self.status,
            "service": service,
            "position": self.position,
            "hash": self.checkpoint.hash,
            "head_position": self.head_position,
            "lag": self.lag,
            "lag_seconds": self.lag_seconds,
            "halted": None if self.halted is None else self.halted.to_json(),
            "stream_connected": self.connected,
            "rebuilding": self.rebuilding,
            "checkpoint": self.checkpoint.to_json(),
            "decisions": self.decisions.to_json(),
            "database": {"reachable": self.database_error is None, "error": self.database_error},
            "error": self.last_error,
            "reason": self.cannot_serve,
        }

    # -- reads ---------------------------------------------------------------------------------

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
        """Run a query on a read snapshot in a worker thread (no check: see `snapshot`)."""
        db = self.db

        def run() -> T:
            with self._reading(db), db.read() as session:
                return query(session)

        return await asyncio.to_thread(run)

    async def snapshot(
        self, query: Callable[[Session], T], *, min_position: int = 0
    ) -> Snapshot[T]:
        """Run `query` in a read snapshot whose stored checkpoint is at `min_position` or past
        it and is not being rebuilt nor retired; else do not run it (`answered` False)."""
        db = self.db
        name = self.name

        def run() -> Snapshot[T]:
            with self._reading(db), db.read() as session:
                checkpoint = load_checkpoint(session, name)
                if (
                    checkpoint.rebuilding
                    or checkpoint.retired_to is not None
                    or checkpoint.position < min_position
                ):
                    return Snapshot(checkpoint, None, False)
                return Snapshot(checkpoint, query(session), True)

        result = await asyncio.to_thread(run)
        if result.checkpoint.rebuilding != self.rebuilding and db is self._db:
            self._learn(result.checkpoint)  # learnt from the database: show it at once
        return result

    @contextmanager
    def _reading(self, db: ReadModelDB) -> Iterator[None]:
        with self._readers_lock:
            self._readers[id(db)] += 1
        try:
            yield
        finally:
            with self._readers_lock:
                self._readers[id(db)] -= 1
                if not self._readers[id(db)]:
                    del self._readers[id(db)]

    async def drain(self, db: ReadModelDB, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait (up to `timeout`) until no read of this process is using `db`."""
        deadline = time.monotonic() + timeout
        # Polled: the readers are worker threads, and a switch drains rarely.
        while self._readers.get(id(db)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- the database probe ----------------------------------------------------------------------

    async def check(self, budget: float = PROBE_BUDGET) -> str | None:
        """Probe the database (within `budget` seconds); why it cannot serve, or None."""
        if self._db is None or self._stopping:
            return self.database_error
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = self._prober.submit(self._probe_sync)
        problem: str | None = None
        # asyncio.wait, not wait_for: it leaves the probe running past the budget (the next
        # caller joins it) and never swallows a cancellation of the caller.
        answer = asyncio.wrap_future(probe)
        done, _ = await asyncio.wait({answer}, timeout=budget)
        try:
            if not done:
                raise TimeoutError
            db, checkpoint, summary = answer.result()
        except TimeoutError:
            problem = f"the read model database did not answer within {budget:g} s"
        except ReadModelError as exc:
            problem = f"the read model database is unavailable: {exc}"
        except Exception as exc:
            problem = f"the read model database failed: {type(exc).__name__}: {exc}"
        else:
            if db is self._db:
                if checkpoint.retired_to is not None:
                    self._retired()
                await self._resume_if_moved(checkpoint)
                self._learn(checkpoint)
                self.decisions = summary
        self._set_database_error(problem)
        return problem

    def _learn(self, checkpoint: Checkpoint) -> None:
        """Show a checkpoint read from the database, unless it is older than the one shown: a
        probe that read before this runner's own commit answers after it (a new generation,
        another instance's rebuild, always counts)."""
        shown = self.checkpoint
        if (checkpoint.generation, checkpoint.position) >= (shown.generation, shown.position):
            self.checkpoint = checkpoint

    def _probe_sync(self) -> tuple[ReadModelDB, Checkpoint, DecisionSummary]:
        db = self.db
        with self._reading(db):
            db.ping()
            with db.read() as session:
                return db, load_checkpoint(session, self.name), decision_summary(session, self.name)

    def _set_database_error(self, problem: str | None) -> None:
        if (problem is None) != (self.database_error is None):
            if problem is None:
                log.warning("%s: the read model database answers again", self.name)
            else:
                log.error("%s: cannot serve: %s", self.name, problem)
        self.database_error = problem

    def _start_watching(self) -> None:
        self._watch_task = asyncio.create_task(self._watch(), name=f"{self.name}-watch")

    async def _stop_watching(self) -> None:
        self._stopping = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        # A probe still running must end before the database closes under it (a SQLite
        # connection closed while in use crashes the process); a hung one is given 5 s.
        if self._probe is not None and not self._probe.done():
            await asyncio.wait({asyncio.wrap_future(self._probe)}, timeout=5)
        self._prober.shutdown(wait=False)

    async def _watch(self) -> None:
        while not self._stopping:
            await self.check()
            await asyncio.sleep(self._probe_interval)

    async def _resume_if_moved(self, checkpoint: Checkpoint) -> None:
        """Called with each probed checkpoint (the runner resumes when others moved on)."""

    def _retired(self) -> None:
        """Called when the version served from is retired (the runner moves to the live one)."""

    # -- changes ---------------------------------------------------------------------------------

    async def _set_position(self, position: int) -> None:
        self.position = position
        if self.lag == 0:
            self._caught_up_at = time.monotonic()
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
