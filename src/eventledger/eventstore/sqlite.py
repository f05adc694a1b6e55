"""The SQLite event store: the embedded default. One file, safe for several processes.

How an append travels (group commit, group_commit.py):

    caller ──submit──▶ writer thread (runs the engine on its own event loop; owns the only
                       write connection of this store)
                         BEGIN IMMEDIATE: SQLite's write lock, across processes too
                           head, stored ids, stream versions; plan; INSERT
                         COMMIT                  ◀── one fsync for the whole group
    caller ◀──future── answered only after COMMIT returned

Reads never touch the write connection: they run in worker threads on a small pool of
read-only connections. In WAL mode a reader sees exactly the transactions committed before
its statement started, so readers in any thread or process see only committed events.

How the file is opened, made durable and migrated: sqlite_schema.py. The SQL of reads and the
decoding of rows: sqlite_read.py. The reader pool, the writer thread and the wake-ups between
threads: sqlite_threads.py. The write side the writer thread runs: sqlite_write.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventledger.eventstore.errors import (
    StoreUnavailable,
)
from eventledger.eventstore.group_commit import (
    GroupCommit,
    Request,
)
from eventledger.eventstore.memory import Clock, utc_now
from eventledger.eventstore.pii import AccountKey
from eventledger.eventstore.planning import Row
from eventledger.eventstore.recent import RecentEvent, RecentLog, RecentPage, StoredEnvelopes
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.sqlite_read import (
    HEAD,
    STREAM_VERSION,
    decode_rows,
    event_by_id,
    keys_on,
    log_entries,
    log_query,
    scalar,
    stream_events,
    transaction_events,
)
from eventledger.eventstore.sqlite_schema import (
    SCHEMA_VERSION,
    connect,
    enable_wal,
    migrate,
)
from eventledger.eventstore.sqlite_threads import ReaderPool, Waiters, run_writer, translated
from eventledger.eventstore.sqlite_write import WriteSide
from eventledger.eventstore.store import MAX_PAGE, EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry

# What other modules import from here; SCHEMA_VERSION is re-exported for them.
__all__ = ["SCHEMA_VERSION", "SqliteEventStore"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 64 * 1024  # less free space than this on the file's disk: ping says full


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
        self._writer: threading.Thread | None = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._engine: GroupCommit | None = None
        self._write_side: WriteSide | None = None
        # Why writes fail now (a full disk, an I/O error, a broken write connection), for
        # ping; cleared by the next COMMIT or probe that succeeds.
        self.write_fault: str | None = None
        self._readers = ReaderPool(self._connect_reader)
        self._waiters = Waiters()
        # The highest position this instance has committed: a lower bound of the head that
        # spares `wait_for_events` a query. Other processes' commits are found by querying.
        self._known_head = 0
        self._recent = RecentLog(self._upcasters)
        self._stored = StoredEnvelopes(self._upcasters)
        # Asked from the event loop whether another process committed after our recent rows
        # (a forget among them?): a few microseconds, never waiting for a lock (timeout 0).
        self._head_probe: sqlite3.Connection | None = None

    @property
    def commits(self) -> int:
        """Write transactions committed by this instance (observable group commit)."""
        return self._engine.commits if self._engine else 0

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
        request = Request.create(appends)
        await self._ready()
        with self._lock:
            # Under the lock so that no request can be submitted after the engine was told
            # to close, where nobody would ever answer it.
            if self._closed or self._writer_loop is None or self._engine is None:
                raise StoreUnavailable("the event store is closed")
            self._engine.submit(request)
        return await request.future

    def committed(self, head: int, rows: Sequence[Row]) -> None:
        """After every COMMIT of the writer: keep the rows for live readers, wake the waiters
        (in that order: a woken reader finds them)."""
        self._recent.add(rows)
        self._known_head = max(self._known_head, head)
        self._waiters.wake()

    def set_fault(self, fault: str | None) -> None:
        if fault != self.write_fault:
            if fault is None:
                logger.warning("event store %s: writes succeed again", self._path)
            else:
                logger.error("event store %s cannot write: %s", self._path, fault)
        self.write_fault = fault

    # -- reading -------------------------------------------------------------------------

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        return await self._read(lambda conn: stream_events(conn, stream, from_version, limit))

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        sql, params = log_query(after, limit, types, stream_prefix)

        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            return decode_rows(conn.execute(sql, params).fetchall())

        return await self._read(query)

    async def read_log_entries(
        self,
        *,
        after: int,
        limit: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> list[RecentEvent | RecordedEvent]:
        """`read_all`'s page, each event as its envelope text assembled from the stored
        columns where that is exact (recent.StoredEnvelopes), else decoded and upcast as
        `read_all` gives it. A catch-up page then costs no decode and no re-encode."""
        sql, params = log_query(max(after, 0), max(1, min(limit, MAX_PAGE)), types, stream_prefix)
        stored, upcast = self._stored, self._upcasters.upcast
        return await self._read(lambda conn: log_entries(conn, sql, params, stored, upcast))

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        return await self._read(lambda conn: event_by_id(conn, event_id))

    async def _load_keys(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        return await self._read(lambda conn: keys_on(conn, accounts))

    async def _read_transaction(self, transaction_id: str, limit: int) -> list[RecordedEvent]:
        return await self._read(lambda conn: transaction_events(conn, transaction_id, limit))

    async def stream_version(self, stream: str) -> int:
        return await self._read(lambda conn: scalar(conn, STREAM_VERSION, stream))

    async def head_position(self) -> int:
        head = await self._read(lambda conn: scalar(conn, HEAD))
        self._known_head = max(self._known_head, head)
        return head

    def recent_page(
        self,
        after: int,
        *,
        limit: int,
        max_bytes: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> RecentPage | None:
        if self._closed:
            return None
        return self._recent.page(
            after, limit=limit, max_bytes=max_bytes, types=types, stream_prefix=stream_prefix
        )

    def known_head(self) -> int:
        return self._known_head  # raised by the writer only after its COMMIT returned

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        if self._closed:
            raise StoreUnavailable("the event store is closed")
        if self._known_head > after:
            return True
        await self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        waiter = (loop, asyncio.Event())
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
            self._waiters.discard(waiter)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store can read and write: the file answers, the
        writer runs with a working connection, and the disk has room."""
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        writer = self._writer
        if writer is not None and not writer.is_alive():
            raise StoreUnavailable("the event store's writer thread has stopped")
        try:
            free = shutil.disk_usage(Path(self._path).parent).free
        except OSError as exc:
            raise StoreUnavailable(f"cannot stat the event store's disk: {exc}") from exc
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(f"the disk of {self._path} is full ({free} bytes free)")
        if self.write_fault is not None:
            # Writes failed: ask the writer whether they would work now (it reconnects a
            # broken connection, and checks that the file may grow).
            loop, side = self._writer_loop, self._write_side
            if loop is None or side is None:
                raise StoreUnavailable(self.write_fault)
            try:
                probe = asyncio.run_coroutine_threadsafe(side.probe(), loop)
            except RuntimeError:
                raise StoreUnavailable("the event store is closed") from None
            await asyncio.wrap_future(probe)

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)
        probe, self._head_probe = self._head_probe, None
        if probe is not None:
            probe.close()

    def _sealing(self, keys: Mapping[str, AccountKey]) -> None:
        self._recent.remember_keys(keys)

    async def _forgets_heard(self) -> bool:
        # This instance's forgets are applied by the writer (recent.py) before they return;
        # another process's forget is an event in the log after our recent rows, and it
        # commits with its key's deletion. So: nobody wrote after our last row, asked now.
        # Synchronous on purpose: one index seek on a read-only connection, cheaper than the
        # hop to a reader thread that this path exists to save; never waits (timeout 0).
        if self._closed or not self._started:
            return False
        try:
            if self._head_probe is None:
                self._head_probe = connect(self._path, busy_timeout=0)
                self._head_probe.execute("PRAGMA query_only = ON")
            row = self._head_probe.execute(HEAD).fetchone()
        except sqlite3.Error:
            return False
        return int(row[0]) <= self._recent.end

    # -- connections ---------------------------------------------------------------------

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        await self._ready()
        return await asyncio.to_thread(self._run_read, query)

    def _run_read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with translated():
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
            with translated():
                try:
                    Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot create the directory of {self._path}") from exc
                conn = self.connect()
                try:
                    enable_wal(conn, self._path, busy_timeout=self._busy_timeout)
                    migrate(conn)
                except BaseException:
                    conn.close()
                    raise
            side = WriteSide(self, conn)
            loop = asyncio.new_event_loop()
            engine = GroupCommit(side, loop)
            self._writer_loop, self._engine, self._write_side = loop, engine, side
            self._writer = threading.Thread(
                target=run_writer,
                args=(loop, engine, side),
                name="eventledger-sqlite-writer",
                daemon=True,
            )
            self._writer.start()
            self._started = True

    def _shutdown(self) -> None:
        """Refuse new appends, let the writer answer the queued ones, then stop it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, engine = self._writer_loop, self._engine
            if loop is not None and engine is not None:
                engine.close()
        if self._writer is not None:
            self._writer.join()
        self._readers.close()
        self._waiters.wake()

    def connect(self) -> sqlite3.Connection:
        return connect(self._path, busy_timeout=self._busy_timeout)

    def clock(self) -> datetime:
        return self._clock()

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self.connect()
        conn.execute("PRAGMA query_only = ON")
        return conn
