"""The PostgreSQL event store: the production backend of the stream service.

    store = await PostgresEventStore.open("postgresql://eventledger@db:5432/ledger")

How an append travels (group commit, group_commit.py):

    caller ──▶ engine task (one per store; keeps a pooled connection while busy)
                BEGIN; lock the counter row, read the head, the stored ids }  one
                  and the stream versions                                   }  round trip
                plan each request in order (group_commit.Planner)
                INSERT every row; advance the counter; COMMIT; NOTIFY      }  one round trip
    caller ◀──future── answered only after COMMIT returned

Reads take a connection from the pool. `wait_for_events` is woken by a dedicated LISTEN
connection and reads the head from the table, the truth (postgres_listener.py).

Ordering
    Positions come from the one-row table `event_position`, not from a sequence: the row lock
    makes appends commit in position order, so a reader following `position > last` never
    skips an event. The reason is spelled out at `_LOCK_HEAD`.

Durability
    `open` refuses a server with `fsync` or `synchronous_commit` off (an acknowledged append
    could vanish in a crash) and raises `UnsafeDurability`, unless
    `allow_unsafe_durability=True` (postgres_schema.py). An append is acknowledged only after
    COMMIT returned.

Grants
    The first `open` creates the schema (versioned migrations in `schema_migrations`, under an
    advisory lock so that instances starting together do not race). Run it once as the owner
    of the schema; the stream service can then run as a role with only these rights:

        GRANT USAGE ON SCHEMA eventledger TO eventledger_stream;
        GRANT SELECT ON eventledger.schema_migrations TO eventledger_stream;
        GRANT SELECT, INSERT ON eventledger.events TO eventledger_stream;
        GRANT SELECT, UPDATE ON eventledger.event_position TO eventledger_stream;

Errors
    psycopg exceptions are translated in `_translate` and nowhere else: connection loss, pool
    and lock timeouts become `StoreUnavailable` (safe to retry with the same event ids); a
    failure once COMMIT was sent becomes `StoreOutcomeUnknown` (`_Session._commit`).
    `open` also raises `UnsafeDurability` and `IncompatibleSchema` (see errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any, LiteralString
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from eventledger.eventstore.errors import (
    DuplicateEventId,
    EventStoreError,
    IncompatibleSchema,
    InvalidAppend,
    StoreOutcomeUnknown,
    StoreUnavailable,
    StreamNotFound,
    UnsafeDurability,
)
from eventledger.eventstore.group_commit import (
    GroupCommit,
    InsertRefused,
    Request,
    Row,
    Snapshot,
    StoredPlace,
)
from eventledger.eventstore.postgres_listener import HeadWatch, listen, send_notify
from eventledger.eventstore.postgres_schema import (
    MIGRATIONS,
    Connection,
    check_durability,
    check_schema_name,
    durability_problems,
    migrate,
)
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry

# What other modules import from here; the schema's names are re-exported for them.
__all__ = [
    "MIGRATIONS",
    "IncompatibleSchema",
    "PostgresEventStore",
    "UnsafeDurability",
    "durability_problems",
]

logger = logging.getLogger(__name__)


Pool = AsyncConnectionPool[Connection]


# -- statements --------------------------------------------------------------------------

_COLUMNS = (
    "id, stream, type, schema_version, data, metadata, stream_version, position, recorded_at,"
    " hash, batch_end"
)

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

_ADVANCE_HEAD = "UPDATE event_position SET last = %s, hash = %s WHERE id = 1"

_STORED_BY_ID = "SELECT id, stream, stream_version, position FROM events WHERE id = ANY(%s::uuid[])"

_STREAM_VERSIONS = (
    "SELECT s, (SELECT max(stream_version) FROM events WHERE stream = s)"
    " FROM unnest(%s::text[]) AS s"
)

_INSERT = """
    INSERT INTO events (position, id, stream, stream_version, type, schema_version, data,
                        metadata, recorded_at, hash, batch_end)
    SELECT e.position, e.id, e.stream, e.stream_version, e.type, e.schema_version,
           e.data::jsonb, e.metadata::jsonb, e.recorded_at::timestamptz, e.hash, e.batch_end
    FROM unnest(%(positions)s::bigint[], %(ids)s::uuid[], %(streams)s::text[],
                %(versions)s::integer[], %(types)s::text[], %(schema_versions)s::integer[],
                %(data)s::text[], %(metadata)s::text[], %(recorded_at)s::text[],
                %(hashes)s::text[], %(batch_ends)s::bigint[])
         AS e(position, id, stream, stream_version, type, schema_version, data, metadata,
              recorded_at, hash, batch_end)
