"""What `SqliteEventStore` does to a file before it uses it: connect with the settings that
make an acknowledged append durable (`synchronous = FULL`), switch the journal to WAL (readers
in any thread or process see exactly the transactions committed before their statement
started), and migrate the schema (`PRAGMA user_version` counts the migrations that ran; a file
of a newer version is refused).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

from eventledger.eventstore.errors import StoreUnavailable

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
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
