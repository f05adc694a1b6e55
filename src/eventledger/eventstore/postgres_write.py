"""The PostgreSQL side of the group commit (group_commit.py): the primitives of one write
transaction on a pooled connection, and the one place where psycopg errors become event store
errors (`translate`).

    begin               BEGIN; lock the counter row (head and its hash); read the stored ids
                        and the stream versions                                 one message
    insert_and_commit   INSERT every row; advance the counter; COMMIT; NOTIFY  one message

Each round trip of a group is one simple-query message holding all its statements: one send
and one wait each. A psycopg pipeline sends, and waits on the event loop for, every statement
on its own: 13 sends and as many loop wake-ups a group. The statements are prepared once per
connection (`prepare`) and run by name (EXECUTE), their values written into the message as
literals (`_literal`): the server parses and plans them once, not once a group.

A failure before COMMIT was sent leaves nothing written (StoreUnavailable, or InsertRefused
for rows PostgreSQL refused); a failure once it was sent is StoreOutcomeUnknown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, MutableSet, Sequence
from contextlib import asynccontextmanager
from typing import Any, LiteralString
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
from eventledger.eventstore.postgres_listener import CHANNEL, forget_notice, notify_statement
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
_KEYS = "SELECT account_id, key_id FROM personal_data_keys WHERE account_id = ANY({}::text[])"

_ADVANCE_HEAD = "UPDATE event_position SET last = $1, hash = $2 WHERE id = 1"

# Lists travel as one text each, split by the server: psycopg adapting a Python list of a
# thousand UUIDs or rows costs more than PostgreSQL storing them (50 us an event for the INSERT
# as 11 arrays, 22 us as one JSON document, measured). Ids and stream names hold no comma
# (records.STREAM_NAME), so a comma separates them.
_STORED_BY_ID = (
    "SELECT id, stream, stream_version, position FROM events"
    " WHERE id = ANY(string_to_array($1, ',')::uuid[])"
)

# One index seek per stream, whatever its length.
_STREAM_VERSIONS = (
    "SELECT s, (SELECT max(stream_version) FROM events WHERE stream = s)"
    " FROM unnest(string_to_array($1, ',')) AS s"
)

# The rows as one JSON array of arrays, one per row, its items in the order of the columns;
# data and metadata are JSON objects inside it, stored as they are parsed.
_INSERT = """
    INSERT INTO events (position, id, stream, stream_version, type, schema_version, data,
                        metadata, recorded_at, hash, batch_end)
    SELECT (e->>0)::bigint, (e->>1)::uuid, e->>2, (e->>3)::integer, e->>4, (e->>5)::integer,
           e->6, e->7, (e->>8)::timestamptz, e->>9, (e->>10)::bigint
    FROM jsonb_array_elements($1) AS e
