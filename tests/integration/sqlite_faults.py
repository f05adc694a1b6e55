"""What the SQLite tests do to a store from the inside: its write connection, and the errors
SQLite raises when the disk fails."""

from __future__ import annotations

import sqlite3

from eventledger.eventstore.sqlite import SqliteEventStore


def io_error(name: str) -> sqlite3.OperationalError:
    """An error as SQLite raises it when the disk fails (`name`: its extended code)."""
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    return error


def writer_connection(store: SqliteEventStore) -> sqlite3.Connection:
    """The store's write connection (to be used only while the writer is idle)."""
    assert store._write_side is not None and store._write_side._conn is not None
    return store._write_side._conn
