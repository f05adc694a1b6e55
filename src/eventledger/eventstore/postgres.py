"""The PostgreSQL event store: the production backend of the stream service.

    store = await PostgresEventStore.open("postgresql://eventledger@db:5432/ledger")

How an append travels (group commit, as in sqlite.py):

    caller ──▶ queue ──▶ writer task (one per store; keeps a pooled connection while busy)
                          BEGIN; lock the group's streams; read the stored ids and  } one
                            the stream versions                                      } round trip
                          decide each request in order: replay, expected version (Python)
                          INSERT every row (positions from the counter row); COMMIT; } one
                            NOTIFY                                                   } round trip
                          (the INSERT failed? ROLLBACK TO SAVEPOINT, then one SAVEPOINT
                           per request, so that the request at fault fails alone)
    caller ◀──future── answered only after COMMIT returned

Reads take a connection from the pool. `wait_for_events` is woken by a dedicated LISTEN
connection and reads the head from the table, the truth (postgres_listener.py).

Ordering
    Positions come from the one-row table `event_position`, not from a sequence: the row lock
    makes appends commit in position order, so a reader following `position > last` never
    skips an event. The reason is spelled out at `_INSERT`.

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
    and lock timeouts become `StoreUnavailable` (safe to retry with the same event ids).
    `open` also raises `UnsafeDurability` and `IncompatibleSchema` (see errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, LiteralString
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from eventledger.eventstore.codec import json_text
from eventledger.eventstore.errors import (
    DuplicateEventId,
    EventStoreError,
    IncompatibleSchema,
    InvalidAppend,
    StoreUnavailable,
    StreamNotFound,
    UnsafeDurability,
)
from eventledger.eventstore.postgres_listener import HeadWatch, listen, send_notify
from eventledger.eventstore.postgres_schema import (
    MIGRATIONS,
    Connection,
    advisory_lock_key,
    check_durability,
    check_schema_name,
    durability_problems,
    migrate,
)
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.store import (
    EventStore,
    check_expected_version,
    classify_batch_replay,
)
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

MAX_GROUP_REQUESTS = 256
MAX_GROUP_EVENTS = 5_000
MAX_GROUP_STREAMS = 256  # each stream is one advisory lock in the shared lock table
MAX_ATTEMPTS = 3  # an append that loses a race with another process is re-planned this often

Pool = AsyncConnectionPool[Connection]


# -- statements --------------------------------------------------------------------------

_COLUMNS = "id, stream, type, schema_version, data, metadata, stream_version, position, recorded_at"

# Takes every stream lock of a group in one sorted order, so two writers never deadlock.
_LOCK_STREAMS = "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k"

_STORED_BY_ID = "SELECT " + _COLUMNS + " FROM events WHERE id = ANY(%s::uuid[])"

_STREAM_VERSIONS = (
    "SELECT s, (SELECT max(stream_version) FROM events WHERE stream = s)"
    " FROM unnest(%s::text[]) AS s"
)

# Why a counter row and not a sequence: a sequence hands out numbers when a row is inserted,
# but the row becomes visible when its transaction commits. Transaction A can take position 10,
# transaction B position 11, and B commit first: a reader following `position > last` sees 11,
# moves on, and never sees 10. Here every append transaction updates the single row of
# `event_position`, whose row lock is held until COMMIT. A second transaction waits at this
# UPDATE until the first has committed, then continues from the committed value: transactions
# that take positions commit in position order, and positions have no gaps (a rolled-back
# transaction rolls its increment back too). The lock is taken in the same statement as the
# INSERT, the last statement before COMMIT, so the serialised section is as short as possible.
_INSERT = """
    WITH counter AS (
        UPDATE event_position SET last = last + %(n)s WHERE id = 1 RETURNING last
    )
    INSERT INTO events (position, id, stream, stream_version, type, schema_version, data, metadata)
    SELECT counter.last - %(n)s + e.ord, e.id, e.stream, e.stream_version, e.type,
           e.schema_version, e.data::jsonb, e.metadata::jsonb
    FROM counter,
         unnest(%(ids)s::uuid[], %(streams)s::text[], %(versions)s::integer[], %(types)s::text[],
                %(schema_versions)s::integer[], %(data)s::text[], %(metadata)s::text[])
         WITH ORDINALITY AS e(id, stream, stream_version, type, schema_version, data, metadata,
                              ord)
    RETURNING position
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


