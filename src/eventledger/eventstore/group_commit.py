"""Group commit, written once for the SQL backends: take the appends that are waiting, plan
them, write them in one transaction, and answer each caller only after COMMIT returned.

    caller ──submit──▶ queue ──▶ engine loop (one per store; sqlite.py runs it in its writer
                                 thread, postgres.py as a task of the event loop)
                        take a group          callers that gave up already are dropped, unwritten
                        db.begin              BEGIN; the head, the stored ids and stream
                                              versions the group needs (a `Snapshot`)
                        plan, in order        replay rule, expected versions, positions, hashes
                                              (pure: planning.py); a request whose checks fail
                                              fails alone
                        db.insert_and_commit  INSERT every planned row; COMMIT
                          a row refused?      back to the group savepoint, then request by
                                              request (a savepoint each): the one at fault fails
                                              alone, the others are planned again without it
    caller ◀──answer── after COMMIT returned

What a caller is answered when something fails:

    before COMMIT was sent (begin, lookups, INSERT)  StoreUnavailable: nothing was written
    COMMIT failed (I/O error, fsync, connection)     StoreOutcomeUnknown: the append may be
                                                     stored; a retry with the same event ids
                                                     settles it (written, or a replay)
    this request's checks or rows were refused       its own error; the group goes on

A backend supplies the primitives of one transaction (`Database`) and a way to get one
(`Backend.session`); it translates its driver's errors into event store errors there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from eventledger.eventstore.errors import (
    EventStoreError,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from eventledger.eventstore.keys import (
    KEY_WORK,
    NO_KEY_WORK,
    KeyConflict,
    KeyWork,
    after,
    conflicts,
)
from eventledger.eventstore.planning import (
    Encoded,
    Planner,
    Row,
    Snapshot,
    Write,
    encode,
)
from eventledger.eventstore.records import AppendResult, StreamAppend

logger = logging.getLogger(__name__)

MAX_GROUP_REQUESTS = 256  # requests committed together at most: bounds one transaction
MAX_GROUP_EVENTS = 5_000

Outcome = list[AppendResult] | BaseException


# -- requests ------------------------------------------------------------------------------


@dataclass(eq=False)
class Request:
    """One caller's `append_batch`, waiting for the engine. Created on the caller's event loop,
    answered from the engine's (which may run in another thread)."""

    appends: Sequence[StreamAppend]
    events: list[list[Encoded]]  # per append
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[AppendResult]]
    keys: KeyWork = NO_KEY_WORK  # what it does to the key table (keys.py), in its transaction

    @classmethod
    def create(cls, appends: Sequence[StreamAppend]) -> Request:
        """Encode the events (InvalidAppend before anything is queued)."""
        events = [[encode(e) for e in a.events] for a in appends]
        loop = asyncio.get_running_loop()
        return cls(appends, events, loop, loop.create_future(), KEY_WORK.get())

    @property
    def size(self) -> int:
        return sum(len(a.events) for a in self.appends)

    def gone(self) -> bool:
        """True once the caller stopped waiting (cancelled). Read from the engine's thread: a
        plain read of the future's state."""
        return self.future.done()

    def answer(self, outcome: Outcome) -> None:
        """Settle the caller's future on the caller's loop (from any thread)."""
        answer_all([(self, outcome)])

    def settle(self, outcome: Outcome) -> None:
        """Settle the caller's future; on the caller's loop only."""
        if self.future.done():  # the caller was cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


