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
    skips an event. The reason is spelled out at `postgres_write._LOCK_HEAD`.

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
        GRANT SELECT, INSERT, DELETE ON eventledger.personal_data_keys TO eventledger_stream;
        -- instances started with --advertise-url (the writer lease, postgres_lease.py):
        GRANT SELECT, INSERT, UPDATE ON eventledger.stream_writer TO eventledger_stream;

Errors
    psycopg exceptions are translated in `_translate` and nowhere else: connection loss, pool
    and lock timeouts become `StoreUnavailable` (safe to retry with the same event ids); a
    failure once COMMIT was sent becomes `StoreOutcomeUnknown` (`Session._commit`).
    `open` also raises `UnsafeDurability` and `IncompatibleSchema` (see errors.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from eventledger.eventstore.codec import format_time
from eventledger.eventstore.errors import (
    EventStoreError,
    IncompatibleSchema,
    StoreUnavailable,
    StreamNotFound,
    UnsafeDurability,
)
from eventledger.eventstore.group_commit import (
    GroupCommit,
    Request,
)
from eventledger.eventstore.keys import rows_to_keys
from eventledger.eventstore.pii import AccountKey
from eventledger.eventstore.planning import Row
from eventledger.eventstore.postgres_lease import LEASE_INTERVAL, WriterLease
from eventledger.eventstore.postgres_listener import CHANNEL, HeadWatch, listen
from eventledger.eventstore.postgres_read import (
    FILL,
    GET_EVENT,
    HEAD_POSITION,
    LOAD_KEYS,
    NEAR_HEAD,
    READ_ALL,
    READ_STREAM,
    READ_TRANSACTION,
    STREAM_VERSION,
    PreparedReads,
    Read,
)
from eventledger.eventstore.postgres_schema import (
    MIGRATIONS,
    Connection,
    check_durability,
    check_schema_name,
    durability_problems,
    migrate,
)
from eventledger.eventstore.postgres_write import Session, translate, translating
from eventledger.eventstore.recent import Filled, RecentLog, RecentPage, has_float
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
BARRIER_SECONDS = 1.0  # longest wait for our listener to hear its own barrier: then read the store
FILL_ROWS = 1000  # rows of other instances one fill of the recent log reads at most


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
        advertise_url: str | None = None,
        lease_interval: float = LEASE_INTERVAL,
    ) -> None:
        super().__init__(upcasters=upcasters)
        self._pool = pool
        self._schema = schema
        self._idle_check = idle_check or _IdleCheck()
        # The pooled connections that have the writer's statements prepared (postgres_write).
        self._prepared: weakref.WeakSet[Connection] = weakref.WeakSet()
        # The reads, prepared on each pooled connection as it first runs them (postgres_read).
        self._reads = PreparedReads()
        self._watch = HeadWatch(on_forget=self._forgotten, on_connect=self._listening)
        # What this instance committed last, served to its live subscribers without a query
        # (recent.py), and the highest position known committed: a lower bound of the head
        # that spares the feed a query per commit. Other instances' commits are read into it
        # once for everyone who needs them (fill_recent).
        self._recent = RecentLog(self._upcasters, fills=True)
        self._filling: asyncio.Task[None] | None = None  # the one fill in flight (fill_recent)
        self._known_head = 0
        self._sending = 0  # the highest head a COMMIT of ours was sent for
        self._closed = False
        self._engine = GroupCommit(self, asyncio.get_running_loop())
        self._writer = asyncio.create_task(self._engine.run(), name=f"eventledger-writer-{schema}")
        self._listener = asyncio.create_task(
            listen(conninfo, schema, self._watch), name=f"eventledger-listener-{schema}"
        )
        # Instances that say where they are reached elect one writer among them.
        self._lease = (
            WriterLease(conninfo, schema, advertise_url, interval=lease_interval)
            if advertise_url
            else None
        )
        self._leasing = (
            asyncio.create_task(self._lease.run(), name=f"eventledger-lease-{schema}")
            if self._lease is not None
            else None
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
        advertise_url: str | None = None,
        lease_interval: float = LEASE_INTERVAL,
    ) -> PostgresEventStore:
        """Connect, check durability, migrate the schema, and start the writer and listener.
        `advertise_url`: where the other stream instances reach this one; given, it takes
        part in the writer lease (postgres_lease.py, `forward_to`). Raises StoreUnavailable
        when the server cannot be reached."""
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
        async with translating():
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await check_durability(conn, allow_unsafe=allow_unsafe_durability)
                await migrate(conn, schema, MIGRATIONS)
        idle_check = _IdleCheck()
        pool: Pool = AsyncConnectionPool(
            conninfo,
            # psycopg never prepares on its own here: on a connection where it has, a ROLLBACK
            # makes it send DEALLOCATE ALL, which would drop the writer's statements too
            # (postgres_write.prepare). The writer's statements and the reads are prepared by
            # name (postgres_read.py).
            kwargs={"autocommit": True, "prepare_threshold": None},
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
            async with translating():
                await pool.open(wait=True, timeout=pool_timeout)
        except BaseException:
            await pool.close()
            raise
        return cls(
            pool,
            conninfo=conninfo,
            schema=schema,
            upcasters=upcasters,
            idle_check=idle_check,
            advertise_url=advertise_url,
            lease_interval=lease_interval,
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
    async def session(self) -> AsyncIterator[Session]:
        """The engine's connection (group_commit.Backend), kept while appends keep coming."""
        try:
            async with self._connection() as conn:
                yield Session(conn, self._schema, self._sending_commit, self._prepared)
        except psycopg.Error as exc:  # no connection within the pool timeout
            raise translate(exc) from exc

    def committed(self, head: int, rows: Sequence[Row]) -> None:
        # Called after COMMIT returned, before the waiters are woken: a woken reader finds them.
        self._recent.add([_as_read(r) for r in rows])
        self._known_head = max(self._known_head, head)
        self._watch.advance(head)

    def recent_page(
        self,
        after: int,
        *,
        limit: int,
        max_bytes: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> RecentPage | None:
        if self._closed:
            return None
        return self._recent.page(
            after, limit=limit, max_bytes=max_bytes, types=types, stream_prefix=stream_prefix
        )

    def known_head(self) -> int:
        return self._known_head

    # Other instances' commits reach the recent log by one read for everyone who needs them
    # (the feed's subscribers of every filter, the stream guard), not one per filter and
    # wake-up. The rows after the log's end are exactly the log's next run: positions are
    # gapless and commit in position order (the head row lock, postgres_write._LOCK_HEAD),
    # so a statement that sees position P sees every position below it, and the log's end
    # is a committed position.

    async def fill_recent(self, upto: int | None, *, after: int | None = None) -> bool:
        if self._closed:
            return False
        filled = False
        for _ in range(2):  # someone else's fill in flight may be enough; else one of ours
            task = self._filling
            mine = task is None
            if task is None:
                start = self._recent.fill_start(after, upto, FILL_ROWS)
                if start is None:
                    return filled
                task = self._filling = asyncio.create_task(self._fill(start))
                task.add_done_callback(self._filled)
            try:
                await asyncio.shield(task)
            except EventStoreError:
                return filled  # the caller reads the store, which says what is wrong
            filled = True
            if mine:
                break
        return filled

    async def _fill(self, start: int) -> None:
        async with translating(), self._connection() as conn:
            rows = await self._reads.fetch(conn, FILL, [start, FILL_ROWS], head=self._known_head)
        self._recent.fill(start, [_filled(row) for row in rows])
        if rows and rows[-1][0] > self._known_head:
            self._known_head = rows[-1][0]  # committed and visible: a lower bound of the head

    def _filled(self, task: asyncio.Task[None]) -> None:
        if self._filling is task:
            self._filling = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers saw it, or none was left to

    def recent_events(self, stream: str, after_version: int) -> list[tuple[Row, Any]] | None:
        if self._closed:
            return None
        return self._recent.stream_events(stream, after_version)

    def _sealing(self, keys: Mapping[str, AccountKey]) -> None:
        self._recent.remember_keys(keys)

    def _sending_commit(self, head: int) -> None:
        self._sending = max(self._sending, head)

    # A forget heard (or possibly missed) now may have committed after any of our COMMITs sent
    # so far, including those not yet in the recent log (`committed` runs once the COMMIT has
    # returned): so no row up to the highest head sent is opened from memory again.

    def _forgotten(self, event_id: str, account: str) -> None:
        # Heard from any instance; this one's own was applied at its COMMIT (recent.py
        # knows its event id and skips it here).
        self._recent.forget_account(account, event_id, floor=self._sending)

    def _listening(self) -> None:
        self._recent.forget_all(floor=self._sending)  # forgets sent while nobody listened

    async def _forgets_heard(self) -> bool:
        # Every forget committed before now, by any instance, heard by our listener (in commit
        # order, before our own NOTIFY sent after it): one round trip for all the pages
        # asking at the same time. Not listening: False, the store is read.
        if self._closed:
            return False
        return await self._watch.barrier(self._send_barrier, BARRIER_SECONDS)

    async def _send_barrier(self, token: str) -> None:
        async with translating(), self._connection() as conn:
            # Like the head's NOTIFY: no data, so no need to wait for a WAL flush.
            await conn.execute(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)",
                [CHANNEL, f"{self._schema}:sync:{token}"],
            )

    # -- reading ---------------------------------------------------------------------------

    async def _fetch(
        self, read: Read, args: Sequence[Any] = (), *, generic: bool = True
    ) -> list[tuple[Any, ...]]:
        async with translating():
            for attempt in range(2):
                async with self._connection() as conn:
                    try:
                        return await self._reads.fetch(
                            conn, read, args, head=self._known_head, generic=generic
                        )
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
        exists = False
        if limit is None or limit > 0:
            # From the event before `from_version`, when there is one: a reader catching up
            # (the stream guard, a follower) mostly finds nothing new, and that row says the
            # stream exists without a second query.
            start = max(from_version - 1, 1)
            extra = 1 if start < from_version and limit is not None else 0
            rows = await self._fetch(
                READ_STREAM, [stream, start, None if limit is None else limit + extra]
            )
            if rows and rows[0][6] < from_version:
                rows, exists = rows[1:], True
            rows = rows[:limit]
        if not rows and not exists and await self.stream_version(stream) == 0:
            raise StreamNotFound(stream)
        return [_record(row) for row in rows]

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        # data and metadata as text, parsed by `_json`: a catch-up reads every event once.
        params: list[Any] = [after]
        if types:
            params.append(list(types))
        if stream_prefix:
            params.append(_like_prefix(stream_prefix))
        params.append(limit)
        # A filtered page far behind the head is planned for its values (a rare type's
        # index); near it, and unfiltered, the generic plan is the one (postgres_read.py).
        generic = not (types or stream_prefix) or (
            self._known_head > 0 and after >= self._known_head - NEAR_HEAD
        )
        rows = await self._fetch(
            READ_ALL[bool(types), bool(stream_prefix)], params, generic=generic
        )
        return [_record((*row[:4], _json(row[4]), _json(row[5]), *row[6:])) for row in rows]

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        rows = await self._fetch(GET_EVENT, [event_id])
        return _record(rows[0]) if rows else None

    async def _load_keys(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        rows = await self._fetch(LOAD_KEYS, [sorted(accounts)])
        return rows_to_keys(rows)

    async def _read_transaction(self, transaction_id: str, limit: int) -> list[RecordedEvent]:
        # By the index on data->>'transaction_id' (postgres_read.READ_TRANSACTION).
        rows = await self._fetch(READ_TRANSACTION, [transaction_id, limit])
        return [_record(row) for row in rows]

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch(STREAM_VERSION, [stream])
        return int(rows[0][0])

    async def head_position(self) -> int:
        # The committed counter is the newest visible position (appends commit in its order).
        rows = await self._fetch(HEAD_POSITION)
        head = int(rows[0][0])
        if head > self._known_head:
            self._known_head = head
        return head

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        return await self._watch.wait_for_events(
            after, timeout, read_head=self._read_head, known=self.known_head
        )

    async def _read_head(self) -> int:
        """The head as the watcher reads it when woken by a NOTIFY (another instance's commit)
        or its periodic check: the fill of the recent log the subscribers need next anyway,
        when it brings rows (they are committed, consecutive and visible: the run's end is a
        head), saving the read of the counter row a wake-up cost; else the counter row. A
        fill that brings nothing (nothing new, a schema recreated under us) says nothing of
        the table: the counter row does."""
        before = self._recent.end
        if before and await self.fill_recent(None) and self._recent.end > before:
            return self._recent.end
        return await self.head_position()

    def forward_to(self) -> str | None:
        return self._lease.writer if self._lease is not None else None

    @property
    def lease_holder(self) -> bool:
        return self._lease is not None and self._lease.holder

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            async with (
                asyncio.timeout(3.0),
                translating(),
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
        lease = (self._leasing,) if self._leasing is not None else ()
        for task in (*pending, self._listener, *lease):
            task.cancel()
        await asyncio.gather(self._writer, self._listener, *lease, return_exceptions=True)
        self._engine.fail_queued(StoreUnavailable("the store is closed"))
        if self._filling is not None:
            self._filling.cancel()
        await self._pool.close()


# -- helpers -------------------------------------------------------------------------------


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


def _json(text: str) -> Any:
    """A `jsonb` column's text as psycopg's own loader (`json.loads`) gives it: by orjson
    where that is the same (it parsed, and no float anywhere: orjson also reads an integer
    past 64 bits as one), by the standard library otherwise. A catch-up page of 500 events
    parses 1,000 of these (stdlib 2-3 µs each, orjson under 1)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    kind = type(value)
    if kind is float or ((kind is dict or kind is list) and has_float(value)):
        return json.loads(text)
    return value


def _filled(row: tuple[Any, ...]) -> Filled:
    """A row read by `FILL` (postgres_read.py) as recent.py keeps it: data and metadata in the
    text `_as_read` gives our own rows, the time as a read formats it (`_record`, then
    `format_time`)."""
    position, event_id, stream, version, type_, schema, data, metadata, at, hash_, end = row
    return Filled(
        position,
        str(event_id),
        stream,
        version,
        type_,
        schema,
        _compact(data),
        _compact(metadata),
        format_time(at.astimezone(UTC)),
        hash_ or "",  # none (older rows): only a read can say (recent.Filled)
        end or 0,
        event_id,
    )


def _compact(text: str) -> str:
    """A `jsonb` column's text (keys already in jsonb's order) in orjson's compact spelling,
    which recent.py serves where it is exact (ASCII, no float)."""
    if text == "{}":
        return text
    try:
        return orjson.dumps(orjson.loads(text)).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return text  # recent.py's own check leaves it to a read


def _as_read(row: Row) -> Row:
    """The row with its data and metadata as a read gives them back: `jsonb` keeps the last
    of each key and orders keys by length, then bytes. recent.py serves the text only where
    it is its own re-encoding (ASCII, no float), and then this is the text a read serves."""
    return row._replace(data=_jsonb_text(row.data), metadata=_jsonb_text(row.metadata))


def _jsonb_text(text: str) -> str:
    if text == "{}":
        return text
    try:
        return orjson.dumps(_jsonb_sorted(orjson.loads(text))).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return text  # recent.py's own check leaves it to a read


def _jsonb_sorted(value: Any) -> Any:
    if type(value) is dict:
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: _jsonb_sorted(value[k]) for k in keys}
    if type(value) is list:
        return [_jsonb_sorted(v) for v in value]
    return value


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
