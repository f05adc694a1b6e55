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

How the file is opened, made durable and migrated: sqlite_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventledger.eventstore import pii
from eventledger.eventstore.errors import (
    StoreUnavailable,
    StreamNotFound,
)
from eventledger.eventstore.group_commit import (
    GroupCommit,
    Request,
)
from eventledger.eventstore.keys import rows_to_keys
from eventledger.eventstore.memory import Clock, utc_now
from eventledger.eventstore.pii import AccountKey
from eventledger.eventstore.planning import Row
from eventledger.eventstore.recent import RecentEvent, RecentLog, RecentPage, StoredEnvelopes
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.sqlite_schema import (
    SCHEMA_VERSION,
    TRANSACTION_ID,
    connect,
    enable_wal,
    migrate,
)
from eventledger.eventstore.sqlite_write import WriteSide, unavailable
from eventledger.eventstore.store import ACCOUNT_STREAMS, MAX_PAGE, EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry

# What other modules import from here; SCHEMA_VERSION is re-exported for them.
__all__ = ["SCHEMA_VERSION", "SqliteEventStore"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_MAX_INT = 2**63 - 1  # SQLite integers are signed 64-bit
_COLUMNS = (
    "position, id, stream, stream_version, type, schema_version, data, metadata, recorded_at,"
    " hash, batch_end"
)
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
MIN_FREE_BYTES = 64 * 1024  # less free space than this on the file's disk: ping says full
_STREAM_VERSION = "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = ?"
# The expression's text is the index's (sqlite_schema.TRANSACTION_INDEX), so SQLite uses it;
# the stream range keeps to account streams (LIKE would be case-insensitive here).
_BY_TRANSACTION = (
    f"SELECT {_COLUMNS} FROM events WHERE {TRANSACTION_ID} = ? AND stream >= ? AND stream < ?"
    " ORDER BY position LIMIT ?"
)


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
        self._readers = _ReaderPool(self._connect_reader)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
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
        self._wake_waiters()

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
            return _decode_rows(rows)

        return await self._read(query)

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        sql, params = _log_query(after, limit, types, stream_prefix)

        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            return _decode_rows(conn.execute(sql, params).fetchall())

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
        sql, params = _log_query(max(after, 0), max(1, min(limit, MAX_PAGE)), types, stream_prefix)
        stored, upcast = self._stored, self._upcasters.upcast

        def query(conn: sqlite3.Connection) -> list[RecentEvent | RecordedEvent]:
            entries: list[RecentEvent | RecordedEvent] = []
            for row in conn.execute(sql, params).fetchall():
                text = stored.text(row)
                if text is None:
                    entries.append(_decode_rows([row])[0])
                else:
                    entries.append(RecentEvent(row[0], row[4], text))
            decoded = [e for e in entries if isinstance(e, RecordedEvent)]
            if not decoded:
                return entries
            # Personal data opened (or erased) before upcasting, as read_all does; its keys
            # read on this connection, in this thread: a live page of sealed events costs
            # one hop to the reader thread, not two.
            accounts = pii.accounts_to_open(decoded)
            keys = _keys_on(conn, accounts) if accounts else {}
            opened = iter([upcast(e) for e in pii.reveal(decoded, keys)])
            return [next(opened) if isinstance(e, RecordedEvent) else e for e in entries]

        return await self._read(query)

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        def query(conn: sqlite3.Connection) -> RecordedEvent | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE id = ?", (str(event_id),)
            ).fetchone()
            return None if row is None else _decode_rows([row])[0]

        return await self._read(query)

    async def _load_keys(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        return await self._read(lambda conn: _keys_on(conn, accounts))

    async def _read_transaction(self, transaction_id: str, limit: int) -> list[RecordedEvent]:
        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(_BY_TRANSACTION, (transaction_id, *ACCOUNT_STREAMS, limit))
            return _decode_rows(rows.fetchall())

        return await self._read(query)

    async def stream_version(self, stream: str) -> int:
        return await self._read(lambda conn: _scalar(conn, _STREAM_VERSION, stream))

    async def head_position(self) -> int:
        head = await self._read(lambda conn: _scalar(conn, _HEAD))
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
            row = self._head_probe.execute(_HEAD).fetchone()
        except sqlite3.Error:
            return False
        return int(row[0]) <= self._recent.end

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
                target=self._run_writer,
                args=(loop, engine, side),
                name="eventledger-sqlite-writer",
                daemon=True,
            )
            self._writer.start()
            self._started = True

    @staticmethod
    def _run_writer(loop: asyncio.AbstractEventLoop, engine: GroupCommit, side: WriteSide) -> None:
        """The writer thread: the engine on a loop of its own, then the connection closed."""
        try:
            loop.run_until_complete(engine.run())
        finally:
            side.close()
            loop.close()

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
        self._wake_waiters()

    def connect(self) -> sqlite3.Connection:
        return connect(self._path, busy_timeout=self._busy_timeout)

    def clock(self) -> datetime:
        return self._clock()

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self.connect()
        conn.execute("PRAGMA query_only = ON")
        return conn