def answer_all(answers: Sequence[tuple[Request, Outcome]]) -> None:
    """Settle many callers' futures with one wake-up of each caller's loop (a wake-up from
    another thread is a system call: one per group, not one per caller)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, Outcome]]] = {}
    for request, outcome in answers:
        by_loop.setdefault(request.loop, []).append((request, outcome))
    for loop, settled in by_loop.items():

        def settle(settled: list[tuple[Request, Outcome]] = settled) -> None:
            for request, outcome in settled:
                request.settle(outcome)

        _call_on(loop, settle)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on `loop`: now when we are on it, else soon (a wake-up from another
    thread is a system call)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
        return
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
        loop.call_soon_threadsafe(callback)


# -- what a backend supplies ---------------------------------------------------------------


class InsertRefused(Exception):
    """Raised by `Database.insert`/`insert_and_commit` when the database refused the rows
    (a constraint, bad data): the fault of a request, not of the database. The transaction is
    still open; rolling back to the last savepoint recovers it."""

    def __init__(self, error: EventStoreError) -> None:
        super().__init__(str(error))
        self.error = error


class Database(Protocol):
    """The primitives of one write transaction. Each raises an EventStoreError (translated
    from its driver), `insert*` also InsertRefused. `commit` and `insert_and_commit` raise
    StoreOutcomeUnknown when the COMMIT itself failed and StoreUnavailable only when the
    transaction is known not to have committed."""

    def usable(self) -> bool:
        """Whether the connection can take another group."""

    async def begin(
        self, ids: Sequence[str], streams: Sequence[str], accounts: Sequence[str] = ()
    ) -> Snapshot:
        """Start the transaction as the only writer, read the snapshot (of the event ids given
        as text, of the streams, and the key ids of the accounts: keys.py), set savepoint
        `group`."""

    async def insert(self, rows: Sequence[Row]) -> None: ...

    async def insert_and_commit(self, rows: Sequence[Row], head: int, head_hash: str) -> None:
        """INSERT the rows, record the new head (position and hash), COMMIT."""

    async def commit(self, head: int, head_hash: str) -> None: ...

    async def savepoint(self, name: str) -> None: ...

    async def release(self, name: str) -> None: ...

    async def rollback_to(self, name: str) -> None: ...

    async def rollback(self) -> None:
        """End the transaction without writing; never raises (a connection that cannot roll
        back is the backend's to discard)."""

    async def apply_keys(self, work: KeyWork) -> None:
        """INSERT the keys `work` creates, DELETE those it erases."""


class Backend(Protocol):
    def session(self) -> AbstractAsyncContextManager[Database]:
        """A connection to write with, for as long as the engine keeps it. Raises
        StoreUnavailable when none can be had."""

    def committed(self, head: int, rows: Sequence[Row]) -> None:
        """Called after every COMMIT that wrote events, with the new head and the rows."""


# -- the engine ----------------------------------------------------------------------------


class GroupCommit:
    """The queue and the loop. `run` is the loop, on the event loop given (for SQLite, a loop
    of the writer thread's own); `submit` and `close` may be called from any thread."""

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._loop = loop
        self._lock = threading.Lock()  # guards the queue, `_closing` and `_idle`
        self._queue: deque[Request] = deque()
        self._ready = asyncio.Event()
        self._idle = False  # the loop waits for `_ready`: the next submit must wake it
        self._closing = False
        self.commits = 0  # transactions that wrote events (observable group commit)
        self.appends_written = 0  # requests they wrote
        self.in_flight = 0  # requests of the group being written now (observable by tests)

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._closing:
                refused = True
            else:
                refused = False
                self._queue.append(request)
                wake, self._idle = self._idle, False
        if refused:
            request.answer(StoreUnavailable("the event store is closed"))
        elif wake:
            # Only an idle loop is woken: a busy one takes the queue after its group, so a
            # burst of appends costs one wake-up (a system call from another thread), not one
            # each.
            self._wake()

    def close(self) -> None:
        """Refuse new requests; `run` returns once the queued ones are answered."""
        with self._lock:
            self._closing = True
            self._idle = False
        self._wake()

    def _wake(self) -> None:
        _call_on(self._loop, self._ready.set)

    def fail_queued(self, error: EventStoreError) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), deque()
        answer_all([(request, error) for request in queued])

    async def _requests_waiting(self) -> bool:
        """Wait until requests are queued (True) or the engine closes with none (False)."""
        while True:
            with self._lock:
                if self._queue:
                    return True
                if self._closing:
                    return False
                self._ready.clear()
                self._idle = True
            await self._ready.wait()

    async def run(self) -> None:
        try:
            while await self._requests_waiting():
                try:
                    async with self._backend.session() as db:
                        # Keep the connection while appends keep coming.
                        while self._queue and db.usable():
                            if group := self._take_group():
                                await self._commit_group(db, group)
                except EventStoreError as exc:  # no connection to write with
                    self.fail_queued(exc)
                except Exception as exc:  # a bug: answer the callers, keep the writer alive
                    logger.exception("event store writer failed")
                    self.fail_queued(StoreUnavailable(f"unexpected error in the writer: {exc!r}"))
        finally:
            self.fail_queued(StoreUnavailable("the event store was closed before this append"))

    def _take_group(self) -> list[Request]:
        with self._lock:
            return self._take_group_locked()

    def _take_group_locked(self) -> list[Request]:
        group: list[Request] = []
        events = 0
        while self._queue and len(group) < MAX_GROUP_REQUESTS:
            request = self._queue[0]
            if request.gone():  # its caller was cancelled before we started: not written
                self._queue.popleft()
                continue
            if group and events + request.size > MAX_GROUP_EVENTS:
                break
            self._queue.popleft()
            group.append(request)
            events += request.size
        return group

    async def _commit_group(self, db: Database, group: list[Request]) -> None:
        """One transaction for the whole group; every caller is answered after the COMMIT."""
        outcomes: dict[Request, Outcome] = {}
        writes: list[Write[Request]] = []
        self.in_flight = len(group)
        try:
            writes = await self._transact(db, group, outcomes)
        except BaseException as exc:
            self.in_flight = 0
            error = _as_store_error(exc)
            if not isinstance(exc, EventStoreError | asyncio.CancelledError):
                logger.exception("event store writer failed")  # a bug: answer, keep going
            await db.rollback()
            # Planning's answers are facts (a replay, a failed check) whatever happened next;
            # every other request of the group gets the error.
            answer_all([(r, outcomes.get(r, error)) for r in group])
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.in_flight = 0
        if writes:
            self.commits += 1
            self.appends_written += len(writes)
            self._backend.committed(writes[-1].rows[-1].position, _rows(writes))
        for write in writes:
            outcomes[write.request] = write.results
        answer_all([(request, outcomes[request]) for request in group])

    async def _transact(
        self, db: Database, group: list[Request], outcomes: dict[Request, Outcome]
    ) -> list[Write[Request]]:
        """Run the group's transaction up to and including COMMIT; returns what it wrote."""
        ids = [e.id_text for r in group for events in r.events for e in events]
        streams = sorted({a.stream for r in group for a in r.appends})
        keyed = sorted({a for r in group if r.keys for a in r.keys.accounts()})
        snapshot = await db.begin(ids, streams, keyed)
        group = _without_key_conflicts(snapshot, group, outcomes)
        planner = Planner(snapshot)
        writes = [w for r in group if (w := _plan(planner, r, outcomes, accept=True))]
        if not writes:
            await db.rollback()  # nothing to write: release the lock
            return []
        try:
            # Keys change only for what is written: a forget refused by its expected version
            # deletes no key.
            if work := [w.request.keys for w in writes if w.request.keys]:
                for each in work:
                    await db.apply_keys(each)
            await _committing(db.insert_and_commit(_rows(writes), planner.head, planner.head_hash))
            return writes
        except InsertRefused:
            await db.rollback_to("group")
        # One request's rows were refused: insert request by request, each planned again on
        # what is really written, so that the one at fault fails alone.
        for request in group:  # the key conflicts found above stay answered
            outcomes.pop(request, None)
        planner = Planner(snapshot)
        writes = []
        for request in group:
            write = _plan(planner, request, outcomes, accept=False)
            if write is None:
                continue
            await db.savepoint("request")
            try:
                if request.keys:
                    await db.apply_keys(request.keys)
                await db.insert(write.rows)
            except InsertRefused as refused:
                await db.rollback_to("request")
                outcomes[request] = refused.error
                continue
            await db.release("request")
            planner.accept(write)
            writes.append(write)
        if not writes:
            await db.rollback()
            return []
        await _committing(db.commit(planner.head, planner.head_hash))
        return writes


