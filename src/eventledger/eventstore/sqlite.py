"""The SQLite event store: the embedded default. One file, safe for several processes.

How an append travels (group commit):

    caller ──put──▶ queue ──▶ writer thread (owns the only write connection of this store)
                               BEGIN IMMEDIATE
                                 SAVEPOINT per request: replay check, expected version, INSERTs
                                 (a failing request is rolled back to its savepoint alone)
                               COMMIT                  ◀── one fsync for the whole group
    caller ◀──future── answered only after COMMIT returned

Reads never touch the write connection: they run in worker threads on a small pool of
read-only connections. In WAL mode a reader sees exactly the transactions committed before
its statement started, so readers in any thread or process see only committed events.

How the file is opened, made durable and migrated: sqlite_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventledger.eventstore.codec import format_time, json_text
from eventledger.eventstore.errors import (
    EventStoreError,
    StoreUnavailable,
    StreamNotFound,
)
from eventledger.eventstore.memory import Clock, utc_now
from eventledger.eventstore.records import AppendResult, NewEvent, RecordedEvent, StreamAppend
from eventledger.eventstore.sqlite_schema import SCHEMA_VERSION, connect, enable_wal, migrate
from eventledger.eventstore.store import EventStore, check_expected_version, classify_batch_replay
from eventledger.eventstore.upcasting import UpcasterRegistry

# What other modules import from here; SCHEMA_VERSION is re-exported for them.
__all__ = ["SCHEMA_VERSION", "SqliteEventStore"]

T = TypeVar("T")

MAX_GROUP = 512  # requests committed together at most: bounds one transaction's size
_MAX_INT = 2**63 - 1  # SQLite integers are signed 64-bit
_IN_CHUNK = 500  # ids per `IN (...)` lookup, well below SQLite's bound-parameter limit
_COLUMNS = "position, id, stream, stream_version, type, schema_version, data, metadata, recorded_at"
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
_STREAM_VERSION = "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = ?"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class SqliteEventStore(EventStore):
    """An event store in one SQLite file (WAL journal, synchronous=FULL).

    Several instances, in this process or in others, may use the same file: SQLite's write
    lock (taken by BEGIN IMMEDIATE, waited for up to `busy_timeout` seconds) serialises them.
    Nothing is opened until first use; `close()` stops the writer thread and closes every
    connection.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        upcasters: UpcasterRegistry | None = None,
        clock: Clock = utc_now,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.5,
    ) -> None:
        super().__init__(upcasters=upcasters)
        self._path = os.fspath(path)
        if not self._path or self._path == ":memory:" or self._path.startswith("file:"):
            raise ValueError(f"SqliteEventStore needs a file path, not {self._path!r}")
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._lock = threading.Lock()  # guards starting, closing and submitting requests
        self._started = False
        self._closed = False
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()  # None: stop
        self._writer: threading.Thread | None = None
        self._readers = _ReaderPool(self._connect_reader)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        # The highest position this instance has committed: a lower bound of the head that
        # spares `wait_for_events` a query. Other processes' commits are found by querying.
        self._known_head = 0
        self.commits = 0  # write transactions committed by this instance (observability)

    @property
    def path(self) -> Path:
        """The database file."""
        return Path(self._path)

    @property
    def closed(self) -> bool:
        """True once `close()` has begun: appends and reads raise StoreUnavailable."""
        return self._closed

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        upcasters: UpcasterRegistry | None = None,
        clock: Clock = utc_now,
    ) -> SqliteEventStore:
        """`sqlite:///abs/path/events.db` (absolute) or `sqlite://rel/events.db` (relative);
        the file's folder is created when missing."""
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if parts.scheme != "sqlite" or parts.query or parts.fragment or not path:
            raise ValueError(f"not a SQLite store URL: {url!r} (expected sqlite:///path/file.db)")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(path, upcasters=upcasters, clock=clock)

    # -- writing -------------------------------------------------------------------------

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        encoded = [(append, [_encode(event) for event in append.events]) for append in appends]
        await self._ready()
        loop = asyncio.get_running_loop()
        request = _Request(encoded, loop, loop.create_future())
        with self._lock:
            # Under the lock so that no request can slip into the queue behind the stop
            # marker, where nobody would ever answer it.
            if self._closed:
                raise StoreUnavailable("the event store is closed")
            self._queue.put(request)
        return await request.future

    def _run_writer(self, conn: sqlite3.Connection) -> None:
        try:
            while (group := self._next_group()) is not None:
                self._commit_group(conn, group)
        finally:
            # Whatever is still queued at close is refused, never left waiting forever.
            while True:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if request is not None:
                    _answer(request, _closed_before_writing())
            conn.close()

    def _next_group(self) -> list[_Request] | None:
        """Wait for a request, then take every other one already queued: they all share the
        next transaction. None when the store is closing."""
        first = self._queue.get()
        if first is None or self._closed:
            if first is not None:
                _answer(first, _closed_before_writing())
            return None
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                self._queue.put(None)  # seen by the next _next_group, which stops
                break
            group.append(request)
        return group

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Request]) -> None:
        outcomes: list[list[AppendResult] | EventStoreError] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Positions are assigned here, inside the write transaction, as max+1. SQLite
                # has one writer at a time (across processes too), so transactions commit in
                # the order they took the lock and every position is above all positions
                # committed before. A reader that has seen position P can therefore never later
                # see a new event below P. (A sequence handed out before taking the lock would
                # let a slower transaction commit a lower position after a faster one.)
                head = _scalar(conn, _HEAD)
                for request in group:
                    conn.execute("SAVEPOINT request")
                    try:
                        results, new_head = self._apply(conn, request, head)
                    except EventStoreError as exc:
                        # Only this caller fails; the rest of the group goes on.
                        conn.execute("ROLLBACK TO request")
                        conn.execute("RELEASE request")
                        outcomes.append(exc)
                    else:
                        conn.execute("RELEASE request")
                        outcomes.append(results)
                        head = new_head
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            # The transaction did not commit (or a driver error broke it): nothing of the
            # group is written, so every request of the group fails, the good ones too.
            for request in group:
                _answer(request, _unavailable(exc))
            return
        self.commits += 1
        self._known_head = max(self._known_head, head)
        # Callers are answered only now, after COMMIT returned: with synchronous=FULL the
        # WAL is fsynced by then, so an acknowledged append survives a crash or power loss.
        # Answering a request as soon as its savepoint was released would acknowledge
        # events that a failing COMMIT could still take back.
        for request, outcome in zip(group, outcomes, strict=True):
            _answer(request, outcome)
        self._wake_waiters()

    def _apply(
        self, conn: sqlite3.Connection, request: _Request, head: int
    ) -> tuple[list[AppendResult], int]:
        """Write one request inside the group's transaction; later requests of the group see
        its writes. Returns the results and the new head position."""
        appends = [append for append, _ in request.appends]
        replayed = classify_batch_replay(appends, lambda events: _stored(conn, events))
        if replayed is not None:
            return replayed, head
        now = self._clock()
        # A naive clock is read as UTC (astimezone would take it for local time).
        recorded_at = format_time(now if now.tzinfo else now.replace(tzinfo=UTC))
        results = []
        for append, rows in request.appends:
            actual = _scalar(conn, _STREAM_VERSION, append.stream)
            check_expected_version(append.stream, append.expected_version, actual)
            conn.executemany(
                _INSERT,
                [
                    (head + i, row.id, append.stream, actual + i, *row.columns, recorded_at)
                    for i, row in enumerate(rows, start=1)
                ],
            )
            positions = tuple(range(head + 1, head + len(rows) + 1))
            results.append(AppendResult(append.stream, actual + 1, actual + len(rows), positions))
            head += len(rows)
        return results, head

    # -- reading -------------------------------------------------------------------------

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND stream_version >= ?"
                " ORDER BY stream_version LIMIT ?",
                (
                    stream,
                    min(from_version, _MAX_INT),
                    -1 if limit is None else min(limit, _MAX_INT),
                ),
            ).fetchall()
            if not rows and not _stream_exists(conn, stream):
                raise StreamNotFound(stream)
            return [_decode(row) for row in rows]

        return await self._read(query)

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ?"
        params: list[object] = [min(after, _MAX_INT)]
        if types:
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        if stream_prefix:
            # substr, not LIKE: '_' is a legal stream name character and a LIKE wildcard.
            sql += " AND substr(stream, 1, ?) = ?"
            params.extend((len(stream_prefix), stream_prefix))
        sql += " ORDER BY position LIMIT ?"
        params.append(limit)

        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            return [_decode(row) for row in conn.execute(sql, params).fetchall()]

        return await self._read(query)

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        def query(conn: sqlite3.Connection) -> RecordedEvent | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE id = ?", (str(event_id),)
            ).fetchone()
            return None if row is None else _decode(row)

        return await self._read(query)

    async def stream_version(self, stream: str) -> int:
        return await self._read(lambda conn: _scalar(conn, _STREAM_VERSION, stream))

    async def head_position(self) -> int:
        head = await self._read(lambda conn: _scalar(conn, _HEAD))
        self._known_head = max(self._known_head, head)
        return head

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        if self._closed:
            raise StoreUnavailable("the event store is closed")
        if self._known_head > after:
            return True
        await self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        waiter = (loop, asyncio.Event())
        with self._waiters_lock:
            self._waiters.add(waiter)
        try:
            while True:
                # Clear before checking: a commit that lands between the check and the wait
                # has set the event again, so its wake-up is never lost.
                waiter[1].clear()
                # Our own commits wake us (the writer raises _known_head before it signals).
                # Another process's commits do not, so the file is asked as well: once per
                # wake-up and every `poll_interval` seconds, a cheap max(position) lookup.
                if self._known_head > after or await self.head_position() > after:
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._poll_interval)):
                        await waiter[1].wait()
        finally:
            with self._waiters_lock:
                self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        writer = self._writer
        if writer is not None and not writer.is_alive():
            raise StoreUnavailable("the event store's writer thread has stopped")

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)

    # -- connections ---------------------------------------------------------------------

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        await self._ready()
        return await asyncio.to_thread(self._run_read, query)

    def _run_read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with _translated():
            conn = self._readers.acquire()
            try:
                result = query(conn)
            except BaseException:
                self._readers.discard(conn)
                raise
            self._readers.release(conn)
            return result

    async def _ready(self) -> None:
        if not self._started:
            await asyncio.to_thread(self._start)

    def _start(self) -> None:
        """Open the write connection, create or migrate the schema, start the writer."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the event store is closed")
            if self._started:
                return
            with _translated():
                try:
                    Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot create the directory of {self._path}") from exc
                conn = self._connect()
                try:
                    enable_wal(conn, self._path, busy_timeout=self._busy_timeout)
                    migrate(conn)
                except BaseException:
                    conn.close()
                    raise
            self._writer = threading.Thread(
                target=self._run_writer, args=(conn,), name="eventledger-sqlite-writer", daemon=True
            )
            self._writer.start()
            self._started = True

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._queue.put(None)
        if writer is not None:
            writer.join()
        self._readers.close()
        self._wake_waiters()

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, busy_timeout=self._busy_timeout)

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        return conn


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """A new event, encoded for INSERT before it reaches the writer thread."""

    id: str
    type: str
    schema_version: int
    data: str
    metadata: str

    @property
    def columns(self) -> tuple[str, int, str, str]:
        return (self.type, self.schema_version, self.data, self.metadata)


@dataclass(frozen=True, slots=True)
class _Request:
    """One caller's batch, waiting for the writer."""

    appends: list[tuple[StreamAppend, list[_Row]]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[AppendResult]]