# -- helpers ---------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise unavailable(exc) from exc


def _keys_on(conn: sqlite3.Connection, accounts: Collection[str]) -> dict[str, AccountKey]:
    """The current personal data keys of these accounts (pii.py, keys.py)."""
    rows = conn.execute(
        "SELECT account_id, key_id, secret FROM personal_data_keys WHERE account_id IN"
        " (SELECT value FROM json_each(?))",
        (json.dumps(sorted(accounts)),),
    )
    return rows_to_keys(rows.fetchall())


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


def _decode_rows(rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
    """Rows of _COLUMNS as events. A page is decoded in one loop: the events of one append
    share their time, parsed once; empty metadata is not parsed (catch-up reads are bound by
    this loop)."""
    loads, parse, uuid = json.loads, datetime.fromisoformat, UUID
    times: dict[str, datetime] = {}
    events: list[RecordedEvent] = []
    for position, event_id, stream, version, type_, schema, data, meta, at, hash_, end in rows:
        moment = times.get(at)
        if moment is None:
            moment = times[at] = parse(at)
        events.append(
            RecordedEvent(
                uuid(event_id), stream, type_, schema, loads(data),
                {} if meta == "{}" else loads(meta), version, position, moment, hash_, end,
            )
        )  # fmt: skip
    return events


def _log_query(
    after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
) -> tuple[str, list[object]]:
    """The SQL and parameters of a page of the global log (read_all's filters)."""
    after = min(after, _MAX_INT)
    # substr, not LIKE: '_' is a legal stream name character and a LIKE wildcard.
    prefix = " AND substr(stream, 1, ?) = ?" if stream_prefix else ""
    prefix_params = (len(stream_prefix), stream_prefix) if stream_prefix else ()
    params: list[object]
    types = tuple(dict.fromkeys(types))  # a type named twice selects its events once
    if len(types) > 1:
        # One index range per type (events_by_type), each cut at `limit`, merged: a page
        # costs at most `limit` rows per type. (`type IN (...) ORDER BY position` sorts
        # every matching event after `after` first: the whole log for a new subscriber.)
        part = (
            f"SELECT * FROM (SELECT {_COLUMNS} FROM events WHERE type = ? AND position > ?"
            f"{prefix} ORDER BY position LIMIT ?)"
        )
        sql = " UNION ALL ".join([part] * len(types)) + " ORDER BY position LIMIT ?"
        params = []
        for event_type in types:
            params.extend((event_type, after, *prefix_params, limit))
        params.append(limit)
    else:
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ?"
        params = [after]
        if types:
            sql += " AND type = ?"
            params.append(types[0])
        sql += f"{prefix} ORDER BY position LIMIT ?"
        params.extend((*prefix_params, limit))
    return sql, params
