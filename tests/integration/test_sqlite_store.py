"""The SQLite event store: the store contract, then what only a file-backed store promises
(durability across reopening, schema versioning, group commit, several threads and
processes on one file)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from eventledger.eventstore import sqlite_write
from eventledger.eventstore.errors import (
    InvalidAppend,
    StoreOutcomeUnknown,
    StoreUnavailable,
    WrongExpectedVersion,
)
from eventledger.eventstore.records import AppendResult, NewEvent, StreamState
from eventledger.eventstore.sqlite import SCHEMA_VERSION, SqliteEventStore
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry
from tests.integration.pg_tools import wait_until
from tests.integration.sqlite_faults import io_error, writer_connection
from tests.integration.sqlite_writer import read_line, start_writer
from tests.integration.store_contract import (
    ANY,
    NO_STREAM,
    EventStoreContract,
    assert_strictly_increasing,
    new_event,
    new_events,
    new_stream,
    read_everything,
)


class TestSqliteEventStore(EventStoreContract):
    async def create_store(
        self, tmp_path: Path, *, upcasters: UpcasterRegistry | None = None
    ) -> EventStore:
        return SqliteEventStore(tmp_path / "events.db", upcasters=upcasters)

    @contextlib.asynccontextmanager
    async def writes_held(self, store: EventStore) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        assert isinstance(store, SqliteEventStore)
        await store.ping()  # the file exists and its writer runs

        async def all_taken() -> None:
            await wait_until(engine_busy(store), what="the writer to wait for the lock")

        lock = _WriteLock(store.path)
        try:
            yield all_taken
        finally:
            lock.release()

    async def refuse_marked_rows(self, store: EventStore, marker: str) -> None:
        assert isinstance(store, SqliteEventStore)
        await store.ping()
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            conn.execute(
                f"CREATE TRIGGER refuse_{marker} BEFORE INSERT ON events"
                f" WHEN json_extract(NEW.data, '$.{marker}') IS NOT NULL"
                " BEGIN SELECT RAISE(ABORT, 'refused by a rule of the database'); END"
            )
        finally:
            conn.close()

    @contextlib.contextmanager
    def failing_commit(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch, *, applied: bool
    ) -> Iterator[None]:
        def commit(conn: sqlite3.Connection) -> None:
            if applied:
                conn.execute("COMMIT")
            raise io_error("SQLITE_IOERR_FSYNC")

        with monkeypatch.context() as patch:
            patch.setattr(sqlite_write, "_run_commit", commit)
            yield


def engine_busy(store: SqliteEventStore) -> Callable[[], Awaitable[bool]]:
    async def busy() -> bool:
        return store._engine is not None and store._engine.in_flight > 0

    return busy


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "events.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(path)
    await store.ping()
    yield store
    await store.close()


class _WriteLock:
    """Holds SQLite's write lock from a plain connection, as another process would."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


# -- the file --------------------------------------------------------------------------------


async def test_events_survive_closing_and_reopening_the_file(path: Path) -> None:
    stream = new_stream()
    events = new_events(3)
    first = SqliteEventStore(path)
    try:
        result = await first.append(stream, expected_version=NO_STREAM, events=events)
    finally:
        await first.close()
    reopened = SqliteEventStore(path)
    try:
        stored = await reopened.read_stream(stream)
        assert [e.id for e in stored] == [e.id for e in events]
        assert [e.position for e in stored] == list(result.positions)
        more = await reopened.append(stream, expected_version=3, events=new_events(1))
        assert more.first_version == 4
        assert more.positions[0] > result.positions[-1]
    finally:
        await reopened.close()


async def test_the_schema_version_and_the_wal_journal_are_recorded_in_the_file(
    store: SqliteEventStore, path: Path
) -> None:
    await store.append(new_stream(), expected_version=ANY, events=new_events(1))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        assert columns == [
            "position", "id", "stream", "stream_version", "type", "schema_version",
            "data", "metadata", "recorded_at", "hash", "batch_end",
        ]  # fmt: skip
    finally:
        conn.close()


async def test_a_file_with_a_newer_schema_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SqliteEventStore(path)
    try:
        with pytest.raises(StoreUnavailable, match="newer"):
            await store.head_position()
    finally:
        await store.close()


