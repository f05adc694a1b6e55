"""The same workloads on the peer, eventsourcing (pyeventsourcing), at its recorder level.

The peer is synchronous: concurrent writers are threads of this process sharing one
recorder, which is how an eventsourcing application serves concurrent requests. Its
optimistic concurrency check is the primary key (originator_id, originator_version): an
append of version v+1 fails when another writer stored v+1 first.

To give both stores the same work per event, the peer's timed sections also encode the
payload to JSON before `insert_events` and decode it after `select_notifications` (our store
does both inside `append` and `read_all`).

SQLite durability: eventsourcing turns WAL on itself but leaves `synchronous` at SQLite's
compiled-in default, so `_DurableSQLiteDatastore` sets synchronous=FULL on every connection
it opens, as our store does; `durability` reads both settings back through the peer's pool.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter
from uuid import UUID, uuid4

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)

from bench import pg
from bench.ours import remove_sqlite_files
from bench.workloads import (
    FILL_BATCH,
    PEER_TOPIC,
    BenchError,
    Kind,
    PostgresTarget,
    Sample,
    Sizes,
    SqliteTarget,
    Target,
    encode,
    payload,
)

NAME = "eventsourcing"


def measure(kind: Kind, sizes: Sizes, target: Target) -> Sample:
    """One timed section of `kind` on a fresh recorder at `target`."""
    # One connection per writer thread and one for the main thread: no thread ever waits
    # for the pool, only for the database.
    with _recorder(target, pool_size=sizes.writers + 1) as recorder:
        match kind:
            case Kind.APPEND_ONE:
                return _append(recorder, sizes.warmup, sizes.appends_one, writers=1)
            case Kind.APPEND_MANY:
                return _append(recorder, sizes.warmup, sizes.appends_many, writers=sizes.writers)
            case Kind.READ_LOG:
                return _read_log(recorder, sizes)


def durability(target: Target) -> str:
    """The peer's durability settings on `target`, read back through its own connections."""
    if isinstance(target, PostgresTarget):
        return "every insert_events acknowledged after COMMIT (server settings as for ours)"
    with _recorder(target, pool_size=1) as recorder:
        assert isinstance(recorder, SQLiteApplicationRecorder)
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA journal_mode")
            journal = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[cursor.fetchone()[0]]
    return (
        f"journal_mode={journal}, synchronous={synchronous} (set by this benchmark), "
        "one transaction per insert_events"
    )


# -- setting the peer up ---------------------------------------------------------------------


class _DurablePool(SQLiteConnectionPool):
    """eventsourcing's SQLite pool, with synchronous=FULL on every connection."""

    def _create_connection(self) -> SQLiteConnection:
        conn = super()._create_connection()
        conn.cursor().execute("PRAGMA synchronous = FULL")
        return conn


class _DurableSQLiteDatastore(SQLiteDatastore):
    def __init__(self, db_name: str, *, pool_size: int) -> None:
        super().__init__(db_name, pool_size=pool_size, max_overflow=0)
        self.pool.close()  # nothing was opened yet: connections are made on first use
        self.pool = _DurablePool(db_name=db_name, pool_size=pool_size, max_overflow=0)


@contextmanager
def _recorder(target: Target, *, pool_size: int) -> Iterator[ApplicationRecorder]:
    if isinstance(target, SqliteTarget):
        path = target.directory / f"{NAME}-{uuid4().hex}.db"
        sqlite = _DurableSQLiteDatastore(str(path), pool_size=pool_size)
        try:
            sqlite_recorder = SQLiteApplicationRecorder(sqlite)
            sqlite_recorder.create_table()
            yield sqlite_recorder
        finally:
            sqlite.close()
            remove_sqlite_files(path)
        return

    parts = pg.connection_parts(target.url)
    schema = pg.fresh_schema(NAME)
    pg.create_schema(target.url, schema)
    try:
        postgres = PostgresDatastore(
            parts.dbname,
            parts.host,
            parts.port,
            parts.user,
            parts.password,
            schema=schema,
            pool_size=pool_size,
            max_overflow=0,
        )
        try:
            postgres_recorder = PostgresApplicationRecorder(postgres)
            postgres_recorder.create_table()
            yield postgres_recorder
        finally:
            postgres.close()
    finally:
        pg.drop_schema(target.url, schema)


# -- the workloads -----------------------------------------------------------------------------


def _append(recorder: ApplicationRecorder, warmup: int, total: int, *, writers: int) -> Sample:
    """`writers` threads, each appending single events to its own new originator with the
    next version, `total` appends in all; a smaller untimed round of the same shape first."""
    _writers(recorder, writers, max(warmup // writers, 1))
    seconds = _writers(recorder, writers, total // writers)
    return Sample(total, seconds)


def _writers(recorder: ApplicationRecorder, writers: int, per_writer: int) -> float:
    originators = [uuid4() for _ in range(writers)]
    errors: list[BaseException] = []
    # Every thread is started and waiting before the clock starts.
    start_line = threading.Barrier(writers + 1)

    def write(originator_id: UUID) -> None:
        start_line.wait()
        try:
            for version in range(1, per_writer + 1):
                event = StoredEvent(
                    originator_id, version, PEER_TOPIC, encode(payload(version - 1))
                )
                recorder.insert_events([event])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(o,), daemon=True) for o in originators]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = perf_counter()
    for thread in threads:
        thread.join()
    seconds = perf_counter() - start
    if errors:
        raise errors[0]
    for originator_id in originators:
        last = recorder.select_events(originator_id, desc=True, limit=1)
        if not last or last[0].originator_version != per_writer:
            raise BenchError(f"{originator_id} did not reach version {per_writer}")
    return seconds


def _read_log(recorder: ApplicationRecorder, sizes: Sizes) -> Sample:
    """Fill the log (untimed), read it once to warm up, then time `read_passes` passes."""
    for batch in range(sizes.log_events // FILL_BATCH):
        first, originator_id = batch * FILL_BATCH, uuid4()
        recorder.insert_events(
            [
                StoredEvent(originator_id, i + 1, PEER_TOPIC, encode(payload(first + i)))
                for i in range(FILL_BATCH)
            ]
        )
    _read_pass(recorder, sizes.page)
    start = perf_counter()
    read = 0
    for _ in range(sizes.read_passes):
        read += _read_pass(recorder, sizes.page)
    seconds = perf_counter() - start
    expected = sizes.log_events * sizes.read_passes
    if read != expected:
        raise BenchError(f"read {read} events, expected {expected}")
    return Sample(read, seconds)


def _read_pass(recorder: ApplicationRecorder, page: int) -> int:
    """The whole log, page by page, each event's JSON decoded as our store does."""
    read, after = 0, 0
    decode: Callable[[bytes], object] = json.loads
    while notifications := recorder.select_notifications(after, page, inclusive_of_start=False):
        for notification in notifications:
            decode(notification.state)
        read += len(notifications)
        after = notifications[-1].id
    return read
