"""The workloads on eventledger's event stores, through the public `EventStore` interface.

Each measurement runs on a new event loop (`asyncio.run`) with a store of its own: a new
SQLite file or a new PostgreSQL schema, removed when the measurement ends. Concurrent
writers are asyncio tasks sharing one store, which is how the stream service uses it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter
from uuid import uuid4

from bench import pg
from bench.workloads import (
    EVENT_TYPE,
    FILL_BATCH,
    BenchError,
    Kind,
    PostgresTarget,
    Sample,
    Sizes,
    SqliteTarget,
    Target,
    payload,
)
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import NewEvent
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore

NAME = "eventledger"
# A store under construction may hang rather than fail; a measurement never takes this long.
TIMEOUT_SECONDS = 300.0

Opener = Callable[[], Awaitable[EventStore]]


def measure(kind: Kind, sizes: Sizes, target: Target) -> Sample:
    """One timed section of `kind` on a fresh store at `target`."""
    if isinstance(target, SqliteTarget):
        path = target.directory / f"{NAME}-{uuid4().hex}.db"

        async def open_sqlite() -> EventStore:
            return SqliteEventStore(path)

        try:
            return asyncio.run(_measure(kind, sizes, open_sqlite))
        finally:
            remove_sqlite_files(path)

    url = target.url
    schema = pg.fresh_schema(NAME)

    async def open_postgres() -> EventStore:
        return await PostgresEventStore.open(
            url, schema=schema, application_name=pg.APPLICATION_NAME
        )

    try:
        return asyncio.run(_measure(kind, sizes, open_postgres))
    finally:
        pg.drop_schema(url, schema)


def durability(target: Target) -> str:
    """What our store does for durability on `target`, checked where it can be seen."""
    if isinstance(target, PostgresTarget):
        return "every append acknowledged after COMMIT; `open` refuses fsync=off"
    path = target.directory / f"{NAME}-settings-{uuid4().hex}.db"
    try:
        asyncio.run(_append_a_little(SqliteEventStore(path)))
        # The journal mode is stored in the file: this reads what the store set up.
        # `synchronous` is per connection: SqliteEventStore sets FULL on each one it opens.
        with sqlite3.connect(path) as conn:
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        remove_sqlite_files(path)
    return f"journal_mode={journal}, synchronous=FULL (set by SqliteEventStore), group commit"


def remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- the workloads -----------------------------------------------------------------------------


async def _measure(kind: Kind, sizes: Sizes, open_store: Opener) -> Sample:
    async with asyncio.timeout(TIMEOUT_SECONDS):
        store = await open_store()
        try:
            match kind:
                case Kind.APPEND_ONE:
                    return await _append(store, sizes.warmup, sizes.appends_one, writers=1)
                case Kind.APPEND_MANY:
                    return await _append(
                        store, sizes.warmup, sizes.appends_many, writers=sizes.writers
                    )
                case Kind.READ_LOG:
                    return await _read_log(store, sizes)
        finally:
            await store.close()


async def _append(store: EventStore, warmup: int, total: int, *, writers: int) -> Sample:
    """`writers` tasks, each appending single events to its own new stream with the expected
    version, `total` appends in all; a smaller untimed round of the same shape first."""
    await _writers(store, writers, max(warmup // writers, 1))
    seconds = await _writers(store, writers, total // writers)
    return Sample(total, seconds)


async def _writers(store: EventStore, writers: int, per_writer: int) -> float:
    streams = [f"bench-{uuid4().hex}" for _ in range(writers)]

    async def write(stream: str) -> None:
        for version in range(per_writer):
            await store.append(
                stream,
                expected_version=version,
                events=[NewEvent(uuid4(), EVENT_TYPE, payload(version))],
            )

    start = perf_counter()
    await asyncio.gather(*(write(stream) for stream in streams))
    seconds = perf_counter() - start
    for stream in streams:
        if (version := await store.stream_version(stream)) != per_writer:
            raise BenchError(f"{stream} is at version {version}, expected {per_writer}")
    return seconds


async def _read_log(store: EventStore, sizes: Sizes) -> Sample:
    """Fill the log (untimed), read it once to warm up, then time `read_passes` passes."""
    for batch in range(sizes.log_events // FILL_BATCH):
        first = batch * FILL_BATCH
        await store.append(
            f"bench-{uuid4().hex}",
            expected_version=0,
            events=[NewEvent(uuid4(), EVENT_TYPE, payload(first + i)) for i in range(FILL_BATCH)],
        )
    await _read_pass(store, sizes.page)
    start = perf_counter()
    read = 0
    for _ in range(sizes.read_passes):
        read += await _read_pass(store, sizes.page)
    seconds = perf_counter() - start
    expected = sizes.log_events * sizes.read_passes
    if read != expected:
        raise BenchError(f"read {read} events, expected {expected}")
    return Sample(read, seconds)


async def _read_pass(store: EventStore, page: int) -> int:
    """The whole global log, page by page: the way a projection catches up."""
    read, after = 0, 0
    while events := await store.read_all(after=after, limit=page):
        read += len(events)
        after = events[-1].position
    return read


async def _append_a_little(store: EventStore) -> None:
    try:
        await store.append(
            "bench-settings", expected_version=0, events=[NewEvent(uuid4(), EVENT_TYPE, {})]
        )
    finally:
        await store.close()
