"""The reads of the SQLite event store as SQL: the statements (columns, head, stream version,
a page of the global log with its filters, the events of one transaction, personal data keys)
and the decoding of their rows into events. Each runs on a read-only connection given to it
(sqlite_threads.ReaderPool), in a worker thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any
from uuid import UUID

from eventledger.eventstore import pii
from eventledger.eventstore.errors import StreamNotFound
from eventledger.eventstore.keys import rows_to_keys
from eventledger.eventstore.pii import AccountKey
from eventledger.eventstore.recent import RecentEvent, StoredEnvelopes
from eventledger.eventstore.records import RecordedEvent
from eventledger.eventstore.sqlite_schema import TRANSACTION_ID
from eventledger.eventstore.store import ACCOUNT_STREAMS

MAX_INT = 2**63 - 1  # SQLite integers are signed 64-bit
COLUMNS = (
    "position, id, stream, stream_version, type, schema_version, data, metadata, recorded_at,"
    " hash, batch_end"
)
HEAD = "SELECT coalesce(max(position), 0) FROM events"
STREAM_VERSION = "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = ?"
# The expression's text is the index's (sqlite_schema.TRANSACTION_INDEX), so SQLite uses it;
# the stream range keeps to account streams (LIKE would be case-insensitive here).
BY_TRANSACTION = (
    f"SELECT {COLUMNS} FROM events WHERE {TRANSACTION_ID} = ? AND stream >= ? AND stream < ?"
    " ORDER BY position LIMIT ?"
)


def stream_events(
    conn: sqlite3.Connection, stream: str, from_version: int, limit: int | None
) -> list[RecordedEvent]:
    """The events of `stream` from `from_version` on (at most `limit`); StreamNotFound when
    it has none at all."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM events WHERE stream = ? AND stream_version >= ?"
        " ORDER BY stream_version LIMIT ?",
        (
            stream,
            min(from_version, MAX_INT),
            -1 if limit is None else min(limit, MAX_INT),
        ),
    ).fetchall()
    if not rows and not stream_exists(conn, stream):
        raise StreamNotFound(stream)
    return decode_rows(rows)


def log_entries(
    conn: sqlite3.Connection,
    sql: str,
    params: list[object],
    stored: StoredEnvelopes,
    upcast: Callable[[RecordedEvent], RecordedEvent],
) -> list[RecentEvent | RecordedEvent]:
    """The page of `log_query`'s `sql`, each event as its envelope text where `stored` can
    assemble it exactly, else decoded, opened and upcast."""
    entries: list[RecentEvent | RecordedEvent] = []
    for row in conn.execute(sql, params).fetchall():
        text = stored.text(row)
        if text is None:
            entries.append(decode_rows([row])[0])
        else:
            entries.append(RecentEvent(row[0], row[4], text))
    decoded = [e for e in entries if isinstance(e, RecordedEvent)]
    if not decoded:
        return entries
    # Personal data opened (or erased) before upcasting, as read_all does; its keys
    # read on this connection, in this thread: a live page of sealed events costs
    # one hop to the reader thread, not two.
    accounts = pii.accounts_to_open(decoded)
    keys = keys_on(conn, accounts) if accounts else {}
    opened = iter([upcast(e) for e in pii.reveal(decoded, keys)])
    return [next(opened) if isinstance(e, RecordedEvent) else e for e in entries]


def event_by_id(conn: sqlite3.Connection, event_id: UUID) -> RecordedEvent | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM events WHERE id = ?", (str(event_id),)).fetchone()
    return None if row is None else decode_rows([row])[0]


def transaction_events(
    conn: sqlite3.Connection, transaction_id: str, limit: int
) -> list[RecordedEvent]:
    rows = conn.execute(BY_TRANSACTION, (transaction_id, *ACCOUNT_STREAMS, limit))
    return decode_rows(rows.fetchall())


def keys_on(conn: sqlite3.Connection, accounts: Collection[str]) -> dict[str, AccountKey]:
    """The current personal data keys of these accounts (pii.py, keys.py)."""
    rows = conn.execute(
        "SELECT account_id, key_id, secret FROM personal_data_keys WHERE account_id IN"
        " (SELECT value FROM json_each(?))",
        (json.dumps(sorted(accounts)),),
    )
    return rows_to_keys(rows.fetchall())


def stream_exists(conn: sqlite3.Connection, stream: str) -> bool:
    return (
        scalar(conn, "SELECT count(*) FROM (SELECT 1 FROM events WHERE stream = ? LIMIT 1)", stream)
        > 0
    )


def scalar(conn: sqlite3.Connection, sql: str, *params: object) -> int:
    value: int = conn.execute(sql, params).fetchone()[0]
    return value


def decode_rows(rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
    """Rows of COLUMNS as events. A page is decoded in one loop: the events of one append
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


def log_query(
    after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
) -> tuple[str, list[object]]:
    """The SQL and parameters of a page of the global log (read_all's filters)."""
    after = min(after, MAX_INT)
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
            f"SELECT * FROM (SELECT {COLUMNS} FROM events WHERE type = ? AND position > ?"
            f"{prefix} ORDER BY position LIMIT ?)"
        )
        sql = " UNION ALL ".join([part] * len(types)) + " ORDER BY position LIMIT ?"
        params = []
        for event_type in types:
            params.extend((event_type, after, *prefix_params, limit))
        params.append(limit)
    else:
        sql = f"SELECT {COLUMNS} FROM events WHERE position > ?"
        params = [after]
        if types:
            sql += " AND type = ?"
            params.append(types[0])
        sql += f"{prefix} ORDER BY position LIMIT ?"
        params.extend((*prefix_params, limit))
    return sql, params