"""


# -- errors --------------------------------------------------------------------------------


def _translate(exc: Exception, *, event_data: bool = False) -> EventStoreError:
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
async def _translating() -> AsyncIterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise _translate(exc) from exc


# -- the store -------------------------------------------------------------------------------


class PostgresEventStore(EventStore):
    """The event store on PostgreSQL. Create it with `await PostgresEventStore.open(url)`."""

    def __init__(
        self,
        pool: Pool,
        *,
        conninfo: str,
        schema: str,
        upcasters: UpcasterRegistry | None = None,
        idle_check: _IdleCheck | None = None,
    ) -> None:
        super().__init__(upcasters=upcasters)
        self._pool = pool
        self._schema = schema
        self._idle_check = idle_check or _IdleCheck()
        self._watch = HeadWatch()
        self._closed = False
        self._engine = GroupCommit(self, asyncio.get_running_loop())
        self._writer = asyncio.create_task(self._engine.run(), name=f"eventledger-writer-{schema}")
        self._listener = asyncio.create_task(
            listen(conninfo, schema, self._watch), name=f"eventledger-listener-{schema}"
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str = "eventledger",
        upcasters: UpcasterRegistry | None = None,
        min_size: int = 1,
        max_size: int = 10,
        allow_unsafe_durability: bool = False,
        lock_timeout: str = "5s",
        statement_timeout: str = "30s",
        idle_in_transaction_session_timeout: str = "10s",
        application_name: str | None = None,
        pool_timeout: float = 3.0,
    ) -> PostgresEventStore:
        """Connect, check durability, migrate the schema, and start the writer and listener.
        Raises StoreUnavailable when the server cannot be reached."""
        check_schema_name(schema)
        conninfo = _conninfo(
            url,
            schema=schema,
            application_name=application_name,
            settings={
                "lock_timeout": lock_timeout,
                "statement_timeout": statement_timeout,
                "idle_in_transaction_session_timeout": idle_in_transaction_session_timeout,
            },
        )
        async with _translating():
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await check_durability(conn, allow_unsafe=allow_unsafe_durability)
                await migrate(conn, schema, MIGRATIONS)
        idle_check = _IdleCheck()
        pool: Pool = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            min_size=min_size,
            max_size=max_size,
            open=False,
            check=idle_check,
            timeout=pool_timeout,
            reconnect_timeout=60.0,
            reconnect_failed=_log_reconnect_failed,
            name=f"eventledger-{schema}",
        )
        try:
            async with _translating():
                await pool.open(wait=True, timeout=pool_timeout)
        except BaseException:
            await pool.close()
            raise
        return cls(
            pool, conninfo=conninfo, schema=schema, upcasters=upcasters, idle_check=idle_check
        )

    @asynccontextmanager
    async def _connection(self, wait: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection (waiting at most `wait` seconds for one), stamped when given
        back so that the pool's check knows it was just used."""
        async with self._pool.connection(wait) as conn:
            try:
                yield conn
            finally:
                self._idle_check.used(conn)

    # -- writing ---------------------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Group transactions that wrote events (observable group commit)."""
        return self._engine.commits

    @property
    def appends_written(self) -> int:
        """Requests those transactions wrote."""
        return self._engine.appends_written

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        request = Request.create(appends)
        self._engine.submit(request)
        return await request.future

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_Session]:
        """The engine's connection (group_commit.Backend), kept while appends keep coming."""
        try:
            async with self._connection() as conn:
                yield _Session(conn, self._schema)
        except psycopg.Error as exc:  # no connection within the pool timeout
            raise _translate(exc) from exc

    def committed(self, head: int) -> None:
        self._watch.advance(head)

    # -- reading ---------------------------------------------------------------------------

    async def _fetch(self, query: LiteralString, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with _translating():
            for attempt in range(2):
                async with self._connection() as conn:
                    try:
                        cur = await conn.execute(query, params)
                        return await cur.fetchall()
                    except psycopg.OperationalError:
                        if attempt or not conn.closed:
                            raise
                # The connection died under the query (restart, terminated backend): a read
                # is idempotent, so once more on a fresh connection.
        raise AssertionError("unreachable")

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        rows = []
        if limit is None or limit > 0:
            rows = await self._fetch(
                "SELECT " + _COLUMNS + " FROM events WHERE stream = %s AND stream_version >= %s"
                " ORDER BY stream_version LIMIT %s",
                [stream, from_version, limit],
            )
        if not rows and await self.stream_version(stream) == 0:
            raise StreamNotFound(stream)
        return [_record(row) for row in rows]

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        query: LiteralString = "SELECT " + _COLUMNS + " FROM events WHERE position > %s"
        params: list[Any] = [after]
        if types:
            query += " AND type = ANY(%s::text[])"
            params.append(list(types))
        if stream_prefix:
            query += " AND stream LIKE %s"
            params.append(_like_prefix(stream_prefix))
        query += " ORDER BY position LIMIT %s"
        params.append(limit)
        return [_record(row) for row in await self._fetch(query, params)]

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        rows = await self._fetch("SELECT " + _COLUMNS + " FROM events WHERE id = %s", [event_id])
        return _record(rows[0]) if rows else None

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = %s", [stream]
        )
        return int(rows[0][0])

    async def head_position(self) -> int:
        # The committed counter is the newest visible position (appends commit in its order).
        rows = await self._fetch("SELECT last FROM event_position WHERE id = 1", [])
        return int(rows[0][0])

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        return await self._watch.wait_for_events(after, timeout, read_head=self.head_position)

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            async with (
                asyncio.timeout(3.0),
                _translating(),
                self._connection(wait=2.0) as conn,
            ):
                await conn.execute("SELECT 1")
        except TimeoutError:
            raise StoreUnavailable("PostgreSQL did not answer within 3 s") from None

    async def close(self) -> None:
        """Finish the queued appends (for up to 10 s), then close the listener and the pool."""
        if self._closed:
            return
        self._closed = True
        self._engine.close()
        _, pending = await asyncio.wait({self._writer}, timeout=10.0)
        for task in (*pending, self._listener):
            task.cancel()
        await asyncio.gather(self._writer, self._listener, return_exceptions=True)
        self._engine.fail_queued(StoreUnavailable("the store is closed"))
        await self._pool.close()