class _ReaderPool:
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


def _closed_before_writing() -> StoreUnavailable:
    return StoreUnavailable("the event store was closed before this append was written")


def _answer(request: _Request, outcome: list[AppendResult] | EventStoreError) -> None:
    """Settle a caller's future from the writer thread, on the caller's event loop."""

    def settle() -> None:
        if request.future.done():  # the caller was cancelled
            return
        if isinstance(outcome, EventStoreError):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        request.loop.call_soon_threadsafe(settle)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    """The one place where a driver error becomes an event store error."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        error = StoreUnavailable(f"the event store is busy: {exc}")
    elif isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        error = StoreUnavailable(f"SQLite error ({name}): {exc}")
    else:
        error = StoreUnavailable(f"unexpected error in the SQLite event store: {exc!r}")
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _unavailable(exc) from exc


def _stored(conn: sqlite3.Connection, events: Sequence[NewEvent]) -> list[RecordedEvent | None]:
    """The stored event for each new event's id, None where the id is new."""
    ids = [str(event.id) for event in events]
    found: dict[str, RecordedEvent] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        sql = f"SELECT {_COLUMNS} FROM events WHERE id IN ({', '.join('?' * len(chunk))})"
        for row in conn.execute(sql, chunk):
            found[row[1]] = _decode(row)
    return [found.get(event_id) for event_id in ids]


def _stream_exists(conn: sqlite3.Connection, stream: str) -> bool:
    return (
        _scalar(
            conn, "SELECT count(*) FROM (SELECT 1 FROM events WHERE stream = ? LIMIT 1)", stream
        )
        > 0
    )


def _scalar(conn: sqlite3.Connection, sql: str, *params: object) -> int:
    value: int = conn.execute(sql, params).fetchone()[0]
    return value


def _encode(event: NewEvent) -> _Row:
    return _Row(
        id=str(event.id),
        type=event.type,
        schema_version=event.schema_version,
        data=json_text(event.data, "data", event.id),
        metadata=json_text(event.metadata, "metadata", event.id),
    )


def _decode(row: tuple[Any, ...]) -> RecordedEvent:
    position, event_id, stream, version, event_type, schema_version, data, metadata, at = row
    return RecordedEvent(
        id=UUID(event_id),
        stream=stream,
        type=event_type,
        schema_version=schema_version,
        data=json.loads(data),
        metadata=json.loads(metadata),
        stream_version=version,
        position=position,
        recorded_at=datetime.fromisoformat(at),
    )