@pytest.fixture
def not_a_database(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a SQLite database, only some text " * 100)
    return path


async def test_a_file_that_is_not_a_database_raises_store_unavailable(
    not_a_database: Path,
) -> None:
    store = SqliteEventStore(not_a_database)
    try:
        with pytest.raises(StoreUnavailable):
            await store.append(new_stream(), expected_version=ANY, events=new_events(1))
        with pytest.raises(StoreUnavailable):
            await store.read_all()
    finally:
        await store.close()


async def test_recorded_at_is_stored_as_rfc3339_utc_text_with_microseconds(path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=plus_two)
    store = SqliteEventStore(path, clock=lambda: moment)
    try:
        event = new_event()
        await store.append(new_stream(), expected_version=ANY, events=[event])
        stored = await store.get_event(event.id)
        assert stored is not None
        assert stored.recorded_at == moment
        assert stored.recorded_at.tzinfo == UTC
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        (text,) = conn.execute("SELECT recorded_at FROM events WHERE id = ?", (str(event.id),))
        assert text == ("2026-11-27T10:00:00.123456Z",)
    finally:
        conn.close()


async def test_data_that_is_not_json_is_an_invalid_append(store: SqliteEventStore) -> None:
    stream = new_stream()
    for data in ({"amount": float("nan")}, {"when": datetime.now(UTC)}, {"bad": "\ud800"}):
        with pytest.raises(InvalidAppend):
            await store.append(stream, expected_version=ANY, events=[new_event(data=data)])
    assert await store.stream_version(stream) == 0


def test_from_url_reads_the_path_of_a_sqlite_url(tmp_path: Path) -> None:
    absolute = SqliteEventStore.from_url(f"sqlite://{tmp_path}/events.db")
    assert absolute.path == tmp_path / "events.db"
    assert SqliteEventStore.from_url("sqlite://data/events.db").path == Path("data/events.db")
    assert SqliteEventStore.from_url("sqlite:///a%20b/e.db").path == Path("/a b/e.db")
    for url in ("postgresql://localhost/db", "sqlite://", "sqlite:///x.db?mode=ro", ":memory:"):
        with pytest.raises(ValueError):
            SqliteEventStore.from_url(url)


# -- group commit ----------------------------------------------------------------------------


async def test_a_hundred_concurrent_appends_need_fewer_commits_than_appends(
    store: SqliteEventStore,
) -> None:
    commits = store.commits
    results = await asyncio.gather(
        *(
            store.append(new_stream(), expected_version=NO_STREAM, events=new_events(1))
            for _ in range(100)
        )
    )
    assert len({r.positions[0] for r in results}) == 100
    assert store.commits - commits < 100


async def test_appends_queued_behind_the_write_lock_share_a_commit_and_a_failure_stays_alone(
    store: SqliteEventStore, path: Path
) -> None:
    shared = new_stream("shared")
    bad_event = new_event()
    lock = _WriteLock(path)
    try:
        commits = store.commits
        good = [
            asyncio.create_task(store.append(new_stream(), expected_version=NO_STREAM, events=[e]))
            for e in new_events(5)
        ]
        # The second append to `shared` sees the first one's write in the same transaction.
        good.append(
            asyncio.create_task(store.append(shared, expected_version=0, events=new_events(1)))
        )
        good.append(
            asyncio.create_task(store.append(shared, expected_version=1, events=new_events(1)))
        )
        bad = asyncio.create_task(store.append(shared, expected_version=0, events=[bad_event]))
        good += [
            asyncio.create_task(store.append(new_stream(), expected_version=NO_STREAM, events=[e]))
            for e in new_events(5)
        ]
        await asyncio.sleep(0.2)  # every request is queued; the writer waits for the lock
        assert not any(task.done() for task in [*good, bad])
    finally:
        lock.release()
    results = await asyncio.wait_for(asyncio.gather(*good), 10)
    with pytest.raises(WrongExpectedVersion) as raised:
        await bad
    assert raised.value.actual == 2
    assert [r.first_version for r in results] == [1] * 5 + [1, 2] + [1] * 5
    # The writer took the first request alone, or none, before it met the lock; everything
    # queued meanwhile went into one transaction.
    assert store.commits - commits <= 2
    assert await store.get_event(bad_event.id) is None
    assert [e.stream_version for e in await store.read_stream(shared)] == [1, 2]


async def test_appends_queued_at_close_are_written_and_later_ones_refused(path: Path) -> None:
    store = SqliteEventStore(path)
    await store.ping()
    lock = _WriteLock(path)
    try:
        first = asyncio.create_task(
            store.append(new_stream(), expected_version=ANY, events=new_events(1))
        )
        await asyncio.sleep(0.2)  # the writer has taken `first` and waits for the lock
        queued_events = new_events(5)
        queued = [
            asyncio.create_task(store.append(new_stream(), expected_version=ANY, events=[e]))
            for e in queued_events
        ]
        await asyncio.sleep(0)
        closing = asyncio.create_task(store.close())
        while not store.closed:  # noqa: ASYNC110 - a flag set by the closing thread
            await asyncio.sleep(0.01)
    finally:
        lock.release()
    await asyncio.wait_for(closing, 10)
    assert isinstance(await first, AppendResult)
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(o, AppendResult) for o in outcomes), outcomes
    await store.close()  # closing twice is fine
    with pytest.raises(StoreUnavailable):
        await store.append(new_stream(), expected_version=ANY, events=new_events(1))
    with pytest.raises(StoreUnavailable):
        await store.read_all()
    with pytest.raises(StoreUnavailable):
        await store.wait_for_events(0, 1)
    reopened = SqliteEventStore(path)
    try:
        assert len(await reopened.read_all()) == 6
        for event in queued_events:
            assert await reopened.get_event(event.id) is not None
    finally:
        await reopened.close()