# -- the writer's side of the group commit ---------------------------------------------------


class _Session:
    """The primitives the group-commit engine writes with (group_commit.Database), on one
    pooled connection."""

    def __init__(self, conn: Connection, schema: str) -> None:
        self._conn = conn
        self._schema = schema

    def usable(self) -> bool:
        return _idle(self._conn)

    async def begin(self, ids: Sequence[UUID], streams: Sequence[str]) -> Snapshot:
        conn = self._conn
        async with _translating():
            # One round trip: leaving the pipeline sends its only Sync and waits for every
            # result (an explicit `sync()` inside the block would cost a second round trip).
            async with conn.pipeline():
                await conn.execute("BEGIN")
                head_cur = await conn.execute(_LOCK_HEAD)  # first: see _LOCK_HEAD
                stored_cur = await conn.execute(_STORED_BY_ID, [list(ids)])
                versions_cur = await conn.execute(_STREAM_VERSIONS, [list(streams)])
                await conn.execute('SAVEPOINT "group"')
            head_row = await head_cur.fetchone()
            assert head_row is not None
            stored = {
                row[0]: StoredPlace(row[0], row[1], row[2], row[3])
                for row in await stored_cur.fetchall()
            }
            versions = {s: v for s, v in await versions_cur.fetchall() if v}
        return Snapshot(int(head_row[0]), head_row[1], head_row[2], stored, versions)

    async def insert(self, rows: Sequence[Row]) -> None:
        try:
            await self._conn.execute(_INSERT, _insert_params(rows))
        except (psycopg.DataError, pg_errors.IntegrityError) as exc:
            raise InsertRefused(_translate(exc, event_data=True)) from exc
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    async def insert_and_commit(self, rows: Sequence[Row], head: int, head_hash: str) -> None:
        # One round trip: INSERT, counter, COMMIT, NOTIFY, then the pipeline's Sync.
        await self._commit(head, head_hash, rows)

    async def commit(self, head: int, head_hash: str) -> None:
        await self._commit(head, head_hash, ())

    async def _commit(self, head: int, head_hash: str, rows: Sequence[Row]) -> None:
        conn = self._conn
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
                    raise InsertRefused(_translate(exc, event_data=True)) from exc
                raise _translate(exc) from exc
            # The COMMIT was sent: it may have taken effect (or the NOTIFY after it failed).
            raise StoreOutcomeUnknown(
                f"the commit failed, the append may or may not be stored: {exc}"
            ) from exc

    async def savepoint(self, name: str) -> None:
        async with _translating():
            await self._conn.execute(f'SAVEPOINT "{_savepoint(name)}"')

    async def release(self, name: str) -> None:
        async with _translating():
            await self._conn.execute(f'RELEASE SAVEPOINT "{_savepoint(name)}"')

    async def rollback_to(self, name: str) -> None:
        async with _translating():
            await self._conn.execute(f'ROLLBACK TO SAVEPOINT "{_savepoint(name)}"')

    async def rollback(self) -> None:
        """Roll back whatever a group left open, so the connection can serve the next."""
        conn = self._conn
        if not conn.closed and not _idle(conn):
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


