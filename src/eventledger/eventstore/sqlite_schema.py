"""What `SqliteEventStore` does to a file before it uses it: connect with the settings that
make an acknowledged append durable (`synchronous = FULL`), switch the journal to WAL (readers
in any thread or process see exactly the transactions committed before their statement
started), and migrate the schema (`PRAGMA user_version` counts the migrations that ran; a file
of a newer version is refused).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from datetime import datetime
from uuid import UUID

from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.hashing import GENESIS, event_hash
from eventledger.eventstore.keys import SQLITE_KEYS_TABLE
from eventledger.eventstore.records import RecordedEvent

TRANSACTION_ID = "json_extract(data, '$.transaction_id')"  # read_transaction's WHERE: the same text
TRANSACTION_INDEX = (
    f"CREATE INDEX events_by_transaction ON events ({TRANSACTION_ID}, position)"
    f" WHERE {TRANSACTION_ID} IS NOT NULL"
)

# Each entry moves the schema up one version; `PRAGMA user_version` records how many ran.
# Add new migrations at the end; never edit one that has been released.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE events (
            position       INTEGER PRIMARY KEY,
            id             TEXT    NOT NULL UNIQUE,
            stream         TEXT    NOT NULL,
            stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
            type           TEXT    NOT NULL,
            schema_version INTEGER NOT NULL,
            data           TEXT    NOT NULL,
            metadata       TEXT    NOT NULL,
            recorded_at    TEXT    NOT NULL,
            UNIQUE (stream, stream_version)
        )
        """,
        # read_all(types=...) walks one type in position order instead of the whole log.
        "CREATE INDEX events_by_type ON events (type, position)",
    ),
    (
        # Tamper evidence (hashing.py), and where the atomic append that wrote an event ends.
        # The events of older versions get their chain once, here (`_chain_old_events`).
        "ALTER TABLE events ADD COLUMN hash TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN batch_end INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # The events of a transaction by their `data.transaction_id` (read_transaction), kept
        # by SQLite itself in every append's transaction: an index on the expression rather
        # than a table the writer fills, so no write path (group commit, bulk load) changes,
        # and creating it here indexes an existing log once. Partial: events without a
        # transaction id (AccountOpened, other streams' events) take no entry.
        TRANSACTION_INDEX,
    ),
    # The keys personal data is sealed under (keys.py, pii.py): beside the log, never in it.
    (SQLITE_KEYS_TABLE,),
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str, *, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the file, waiting up to `busy_timeout` seconds for its locks."""
    # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
    # check_same_thread=False: a connection is opened in one thread and used in another,
    # but never by two threads at once.
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # FULL: the WAL is fsynced at every COMMIT, so an acknowledged append survives a
        # power loss, not only a crash of the process.
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def enable_wal(conn: sqlite3.Connection, path: str, *, busy_timeout: float) -> None:
    """Switch the file to the WAL journal; StoreUnavailable if SQLite will not."""
    # Switching a new file to WAL needs a moment of exclusive access; other processes
    # opening the same new file at the same time can make it report "locked".
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"cannot use WAL journal mode on {path} (got {mode})")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION; StoreUnavailable if it is newer."""
    # BEGIN IMMEDIATE: two processes opening a new file at once must not both create tables.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the event store file has schema version {version}, newer than this "
                f"program's {SCHEMA_VERSION}: upgrade eventledger"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            if number == 2:
                _chain_old_events(conn)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _chain_old_events(conn: sqlite3.Connection) -> None:
    """Give the events written before version 2 their hash chain, in position order. They were
    written before batches were recorded: each counts as a batch of its own."""
    rows = conn.execute(
        "SELECT position, id, stream, stream_version, type, schema_version, data, metadata,"
        " recorded_at FROM events ORDER BY position"
    )
    previous = GENESIS
    updates: list[tuple[str, int, int]] = []
    for position, event_id, stream, version, event_type, schema_version, data, meta, at in rows:
        event = RecordedEvent(
            id=UUID(event_id),
            stream=stream,
            type=event_type,
            schema_version=schema_version,
            data=json.loads(data),
            metadata=json.loads(meta),
            stream_version=version,
            position=position,
            recorded_at=datetime.fromisoformat(at),
            batch_end=position,
        )
        previous = event_hash(previous, event)
        updates.append((previous, position, position))
    conn.executemany("UPDATE events SET hash = ?, batch_end = ? WHERE position = ?", updates)