# -- waiting ---------------------------------------------------------------------------------


async def test_wait_for_events_is_woken_by_a_commit_not_by_polling(path: Path) -> None:
    store = SqliteEventStore(path, poll_interval=60)
    try:
        loop = asyncio.get_running_loop()
        head = await store.head_position()
        waiter = asyncio.create_task(store.wait_for_events(head, 60))
        await asyncio.sleep(0.1)
        started = loop.time()
        await store.append(new_stream(), expected_version=ANY, events=new_events(1))
        assert await asyncio.wait_for(waiter, 5)
        assert loop.time() - started < 1
    finally:
        await store.close()


async def test_wait_for_events_notices_an_append_by_another_process(path: Path) -> None:
    store = SqliteEventStore(path, poll_interval=0.2)
    try:
        await store.ping()
        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(store.wait_for_events(await store.head_position(), 30))
        child = await start_writer(path, "one", new_stream())
        out, err = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == 0, err.decode()
        written_at = loop.time()
        assert await asyncio.wait_for(waiter, 5)
        assert loop.time() - written_at < 2
        position = int(out.decode().split()[1])
        assert await store.head_position() == position
    finally:
        await store.close()


# -- several writers on one file -------------------------------------------------------------


def test_threads_each_with_its_own_store_on_one_file_get_one_winner_per_version(
    path: Path,
) -> None:
    threads, versions = 4, 40
    stream = new_stream()
    start = threading.Barrier(threads)

    async def race() -> list[tuple[int, UUID]]:
        store = SqliteEventStore(path)
        won: list[tuple[int, UUID]] = []
        try:
            await store.ping()
            await asyncio.to_thread(start.wait, 30)
            while (version := await store.stream_version(stream)) < versions:
                event = new_event()
                try:
                    result = await store.append(stream, expected_version=version, events=[event])
                except WrongExpectedVersion:
                    continue
                won.append((result.first_version, event.id))
            return won
        finally:
            await store.close()

    with ThreadPoolExecutor(threads) as pool:
        per_thread = list(pool.map(lambda _: asyncio.run(race()), range(threads), timeout=60))
    won = sorted(w for wins in per_thread for w in wins)
    assert [v for v, _ in won] == list(range(1, versions + 1))

    async def check() -> None:
        store = SqliteEventStore(path)
        try:
            stored = await store.read_stream(stream)
            assert [(e.stream_version, e.id) for e in stored] == won
        finally:
            await store.close()

    asyncio.run(check())


