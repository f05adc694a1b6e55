"""The PostgreSQL side of the group commit (group_commit.py): the primitives of one write
transaction on a pooled connection, and the one place where psycopg errors become event store
errors (`translate`).

    begin               BEGIN; lock the counter row (head and its hash); read the stored ids
                        and the stream versions                                 one round trip
    insert_and_commit   INSERT every row; advance the counter; COMMIT; NOTIFY  one round trip

A failure before COMMIT was sent leaves nothing written (StoreUnavailable, or InsertRefused
for rows PostgreSQL refused); a failure once it was sent is StoreOutcomeUnknown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import LiteralString
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg_pool import PoolClosed, PoolTimeout

from eventledger.eventstore.errors import (
    DuplicateEventId,
    EventStoreError,
    InvalidAppend,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from eventledger.eventstore.group_commit import InsertRefused
from eventledger.eventstore.keys import KeyWork
from eventledger.eventstore.planning import Row, Snapshot, StoredPlace
from eventledger.eventstore.postgres_listener import CHANNEL, forget_notice, send_notify
from eventledger.eventstore.postgres_schema import Connection

logger = logging.getLogger(__name__)

# -- statements --------------------------------------------------------------------------

# Why a counter row and not a sequence: a sequence hands out numbers when a row is inserted,
# but the row becomes visible when its transaction commits. Transaction A can take position 10,
# transaction B position 11, and B commit first: a reader following `position > last` sees 11,
# moves on, and never sees 10. Here every append transaction locks the single row of
# `event_position` first, and holds the lock until COMMIT. A second writer waits at this
# SELECT until the first has committed, then reads the committed head: transactions that take
# positions commit in position order, and positions have no gaps. Because the lock comes
# before every other read, what the group reads next (stored ids, stream versions) cannot
# change before it commits: the planning in Python is exact, with no race to retry. The head's
# hash is kept in the same row, so the hash chain continues from the committed head with no
# extra round trip, and no other writer can chain from it before we commit. The time is read
# under the lock too, so `recorded_at` never goes backwards along the log.
_LOCK_HEAD = "SELECT last, hash, clock_timestamp() FROM event_position WHERE id = 1 FOR UPDATE"
_KEYS = "SELECT account_id, key_id FROM personal_data_keys WHERE account_id = ANY(%s::text[])"

_ADVANCE_HEAD = "UPDATE event_position SET last = %s, hash = %s WHERE id = 1"

# Lists travel as one text parameter each, split by the server: psycopg adapting a Python list
# of a thousand UUIDs or rows costs more than PostgreSQL storing them (50 us an event for the
# INSERT as 11 arrays, 22 us as one JSON document, measured). Ids and stream names hold no
# comma (records.STREAM_NAME), so a comma separates them.
_STORED_BY_ID = (
    "SELECT id, stream, stream_version, position FROM events"
    " WHERE id = ANY(string_to_array(%s, ',')::uuid[])"
)

# One index seek per stream, whatever its length.
_STREAM_VERSIONS = (
    "SELECT s, (SELECT max(stream_version) FROM events WHERE stream = s)"
    " FROM unnest(string_to_array(%s, ',')) AS s"
)

# The rows as one JSON array of arrays, one per row, its items in the order of the columns;
# data and metadata are JSON objects inside it, stored as they are parsed.
_INSERT = """
    INSERT INTO events (position, id, stream, stream_version, type, schema_version, data,
                        metadata, recorded_at, hash, batch_end)
    SELECT (e->>0)::bigint, (e->>1)::uuid, e->>2, (e->>3)::integer, e->>4, (e->>5)::integer,
           e->6, e->7, (e->>8)::timestamptz, e->>9, (e->>10)::bigint
    FROM jsonb_array_elements(%s::jsonb) AS e