class _CommitFailed(Exception):
    """Internal: a COMMIT raised `error`; nobody knows whether it took effect."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _committing(commit: Awaitable[None]) -> None:
    """Await a commit primitive. What it raises besides InsertRefused and StoreUnavailable (the
    backend knows the transaction did not commit) is a failed COMMIT: outcome unknown."""
    try:
        await commit
    except (InsertRefused, StoreUnavailable):
        raise
    except BaseException as exc:
        raise _CommitFailed(exc) from exc


def _as_store_error(exc: BaseException) -> BaseException:
    """What a caller of a failed group is answered."""
    if isinstance(exc, _CommitFailed):
        unknown = StoreOutcomeUnknown(
            f"the commit failed, the append may or may not be stored: {exc.error}"
        )
        unknown.__cause__ = exc.error
        return unknown
    if isinstance(exc, asyncio.CancelledError):
        return StoreUnavailable("the event store closed during the append; retry it")
    if isinstance(exc, EventStoreError):
        return exc
    return StoreUnavailable(f"unexpected error in the event store writer: {exc!r}")


def _without_key_conflicts(
    snapshot: Snapshot, group: list[Request], outcomes: dict[Request, Outcome]
) -> list[Request]:
    """The group without the requests whose keys are not as they were sealed under: a key to
    create that exists (stored, or created by a request before it in the group), a key used
    that is gone (a forget). Those fail with KeyConflict, to be sealed again."""
    if not any(r.keys for r in group):
        return group
    current = dict(snapshot.keys)
    kept: list[Request] = []
    for request in group:
        if request.keys and conflicts(request.keys, current):
            outcomes[request] = KeyConflict()
            continue
        after(request.keys, current)
        kept.append(request)
    return kept


def _plan(
    planner: Planner, request: Request, outcomes: dict[Request, Outcome], *, accept: bool
) -> Write[Request] | None:
    """Plan one request; its failure or replay goes to `outcomes` (it fails alone)."""
    try:
        planned = planner.plan(request)
    except EventStoreError as exc:
        outcomes[request] = exc
        return None
    except Exception as exc:  # a bug in planning fails this request only
        logger.exception("planning an append failed")
        outcomes[request] = StoreUnavailable(f"unexpected error planning the append: {exc!r}")
        return None
    if isinstance(planned, list):
        outcomes[request] = planned
        return None
    if accept:
        planner.accept(planned)
    return planned


def _rows(writes: Sequence[Write[Request]]) -> list[Row]:
    return [row for write in writes for row in write.rows]
