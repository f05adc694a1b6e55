"""The SQLite side of the group commit (group_commit.py): the primitives of one write
transaction on the store's only write connection, used by the writer thread alone.

Besides writing, it keeps what ping needs to know: a write fault (a full disk, an I/O error, a
write connection that broke when a ROLLBACK failed) is reported to the store until a COMMIT or
a probe succeeds again; a broken connection is replaced by the next group or probe.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

from eventledger.eventstore.errors import InvalidAppend, StoreOutcomeUnknown, StoreUnavailable
from eventledger.eventstore.group_commit import InsertRefused
from eventledger.eventstore.hashing import GENESIS
from eventledger.eventstore.keys import KeyWork
from eventledger.eventstore.planning import COLUMNS, Row, Snapshot, StoredPlace

# The group's stored ids and stream versions, each in one statement (a group holds at most
# MAX_GROUP_EVENTS ids, below SQLite's bound-parameter limit; larger lists would be chunked).
# Each value is one index seek, so the cost grows neither with the log nor with a stream's
# length. (A `GROUP BY stream` with max() walks every event of each stream: 120 ms for a
# 1M-event stream.) An `IN (?, ...)` list costs half a JSON array for one id (5 vs 12 us) and
# less for a thousand; one stream, the common case, is asked directly.
_STORED_BY_ID = "SELECT id, stream, stream_version, position FROM events WHERE id IN ({})"
_STREAM_VERSION = (
    "SELECT ?, (SELECT stream_version FROM events WHERE stream = ?"
    " ORDER BY stream_version DESC LIMIT 1)"
)
_STREAM_VERSIONS = (
    "SELECT value, (SELECT stream_version FROM events WHERE stream = value"
    " ORDER BY stream_version DESC LIMIT 1) FROM json_each(?)"
)
_INSERT = (
    "INSERT INTO events (position, id, stream, stream_version, type, schema_version, data,"
    " metadata, recorded_at, hash, batch_end) VALUES "
)
_ROW = "(" + ", ".join("?" * COLUMNS) + ")"
# Rows per INSERT statement. Many rows in one statement, not executemany: sqlite3 releases
# the GIL around every step, so executemany gives it up and asks for it back once per row;
# while the event loop's thread parses the next body, each ask waits for its switch interval
# (the convoy effect: a 1,000-row executemany measured 3 ms idle, up to 1.5 s beside a busy
# thread). One statement of 500 rows asks once. 500 x 11 values stays below SQLite's
# default bound-parameter limit (32,766; 999 before 3.32: then smaller chunks).
INSERT_ROWS = 500
# The head and its hash: the hash chain continues from it. Read inside the transaction, so
# a commit by another process on the same file is seen (no extra query: one index seek).
_HEAD = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_KEYS = (  # the key ids of the accounts a group seals personal data for (keys.py)
    "SELECT account_id, key_id FROM personal_data_keys"
    " WHERE account_id IN (SELECT value FROM json_each(?))"
)
# The write connection's page cache and WAL size. A bulk append touches a page of every index
# for each event, and the index of transaction ids (sqlite_schema.TRANSACTION_INDEX) is keyed
# by random ids: with SQLite's default 2 MiB cache those pages are read again from the file
# for every group, and with its default checkpoint every 1,000 WAL pages (4 MiB, about one
# 1,000-event append) the same pages are copied back into the database file after nearly
# every group. A 64 MiB cache and a checkpoint every 10,000 pages (40 MiB of WAL) halve the
# system time of a 200,000-event bulk load (10 vs 13-15 µs of CPU an event; bench/bulk.py).
# Durability is the same: every COMMIT is still fsynced (synchronous = FULL).
WRITER_CACHE_KIB = 64 * 1024
WAL_CHECKPOINT_PAGES = 10_000
PROBE_BYTES = 64 * 1024  # how much the file must be able to grow for ping to say it can write
# Errors that say the file cannot take writes (rather than a busy lock): ping reports them
# until a write or a probe succeeds again.
_WRITE_FAULTS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTADB",
                 "SQLITE_CANTOPEN", "SQLITE_READONLY")  # fmt: skip


class WriterHost(Protocol):
    """What the write side needs from its store."""

    write_fault: str | None

    def committed(self, head: int, rows: Sequence[Row]) -> None: ...
    def set_fault(self, fault: str | None) -> None: ...
    def clock(self) -> datetime: ...
    def connect(self) -> sqlite3.Connection: ...


class WriteSide:
    """The primitives the group-commit engine writes with (group_commit.Database), on the one
    write connection. Runs on the writer thread only."""

    def __init__(self, store: WriterHost, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = _writer_settings(conn)

    # -- Backend

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[WriteSide]:
        if self._conn is None:  # broken by a failed ROLLBACK: a new one
            self._reconnect()
        yield self

    def committed(self, head: int, rows: Sequence[Row]) -> None:
        self._store.committed(head, rows)

    # -- Database

    def usable(self) -> bool:
        return self._conn is not None

    async def begin(
        self, ids: Sequence[str], streams: Sequence[str], accounts: Sequence[str] = ()
    ) -> Snapshot:
        conn = self._connection()
        with self._translated():
            conn.execute("BEGIN IMMEDIATE")
            # Positions are assigned here, inside the write transaction, as max+1. SQLite has
            # one writer at a time (across processes too), so transactions commit in the
            # order they took the lock and every position is above all positions committed
            # before. A reader that has seen position P can therefore never later see a new
            # event below P. (A sequence handed out before taking the lock would let a slower
            # transaction commit a lower position after a faster one.)
            head, head_hash = conn.execute(_HEAD).fetchone() or (0, GENESIS)
            stored: dict[UUID, StoredPlace] = {}
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            for start in range(0, len(ids), limit):
                chunk = ids[start : start + limit]
                query = _STORED_BY_ID.format(", ".join("?" * len(chunk)))
                for event_id, stream, version, position in conn.execute(query, chunk):
                    place = StoredPlace(UUID(event_id), stream, version, position)
                    stored[place.id] = place
            if len(streams) == 1:
                found = conn.execute(_STREAM_VERSION, (streams[0], streams[0]))
            else:
                found = conn.execute(_STREAM_VERSIONS, (json.dumps(streams),))
            versions = {stream: version for stream, version in found if version is not None}
            keys: dict[str, str] = {}
            if accounts:
                keys = dict(conn.execute(_KEYS, (json.dumps(list(accounts)),)).fetchall())
            conn.execute("SAVEPOINT 'group'")
        return Snapshot(head, head_hash, self._store.clock(), stored, versions, keys)

    async def insert(self, rows: Sequence[Row]) -> None:
        conn = self._connection()
        per = min(INSERT_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // COLUMNS)
        try:
            for start in range(0, len(rows), per):
                chunk = rows[start : start + per]
                values = [v for r in chunk for v in r[:COLUMNS]]
                conn.execute(_insert_sql(len(chunk)), values)
        except sqlite3.IntegrityError as exc:  # a constraint or trigger refused these rows
            raise InsertRefused(InvalidAppend(f"SQLite refused the event: {exc}")) from exc
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc

    async def insert_and_commit(self, rows: Sequence[Row], head: int, head_hash: str) -> None:
        await self.insert(rows)
        await self.commit(head, head_hash)

    async def commit(self, head: int, head_hash: str) -> None:
        try:
            _run_commit(self._connection())
        except sqlite3.Error as exc:
            # Not "nothing was written": an I/O error while the WAL is written or fsynced
            # leaves the outcome unknown (the frames may be durable); only a retry with the
            # same event ids can tell.
            self._fault(exc)
            raise StoreOutcomeUnknown(
                f"the commit failed, the append may or may not be stored: {_describe(exc)}"
            ) from exc
        self._store.set_fault(None)

    async def savepoint(self, name: str) -> None:
        with self._translated():
            self._connection().execute(f"SAVEPOINT '{name}'")

    async def release(self, name: str) -> None:
        with self._translated():
            self._connection().execute(f"RELEASE '{name}'")

    async def rollback_to(self, name: str) -> None:
        with self._translated():
            self._connection().execute(f"ROLLBACK TO '{name}'")

    async def rollback(self) -> None:
        conn = self._conn
        try:
            if conn is None or not conn.in_transaction:  # SQLite may have rolled back already
                return
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # The connection may still hold the write lock or a half transaction: it is
            # useless. Drop it; the next group (or ping's probe) opens a new one.
            self._store.set_fault(f"the write connection broke: {_describe(exc)}")
            self.close()

    async def apply_keys(self, work: KeyWork) -> None:
        conn = self._connection()
        with self._translated():
            conn.executemany(
                "INSERT INTO personal_data_keys (account_id, key_id, secret) VALUES (?, ?, ?)",
                [(a, k.key_id, k.secret) for a, k in work.create.items()],
            )
            if work.erase:
                # Overwrite the deleted key's bytes in the file, not only unlink them (the WAL
                # keeps the old page until a checkpoint rewrites it: docs/erasure.md).
                conn.execute("PRAGMA secure_delete = ON")
                conn.executemany(
                    "DELETE FROM personal_data_keys WHERE account_id = ?",
                    [(a,) for a in work.erase],
                )

    # -- health

    async def probe(self) -> None:
        """Raise StoreUnavailable unless a write could succeed now (called by ping while a
        fault is reported): reconnect if needed, and try to grow the file by PROBE_BYTES in a
        transaction that is rolled back."""
        if self._conn is None:
            self._reconnect()
        conn = self._connection()
        try:
            with self._translated():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE eventledger_probe (filler BLOB)")
                conn.execute("INSERT INTO eventledger_probe VALUES (zeroblob(?))", (PROBE_BYTES,))
        finally:
            await self.rollback()
        self._store.set_fault(None)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- helpers

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(self._store.write_fault or "the write connection is closed")
        return self._conn

    def _reconnect(self) -> None:
        try:
            self._conn = _writer_settings(self._store.connect())
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc

    def _fault(self, exc: sqlite3.Error) -> StoreUnavailable:
        """Translate a write error; a fault of the file (not a busy lock) is kept for ping."""
        if str(getattr(exc, "sqlite_errorname", "")).startswith(_WRITE_FAULTS):
            self._store.set_fault(_describe(exc))
        return unavailable(exc)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc


def _writer_settings(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    """The INSERT of `rows` rows (cached: a full chunk's text is the same every time)."""
    return _INSERT + ", ".join([_ROW] * rows)


def _run_commit(conn: sqlite3.Connection) -> None:
    """COMMIT (one place, so that the tests can make it fail)."""
    conn.execute("COMMIT")


def _describe(exc: sqlite3.Error) -> str:
    return f"SQLite error ({getattr(exc, 'sqlite_errorname', type(exc).__name__)}): {exc}"


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The one place where a driver error becomes an event store error."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        error = StoreUnavailable(f"the event store is busy: {exc}")
    elif isinstance(exc, sqlite3.Error):
        error = StoreUnavailable(_describe(exc))
    else:
        error = StoreUnavailable(f"unexpected error in the SQLite event store: {exc!r}")
    error.__cause__ = exc
    return error