def _insert_params(rows: Sequence[Row]) -> dict[str, list[Any]]:
    return {
        "positions": [r.position for r in rows],
        "ids": [r.id for r in rows],
        "streams": [r.stream for r in rows],
        "versions": [r.stream_version for r in rows],
        "types": [r.type for r in rows],
        "schema_versions": [r.schema_version for r in rows],
        "data": [r.data for r in rows],
        "metadata": [r.metadata for r in rows],
        "recorded_at": [r.recorded_at for r in rows],
        "hashes": [r.hash for r in rows],
        "batch_ends": [r.batch_end for r in rows],
    }


def _in_failed_transaction(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.INERROR


# -- helpers -------------------------------------------------------------------------------


def _idle(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


def _record(row: Sequence[Any]) -> RecordedEvent:
    event_id, stream, type_, schema_version, data, metadata, version, position, at = row[:9]
    return RecordedEvent(
        id=event_id,
        stream=stream,
        type=type_,
        schema_version=schema_version,
        data=data,
        metadata=metadata,
        stream_version=version,
        position=position,
        recorded_at=at.astimezone(UTC),
        hash=row[9],
        batch_end=row[10],
    )


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _conninfo(
    url: str, *, schema: str, application_name: str | None, settings: dict[str, str]
) -> str:
    """The URL plus our session settings, passed at connection start (no extra round trip)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(f"invalid PostgreSQL URL: {exc}") from None
    options = [str(params.get("options") or "")]
    for name, value in {"search_path": schema, "TimeZone": "UTC", **settings}.items():
        escaped = str(value).replace("\\", "\\\\").replace(" ", "\\ ")
        options.append(f"-c {name}={escaped}")
    params["options"] = " ".join(o for o in options if o)
    params.setdefault("connect_timeout", 3)
    params["client_encoding"] = "UTF8"
    if application_name or not params.get("application_name"):
        params["application_name"] = application_name or "eventledger"
    return make_conninfo("", **params)


class _IdleCheck:
    """The pool's check before it hands out a connection: a connection broken by a server
    restart or pg_terminate_backend is replaced then, not discovered by a failing append.
    Only connections that sat idle for a while pay the round trip of a real check; one used a
    moment ago is known to work (and a read on it that fails is retried, see `_fetch`)."""

    IDLE = 1.0  # seconds

    def __init__(self) -> None:
        self._last_used: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()

    def used(self, conn: Connection) -> None:
        self._last_used[conn] = time.monotonic()

    async def __call__(self, conn: Connection) -> None:
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > self.IDLE:
            await AsyncConnectionPool.check_connection(conn)


def _log_reconnect_failed(pool: Pool) -> None:
    logger.warning("pool %s could not reconnect to PostgreSQL; it keeps trying", pool.name)
