"""A bounded table of snapshots in a SQLite file, for the services that keep snapshots of their
own folds (the transaction service's account states, the stream guard's account facts).

One row per key: the stream version it holds, the id of the event at that version, the
fingerprint of the code that folded it, the encoded payload and when it was written. What the
payload means, how it is decoded and when a row is trusted is the caller's business; this is
only the file. Calls run in a worker thread, one at a time; past `max_rows` keys the least
recently written rows go.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventledger.domain.events import EVENT_TYPES
from eventledger.domain.upcasters import UPCASTERS

Row = tuple[int, str, str, str]  # version, event id, fingerprint, payload


def code_fingerprint(kind: str, code_version: int) -> str:
    """What a snapshot was folded by: the folding code's version, every event schema and the
    upcasters. A snapshot whose fingerprint differs from the running code's is ignored."""
    schemas = ",".join(f"{t}:{c.SCHEMA_VERSION}" for t, c in sorted(EVENT_TYPES.items()))
    upcasters = ",".join(f"{t}:{v}" for t, v, _ in UPCASTERS)
    return f"{kind}-{code_version};{schemas};{upcasters}"


class SnapshotFile:
    """Snapshot rows in table `table` of a SQLite file; the payload column is `payload`.
    Both names are the caller's constants, never input."""

    def __init__(self, path: Path, *, table: str, payload: str, max_rows: int) -> None:
        self._path = path
        self._table = table
        self._payload = payload
        self._max_rows = max_rows
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (account_id TEXT PRIMARY KEY,"
                " version INTEGER NOT NULL, event_id TEXT NOT NULL, fingerprint TEXT NOT NULL,"
                f" {self._payload} TEXT NOT NULL, written_at REAL NOT NULL)"
            )
            self._conn = conn
        return self._conn

    async def _call(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self._lock:
            return await asyncio.to_thread(lambda: work(self._connection()))

    async def get(self, key: str) -> tuple[Any, ...] | None:
        """The row of `key` as stored (version, event id, fingerprint, payload), unchecked."""
        query = (
            f"SELECT version, event_id, fingerprint, {self._payload} FROM {self._table}"
            " WHERE account_id = ?"
        )
        row: tuple[Any, ...] | None = await self._call(
            lambda c: c.execute(query, (key,)).fetchone()
        )
        return row

    async def put(self, key: str, row: Row) -> None:
        values = (key, *row, time.time())
        table = self._table

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?)", values)
            # Bounded: past max_rows keys, the least recently written go.
            conn.execute(
                f"DELETE FROM {table} WHERE account_id IN (SELECT account_id FROM {table}"
                " ORDER BY written_at DESC LIMIT -1 OFFSET ?)",
                (self._max_rows,),
            )

        await self._call(write)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