"""


# For the group's transaction: each statement planned once per connection. PostgreSQL plans
# a prepared statement for its values until a generic plan looks no dearer; for the ids and
# the stream versions it never does (it counts a constant array's items, a parameter's it
# guesses at 10), so they were planned on every group. Their generic plans are the plans
# for the values (EXPLAIN, 240,000 events in 30,000 streams): the id index probed once per
# id, the (stream, stream_version) index seeked backwards once per stream.
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"


def _prepared(schema: str) -> dict[str, str]:
    """The PREPARE of each statement a group runs, by name."""
    return {
        name: f"PREPARE {name}{types} AS {statement}"
        for name, types, statement in (
            ("eventledger_lock_head", "", _LOCK_HEAD),
            ("eventledger_stored", "(text)", _STORED_BY_ID),
            ("eventledger_versions", "(text)", _STREAM_VERSIONS),
            ("eventledger_insert", "(jsonb)", _INSERT),
            ("eventledger_advance_head", "(bigint, text)", _ADVANCE_HEAD),
            ("eventledger_notify", "", notify_statement(schema)),
        )
    }


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
        self,
        conn: Connection,
        schema: str,
        sending: Callable[[int], None] | None = None,
        prepared: MutableSet[Connection] | None = None,
    ) -> None:
        self._conn = conn
        self._schema = schema
        # Told the head a COMMIT is about to make, before it is sent (PostgresEventStore: a
        # forget heard from now on may follow it: recent.py).
        self._sending = sending
        # The connections whose session has our statements prepared (the store's, weakly).
        self._prepared = prepared if prepared is not None else set()

    def usable(self) -> bool:
        return idle(self._conn)

    async def prepare(self) -> None:
        """Prepare the group's statements in this connection's session, once: those it lacks
        (a PREPARE outlives a failed transaction, so the server is asked)."""
        if self._conn in self._prepared:
            return
        statements = _prepared(self._schema)
        async with translating():
            cur = await self._conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", [list(statements)]
            )
            have = {name for (name,) in await cur.fetchall()}
            if missing := [s for name, s in statements.items() if name not in have]:
                await _send(self._conn, missing)
        self._prepared.add(self._conn)

    async def begin(
        self, ids: Sequence[str], streams: Sequence[str], accounts: Sequence[str] = ()
    ) -> Snapshot:
        statements = [
            "BEGIN",
            _GENERIC_PLANS,
            "EXECUTE eventledger_lock_head",  # first: see _LOCK_HEAD
            f"EXECUTE eventledger_stored({_literal(','.join(ids))})",
            f"EXECUTE eventledger_versions({_literal(','.join(streams))})",
            'SAVEPOINT "group"',
        ]
        if accounts:  # the key ids of the accounts it seals for (keys.py)
            statements.insert(5, _KEYS.format(_array(accounts)))
        cur = await self._send_prepared(statements)
        async with translating():
            cur.nextset()  # BEGIN
            cur.nextset()  # SET LOCAL
            head_row = await cur.fetchone()
            assert head_row is not None
            cur.nextset()
            stored = {
                row[0]: StoredPlace(row[0], row[1], row[2], row[3]) for row in await cur.fetchall()
            }
            cur.nextset()
            versions = {s: v for s, v in await cur.fetchall() if v}
            keys: dict[str, str] = {}
            if accounts:
                cur.nextset()
                keys = dict(await cur.fetchall())
        return Snapshot(int(head_row[0]), head_row[1], head_row[2], stored, versions, keys)

    async def insert(self, rows: Sequence[Row]) -> None:
        try:
            if len(rows) >= COPY_ROWS:
                await _copy(self._conn, rows)
            else:
                await _send(self._conn, [_execute_insert(rows)])
        except (psycopg.DataError, pg_errors.IntegrityError) as exc:
            raise InsertRefused(translate(exc, event_data=True)) from exc
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def insert_and_commit(self, rows: Sequence[Row], head: int, head_hash: str) -> None:
        if len(rows) >= COPY_ROWS:  # a bulk group: COPY, then the commit's round trip
            await self.insert(rows)
            await self._commit(head, head_hash, ())
            return
        # One round trip: INSERT, counter, COMMIT, NOTIFY.
        await self._commit(head, head_hash, rows)

    async def commit(self, head: int, head_hash: str) -> None:
        await self._commit(head, head_hash, ())

    async def _commit(self, head: int, head_hash: str, rows: Sequence[Row]) -> None:
        conn = self._conn
        statements = [
            f"EXECUTE eventledger_advance_head({int(head)}, {_literal(head_hash)})",
            "COMMIT",
            # After the COMMIT, in its own transaction: see notify_statement.
            "EXECUTE eventledger_notify",
        ]
        if rows:
            statements.insert(0, _execute_insert(rows))
        if self._sending is not None:
            self._sending(head)
        try:
            await _send_commit(conn, statements)
        except psycopg.Error as exc:
            self._prepared.discard(conn)  # asked again: a session may have lost them
            if _in_failed_transaction(conn):
                # A statement before COMMIT failed, so the server skipped the COMMIT.
                if rows and isinstance(exc, psycopg.DataError | pg_errors.IntegrityError):
                    raise InsertRefused(translate(exc, event_data=True)) from exc
                raise translate(exc) from exc
            # The COMMIT was sent: it may have taken effect (or the NOTIFY after it failed).
            raise StoreOutcomeUnknown(
                f"the commit failed, the append may or may not be stored: {exc}"
            ) from exc

    async def _send_prepared(self, statements: Sequence[str]) -> psycopg.AsyncCursor[Any]:
        """Send the first message of a transaction, which runs prepared statements."""
        for attempt in range(2):
            await self.prepare()
            try:
                return await _send(self._conn, statements)
            except psycopg.Error as exc:
                self._prepared.discard(self._conn)  # asked again before the next group
                if attempt or not isinstance(exc, pg_errors.InvalidSqlStatementName):
                    raise translate(exc) from exc
            # The session lost them (DISCARD ALL, DEALLOCATE ALL): nothing ran but BEGIN.
            await self.rollback()
        raise AssertionError("unreachable")

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


async def _send(conn: Connection, statements: Sequence[str]) -> psycopg.AsyncCursor[Any]:
    """Run `statements` as one simple-query message: one send, one wait for all the results
    (the cursor is on the first). The server runs them in order and skips the rest after
    one fails; the error is raised here. Never prepared by psycopg: each message differs."""
    return await conn.execute(";".join(statements).encode(), prepare=False)


def _execute_insert(rows: Sequence[Row]) -> str:
    return f"EXECUTE eventledger_insert({_literal(_rows_json(rows))})"


async def _send_commit(conn: Connection, statements: Sequence[str]) -> None:
    """The message that holds the COMMIT (one place, so that the tests can make it fail)."""
    await _send(conn, statements)


def _literal(text: str) -> str:
    """`text` as an SQL string constant. In the E'' form only a backslash and a quote are
    special, whatever `standard_conforming_strings` says; our texts hold no NUL."""
    return "E'" + text.replace(_BACKSLASH, _ESCAPED).replace("'", "''") + "'"


def _array(texts: Sequence[str]) -> str:
    return "ARRAY[" + ",".join(map(_literal, texts)) + "]" if texts else "'{}'"


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


def _rows_json(rows: Sequence[Row]) -> str:
    """The rows as the JSON array _INSERT reads. Only data and metadata (already JSON text,
    codec.json_text) and stream names and types (records.STREAM_NAME, EVENT_TYPE: no character
    that JSON escapes) are written in; the rest are numbers, ids, times and hex."""
    return (
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
    )


def _in_failed_transaction(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.INERROR


def idle(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