async def test_another_process_appending_at_the_same_time_keeps_positions_unique(
    store: SqliteEventStore, path: Path
) -> None:
    stream, count = new_stream(), 60
    child = await start_writer(path, "race", stream, str(count))
    try:
        assert await read_line(child) == "ready"
        won: list[tuple[int, UUID]] = []
        while len(won) < count:
            event = NewEvent(uuid4(), "Raced", {"pid": "parent"})
            version = await store.stream_version(stream)
            try:
                result = await store.append(stream, expected_version=version, events=[event])
            except WrongExpectedVersion:
                continue
            won.append((result.first_version, event.id))
        out, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()
    assert child.returncode == 0, err.decode()
    lines = out.decode().split("\n")
    child_won = [
        (int(v), UUID(i)) for _, v, i in (line.split() for line in lines if line[:3] == "won")
    ]
    assert lines[-2:] == ["done", ""]
    assert len(child_won) == count
    everything = sorted(won + child_won)
    assert [v for v, _ in everything] == list(range(1, 2 * count + 1))
    stored = await store.read_stream(stream)
    assert [(e.stream_version, e.id) for e in stored] == everything
    log = await read_everything(store, after=0)
    positions = [e.position for e in log]
    assert_strictly_increasing(positions)
    assert sorted(e.position for e in stored) == [e.position for e in log if e.stream == stream]
    assert {e.data["pid"] for e in stored} == {"parent", "child"}


async def test_a_store_can_be_created_lazily_by_many_tasks_at_once(path: Path) -> None:
    store = SqliteEventStore(path)
    try:
        results = await asyncio.gather(
            *(
                store.append(new_stream(), expected_version=StreamState.ANY, events=new_events(1))
                for _ in range(10)
            ),
            store.head_position(),
            store.read_all(),
        )
        assert len(results) == 12
    finally:
        await store.close()


# -- faults ----------------------------------------------------------------------------------


async def test_a_full_disk_refuses_whole_appends_says_so_in_ping_and_recovers(
    store: SqliteEventStore,
) -> None:
    writer = writer_connection(store)
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages + 8}")  # the disk is nearly full
    acknowledged: dict[str, list[UUID]] = {}
    refused: list[UUID] = []
    errors: list[StoreUnavailable] = []
    for n in range(200):
        stream = new_stream(f"s{n % 3}")
        events = [new_event(data={"filler": "x" * 2000, "n": i}) for i in range(3)]
        try:
            await store.append(stream, expected_version=NO_STREAM, events=events)
        except StoreUnavailable as exc:
            errors.append(exc)
            refused += [e.id for e in events]
            if len(errors) == 3:
                break
        else:
            acknowledged[stream] = [e.id for e in events]
    assert errors and acknowledged, "the disk never filled up"
    assert all("SQLITE_FULL" in str(e) and not isinstance(e, StoreOutcomeUnknown) for e in errors)
    with pytest.raises(StoreUnavailable, match="full"):
        await store.ping()
    # Nothing half written: every acknowledged append whole, nothing of a refused one.
    for stream, ids in acknowledged.items():
        assert [e.id for e in await store.read_stream(stream)] == ids
    for event_id in refused:
        assert await store.get_event(event_id) is None
    writer.execute("PRAGMA max_page_count = 1073741823")  # space is freed
    await store.ping()
    result = await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(3))
    assert result.first_version == 1


async def test_a_write_connection_broken_by_a_failed_rollback_fails_ping_until_replaced(
    store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = writer_connection(store)

    def commit(conn: sqlite3.Connection) -> None:
        conn.close()  # the ROLLBACK that follows fails: the connection is useless
        raise io_error("SQLITE_IOERR_WRITE")

    def cannot_open() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    with monkeypatch.context() as patch:
        patch.setattr(sqlite_write, "_run_commit", commit)
        with pytest.raises(StoreOutcomeUnknown):
            await store.append(new_stream(), expected_version=ANY, events=new_events(1))
    assert store.write_fault is not None and "broke" in store.write_fault
    with monkeypatch.context() as patch:
        patch.setattr(store, "connect", cannot_open)
        with pytest.raises(StoreUnavailable, match="unable to open"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.append(new_stream(), expected_version=ANY, events=new_events(1))
    await store.ping()  # the probe opened a new write connection
    assert store.write_fault is None
    stream = new_stream()
    result = await store.append(stream, expected_version=NO_STREAM, events=new_events(2))
    assert result.first_version == 1
    assert writer_connection(store) is not broken