"""

# Groups of this many rows or more are written by COPY: PostgreSQL spends less CPU on them than
# on the JSON array (9.8-10.5 vs 11.5-12.3 µs a row of server CPU, 60 x 1,000 rows, measured),
# for one more round trip (COPY cannot run in a pipeline).
COPY_ROWS = 200
_COPY = (
    "COPY events (position, id, stream, stream_version, type, schema_version, data, metadata,"
    " recorded_at, hash, batch_end) FROM STDIN"
)
_BACKSLASH, _ESCAPED = "\\", "\\\\"


# -- errors --------------------------------------------------------------------------------


def translate(exc: Exception, *, event_data: bool = False) -> EventStoreError:
    """The one place where driver errors become event store errors. `event_data` says that the
    statement that failed stored one request's events (so bad data is that request's fault)."""
    if isinstance(exc, pg_errors.UniqueViolation):
        if exc.diag.constraint_name == "events_id_unique":
            match = re.search(r"\(id\)=\(([0-9a-f-]{36})\)", exc.diag.message_detail or "")
            return DuplicateEventId(UUID(match.group(1)) if match else UUID(int=0))
        return StoreUnavailable("a concurrent append took the same place; retry")
    if event_data and isinstance(exc, psycopg.DataError | pg_errors.IntegrityError):
        return InvalidAppend(f"PostgreSQL refused the event: {exc.diag.message_primary or exc}")
    if isinstance(exc, PoolClosed):
        return StoreUnavailable("the store is closed")
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection available: {exc}")
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreUnavailable("PostgreSQL lock timeout: the store is congested; retry")
    if isinstance(exc, pg_errors.QueryCanceled):
        return StoreUnavailable("PostgreSQL statement timeout; retry")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"PostgreSQL is unavailable: {exc}")
    return StoreUnavailable(f"PostgreSQL error: {exc}")


@asynccontextmanager
async def translating() -> AsyncIterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


# -- the writer's side of the group commit ---------------------------------------------------


class Session:
    """The primitives the group-commit engine writes with (group_commit.Database), on one
    pooled connection."""

    def __init__(
        self, conn: Connection, schema: str, sending: Callable[[int], None] | None = None
    ) -> None:
        self._conn = conn
        self._schema = schema
        # Told the head a COMMIT is about to make, before it is sent (PostgresEventStore: a
        # forget heard from now on may follow it: recent.py).
        self._sending = sending

    def usable(self) -> bool:
        return idle(self._conn)

    async def begin(
        self, ids: Sequence[str], streams: Sequence[str], accounts: Sequence[str] = ()
    ) -> Snapshot:
        conn = self._conn
        async with translating():
            # One round trip: leaving the pipeline sends its only Sync and waits for every
            # result (an explicit `sync()` inside the block would cost a second round trip).
            async with conn.pipeline():
                await conn.execute("BEGIN")
                head_cur = await conn.execute(_LOCK_HEAD)  # first: see _LOCK_HEAD
                stored_cur = await conn.execute(_STORED_BY_ID, [",".join(ids)])
                versions_cur = await conn.execute(_STREAM_VERSIONS, [",".join(streams)])
                # In the same round trip: the key ids of the accounts it seals for (keys.py).
                keys_cur = await conn.execute(_KEYS, [list(accounts)]) if accounts else None
                await conn.execute('SAVEPOINT "group"')
            head_row = await head_cur.fetchone()
            assert head_row is not None
            stored = {
                row[0]: StoredPlace(row[0], row[1], row[2], row[3])
                for row in await stored_cur.fetchall()
            }
            versions = {s: v for s, v in await versions_cur.fetchall() if v}
            keys: dict[str, str] = dict(await keys_cur.fetchall()) if keys_cur else {}
        return Snapshot(int(head_row[0]), head_row[1], head_row[2], stored, versions, keys)

    async def insert(self, rows: Sequence[Row]) -> None:
        try:
            if len(rows) >= COPY_ROWS:
                await _copy(self._conn, rows)
            else:
                await self._conn.execute(_INSERT, _insert_params(rows))
        except (psycopg.DataError, pg_errors.IntegrityError) as exc:
            raise InsertRefused(translate(exc, event_data=True)) from exc
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def insert_and_commit(self, rows: Sequence[Row], head: int, head_hash: str) -> None:
        if len(rows) >= COPY_ROWS:  # a bulk group: COPY, then the commit's round trip
            await self.insert(rows)
            await self._commit(head, head_hash, ())
            return
        # One round trip: INSERT, counter, COMMIT, NOTIFY, then the pipeline's Sync.
        await self._commit(head, head_hash, rows)

    async def commit(self, head: int, head_hash: str) -> None:
        await self._commit(head, head_hash, ())

    async def _commit(self, head: int, head_hash: str, rows: Sequence[Row]) -> None:
        conn = self._conn
        if self._sending is not None:
            self._sending(head)
        try:
            async with conn.pipeline():
                if rows:
                    await conn.execute(_INSERT, _insert_params(rows))
                await conn.execute(_ADVANCE_HEAD, [head, head_hash])
                await _run_commit(conn)
                await send_notify(conn, self._schema)
        except psycopg.Error as exc:
            if _in_failed_transaction(conn):
                # A statement before COMMIT failed, so the pipeline skipped the COMMIT.
                if rows and isinstance(exc, psycopg.DataError | pg_errors.IntegrityError):
                    raise InsertRefused(translate(exc, event_data=True)) from exc
                raise translate(exc) from exc
            # The COMMIT was sent: it may have taken effect (or the NOTIFY after it failed).
            raise StoreOutcomeUnknown(
                f"the commit failed, the append may or may not be stored: {exc}"
            ) from exc

    async def apply_keys(self, work: KeyWork) -> None:
        async with translating():
            if work.create:
                async with self._conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO personal_data_keys (account_id, key_id, secret)"
                        " VALUES (%s, %s, %s)",
                        [(a, k.key_id, k.secret) for a, k in work.create.items()],
                    )
            if work.erase:
                await self._conn.execute(
                    "DELETE FROM personal_data_keys WHERE account_id = ANY(%s::text[])",
                    [list(work.erase)],
                )
                # In the transaction: delivered to every instance's listener once it commits,
                # in commit order (postgres_listener.py: their recent pages forget the account).
                for account in work.erase:
                    notice = forget_notice(self._schema, work.notice, account)
                    await self._conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, notice])

    async def savepoint(self, name: str) -> None:
        async with translating():
            await self._conn.execute(f'SAVEPOINT "{_savepoint(name)}"')

    async def release(self, name: str) -> None:
        async with translating():
            await self._conn.execute(f'RELEASE SAVEPOINT "{_savepoint(name)}"')

    async def rollback_to(self, name: str) -> None:
        async with translating():
            await self._conn.execute(f'ROLLBACK TO SAVEPOINT "{_savepoint(name)}"')

    async def rollback(self) -> None:
        """Roll back whatever a group left open, so the connection can serve the next."""
        conn = self._conn
        if not conn.closed and not idle(conn):
            try:
                await conn.execute("ROLLBACK")
            except psycopg.Error as exc:  # the pool discards a connection left in a transaction
                logger.info("rollback after a failed group failed: %s", exc)


async def _run_commit(conn: Connection) -> None:
    """COMMIT (one place, so that the tests can make it fail)."""
    await conn.execute("COMMIT")


def _savepoint(name: str) -> LiteralString:
    if name == "group":
        return "group"
    if name == "request":
        return "request"
    raise ValueError(f"unknown savepoint {name!r}")


async def _copy(conn: Connection, rows: Sequence[Row]) -> None:
    """The rows by COPY, in its text format: backslashes doubled (JSON escapes), the only
    character of our texts COPY reads specially (no text holds a tab, a newline or NUL:
    JSON escapes them, stream names and types cannot have them, codec.check_text)."""
    text = "".join(
        [
            f"{r.position}\t{r.id_text}\t{r.stream}\t{r.stream_version}\t{r.type}\t"
            f"{r.schema_version}\t{r.data.replace(_BACKSLASH, _ESCAPED)}\t"
            f"{r.metadata.replace(_BACKSLASH, _ESCAPED)}\t{r.recorded_at}\t{r.hash}\t"
            f"{r.batch_end}\n"
            for r in rows
        ]
    )
    async with conn.cursor() as cur, cur.copy(_COPY) as copy:
        await copy.write(text)


def _insert_params(rows: Sequence[Row]) -> list[str]:
    """The rows as the JSON array _INSERT reads. Only data and metadata (already JSON text,
    codec.json_text) and stream names and types (records.STREAM_NAME, EVENT_TYPE: no character
    that JSON escapes) are written in; the rest are numbers, ids, times and hex."""
    return [
        "["
        + ",".join(
            [
                f'[{r.position},"{r.id_text}","{r.stream}",{r.stream_version},"{r.type}",'
                f'{r.schema_version},{r.data},{r.metadata},"{r.recorded_at}","{r.hash}",'
                f"{r.batch_end}]"
                for r in rows
            ]
        )
        + "]"
    ]


def _in_failed_transaction(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.INERROR


def idle(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
