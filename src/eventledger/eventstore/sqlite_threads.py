"""The threads of the SQLite event store and what crosses between them: the pool of read-only
connections that worker threads read on, sqlite3 errors translated at that boundary, the
writer thread's body (the group commit engine on a loop of its own), and the wake-ups the
writer sends, after a COMMIT, to readers waiting on other event loops."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator

from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.group_commit import GroupCommit
from eventledger.eventstore.sqlite_write import WriteSide, unavailable


class ReaderPool:
    """Read-only connections, each used by one thread at a time. A few are kept idle."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], keep: int = 8) -> None:
        self._connect = connect
        self._keep = keep
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the event store is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def release(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()

    def discard(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise unavailable(exc) from exc


def run_writer(loop: asyncio.AbstractEventLoop, engine: GroupCommit, side: WriteSide) -> None:
    """The writer thread: the engine on a loop of its own, then the connection closed."""
    try:
        loop.run_until_complete(engine.run())
    finally:
        side.close()
        loop.close()


Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class Waiters:
    """Readers waiting for new events, each an event on its own loop; woken from any thread
    (the writer's, after its COMMIT; the closer's)."""

    def __init__(self) -> None:
        self._waiters: set[Waiter] = set()
        self._lock = threading.Lock()

    def add(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(event.set)