@dataclass(eq=False)
class _Request:
    """One caller's `append_batch`, waiting for the writer."""

    appends: Sequence[StreamAppend]
    payloads: list[list[tuple[str, str]]]  # (data, metadata) as JSON, per event, per append
    future: asyncio.Future[list[AppendResult]]
    attempts: int = 0

    @property
    def streams(self) -> set[str]:
        return {a.stream for a in self.appends}

    @property
    def size(self) -> int:
        return sum(len(a.events) for a in self.appends)


@dataclass(eq=False)
class _Write:
    """A request that passed its checks: its appends and the first stream version of each."""

    request: _Request
    firsts: list[int]
    positions: list[tuple[int, ...]] = field(default_factory=list)
    written: bool = False  # inserted (and committed, once the group's COMMIT returned)


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
        self._queue: deque[_Request] = deque()
        self._queue_ready = asyncio.Event()
        self._watch = HeadWatch()
        self._closed = False
        self.commits = 0  # group transactions that wrote events (observable group commit)
        self.appends_written = 0  # requests those transactions wrote
        self._writer = asyncio.create_task(self._write_loop(), name=f"eventledger-writer-{schema}")
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

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        payloads = [
            [
                (_jsonb_text(e.data, "data", e.id), _jsonb_text(e.metadata, "metadata", e.id))
                for e in a.events
            ]
            for a in appends
        ]
        request = _Request(appends, payloads, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queue_ready.set()
        return await request.future

    async def _write_loop(self) -> None:
        """The single writer: commits everything that is waiting as one group, again and again."""
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._queue_ready.clear()
                await self._queue_ready.wait()
                continue
            try:
                async with self._connection() as conn:
                    # Keep the connection while appends keep coming (and it is in a clean state).
                    while self._queue and _idle(conn):
                        if group := self._take_group():
                            await self._commit_group(conn, group)
            except psycopg.Error as exc:  # no connection within the pool timeout
                _fail(self._queue, _translate(exc))
                self._queue.clear()

    def _take_group(self) -> list[_Request]:
        group: list[_Request] = []
        ids: set[UUID] = set()
        streams: set[str] = set()
        events = 0
        while self._queue and len(group) < MAX_GROUP_REQUESTS:
            request = self._queue[0]
            if request.future.done():  # the caller gave up before we started
                self._queue.popleft()
                continue
            request_ids = {e.id for a in request.appends for e in a.events}
            if group and (
                events + request.size > MAX_GROUP_EVENTS
                or len(streams | request.streams) > MAX_GROUP_STREAMS
                # An id already in this group: plan it once the earlier one is committed.
                or ids & request_ids
            ):
                break
            self._queue.popleft()
            group.append(request)
            ids |= request_ids
            streams |= request.streams
            events += request.size
        return group

    async def _commit_group(self, conn: Connection, group: list[_Request]) -> None:
        """One transaction for the whole group; every caller is answered after the COMMIT."""
        outcomes: dict[_Request, list[AppendResult] | BaseException] = {}
        try:
            writes, retry = await self._transact(conn, group, outcomes)
        except psycopg.Error as exc:
            # Also a failed COMMIT: its outcome is unknown, so every request of the group fails
            # with StoreUnavailable, whose callers retry with the same ids (idempotent).
            _fail(group, _translate(exc))
            await _abandon(conn)
            return
        except asyncio.CancelledError:
            _fail(group, StoreUnavailable("the store closed during the append; retry it"))
            raise
        except Exception as exc:  # a bug: answer the callers, keep the writer alive
            logger.exception("event store writer failed")
            _fail(group, exc)
            await _abandon(conn)
            return
        written = [w for w in writes if w.written]
        if written:
            self.commits += 1
            self.appends_written += len(written)
            self._watch.advance(max(w.positions[-1][-1] for w in written))
        for write in written:
            outcomes[write.request] = _results(write)
        for request, outcome in outcomes.items():
            _answer(request, outcome)
        if retry:
            self._queue.extendleft(reversed(retry))
            self._queue_ready.set()

    async def _transact(
        self,
        conn: Connection,
        group: list[_Request],
        outcomes: dict[_Request, list[AppendResult] | BaseException],
    ) -> tuple[list[_Write], list[_Request]]:
        """Run the group's transaction up to its COMMIT. Failures and replays go to `outcomes`;
        returns the planned writes (`written` once inserted) and the requests to plan again."""
        streams = sorted({s for r in group for s in r.streams})
        ids = [e.id for r in group for a in r.appends for e in a.events]
        # One round trip: leaving the pipeline sends its only Sync and waits for every result
        # (an explicit `sync()` inside the block would cost a second, empty round trip).
        async with conn.pipeline():
            await conn.execute("BEGIN")
            await conn.execute(_LOCK_STREAMS, [self._stream_lock_keys(streams)])
            # Read after the locks (READ COMMITTED: each statement sees what was committed
            # when it started): no other writer can move these streams until we commit.
            stored_cur = await conn.execute(_STORED_BY_ID, [ids])
            versions_cur = await conn.execute(_STREAM_VERSIONS, [streams])
            await conn.execute("SAVEPOINT group_insert")
        stored = {row[0]: _record(row) for row in await stored_cur.fetchall()}
        versions = {s: v or 0 for s, v in await versions_cur.fetchall()}
        writes = _plan(group, stored, versions, outcomes)
        if not writes:
            await conn.execute("ROLLBACK")  # nothing to write: release the stream locks
            return writes, []
        try:
            # One round trip: INSERT, COMMIT, NOTIFY, then the pipeline's Sync. The positions
            # are read once it has returned, so no flush waits for the INSERT on its own.
            async with conn.pipeline():
                inserted = await self._insert(conn, writes, commit=True)
            await _set_positions(writes, inserted)
            return writes, []
        except (psycopg.DataError, pg_errors.IntegrityError):
            # The INSERT failed, so the pipeline skipped the COMMIT: find the request at fault.
            for write in writes:
                write.written = False
            await conn.execute("ROLLBACK TO SAVEPOINT group_insert")
        retry = await self._insert_one_by_one(conn, group, writes, outcomes)
        async with conn.pipeline():
            await conn.execute("COMMIT")
            await send_notify(conn, self._schema)
        return writes, retry

    async def _insert(
        self, conn: Connection, writes: Sequence[_Write], *, commit: bool = False
    ) -> psycopg.AsyncCursor[tuple[Any, ...]]:
        """Send the INSERT of the events of `writes` (positions taken from the counter, see
        `_INSERT`); with `commit`, also COMMIT and NOTIFY in the same pipeline. Returns the
        INSERT's cursor, for `_set_positions`."""
        columns: dict[str, list[Any]] = {
            k: [] for k in ("ids", "streams", "versions", "types", "schema_versions")
        }
        data: list[str] = []
        metadata: list[str] = []
        for write in writes:
            for append, first, payloads in zip(
                write.request.appends, write.firsts, write.request.payloads, strict=True
            ):
                for i, (event, (event_data, event_metadata)) in enumerate(
                    zip(append.events, payloads, strict=True)
                ):
                    columns["ids"].append(event.id)
                    columns["streams"].append(append.stream)
                    columns["versions"].append(first + i)
                    columns["types"].append(event.type)
                    columns["schema_versions"].append(event.schema_version)
                    data.append(event_data)
                    metadata.append(event_metadata)
        n = len(data)
        cur = await conn.execute(_INSERT, {"n": n, **columns, "data": data, "metadata": metadata})
        if commit:
            await conn.execute("COMMIT")
            await send_notify(conn, self._schema)
        return cur

    async def _insert_one_by_one(
        self,
        conn: Connection,
        group: list[_Request],
        writes: list[_Write],
        outcomes: dict[_Request, list[AppendResult] | BaseException],
    ) -> list[_Request]:
        """The group insert failed: insert each request in its own SAVEPOINT, so that the one at
        fault fails alone. Returns the requests to plan again in the next group: those that lost
        a race with another process, and those whose checks assumed a request that failed."""
        by_request = {w.request: w for w in writes}
        tainted: set[str] = set()  # streams whose planned versions no longer hold
        retry: list[_Request] = []
        for request in group:
            write = by_request.get(request)
            depends = write is not None or not isinstance(outcomes.get(request), DuplicateEventId)
            if depends and request.streams & tainted:
                outcomes.pop(request, None)
                tainted |= request.streams
                retry.append(request)
                continue
            if write is None:
                continue
            await conn.execute("SAVEPOINT one_insert")
            try:
                await _set_positions([write], await self._insert(conn, [write]))
            except (psycopg.DataError, pg_errors.IntegrityError) as exc:
                await conn.execute("ROLLBACK TO SAVEPOINT one_insert")
                write.written = False
                tainted |= request.streams
                request.attempts += 1
                if isinstance(exc, pg_errors.UniqueViolation) and request.attempts < MAX_ATTEMPTS:
                    retry.append(request)  # another process won a race: re-check next group
                else:
                    outcomes[request] = _translate(exc, event_data=True)
        return retry

    def _stream_lock_keys(self, streams: Iterable[str]) -> list[int]:
        return sorted(advisory_lock_key(self._schema, s) for s in streams)

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
        self._queue_ready.set()
        _, pending = await asyncio.wait({self._writer}, timeout=10.0)
        for task in (*pending, self._listener):
            task.cancel()
        await asyncio.gather(self._writer, self._listener, return_exceptions=True)
        _fail(list(self._queue), StoreUnavailable("the store is closed"))
        self._queue.clear()
        await self._pool.close()


# -- helpers -------------------------------------------------------------------------------


def _plan(
    group: list[_Request],
    stored: dict[UUID, RecordedEvent],
    versions: dict[str, int],
    outcomes: dict[_Request, list[AppendResult] | BaseException],
) -> list[_Write]:
    """Decide each request of a group in order, as if the earlier ones were already written
    (the same rules as memory.py). Failures and replays go to `outcomes`; the rest is returned."""
    pending = dict(versions)
    writes = []
    for request in group:
        try:
            replayed = classify_batch_replay(request.appends, stored)
            if replayed is not None:
                outcomes[request] = replayed
                continue
            firsts = []
            for append in request.appends:
                actual = pending.get(append.stream, 0)
                check_expected_version(append.stream, append.expected_version, actual)
                firsts.append(actual + 1)
        except EventStoreError as exc:
            outcomes[request] = exc
            continue
        for append, first in zip(request.appends, firsts, strict=True):
            pending[append.stream] = first + len(append.events) - 1
        writes.append(_Write(request, firsts))
    return writes


async def _set_positions(
    writes: Sequence[_Write], inserted: psycopg.AsyncCursor[tuple[Any, ...]]
) -> None:
    """Give each write its positions, from the RETURNING of its INSERT: it is inserted."""
    position = min(p for (p,) in await inserted.fetchall())
    for write in writes:
        write.positions = []
        for append in write.request.appends:
            count = len(append.events)
            write.positions.append(tuple(range(position, position + count)))
            position += count
        write.written = True


def _results(write: _Write) -> list[AppendResult]:
    return [
        AppendResult(a.stream, first, first + len(a.events) - 1, positions)
        for a, first, positions in zip(
            write.request.appends, write.firsts, write.positions, strict=True
        )
    ]


def _answer(request: _Request, outcome: list[AppendResult] | BaseException) -> None:
    if request.future.done():
        return
    if isinstance(outcome, BaseException):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)


def _fail(requests: Iterable[_Request], error: BaseException) -> None:
    for request in requests:
        _answer(request, error)


def _idle(conn: Connection) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


async def _abandon(conn: Connection) -> None:
    """Roll back whatever a failed group left open, so the connection can serve the next."""
    if not conn.closed and not _idle(conn):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            logger.info("rollback after a failed group failed: %s", exc)


def _record(row: Sequence[Any]) -> RecordedEvent:
    event_id, stream, type_, schema_version, data, metadata, version, position, at = row
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
    )


def _jsonb_text(value: Mapping[str, Any], what: str, event_id: UUID) -> str:
    """Event data as jsonb accepts it: JSON text (codec.json_text), and no NUL character."""
    text = json_text(value, what, event_id)
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise InvalidAppend(f"the {what} of event {event_id} contains NUL, which jsonb refuses")
    return text


# A \u0000 escape that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


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
