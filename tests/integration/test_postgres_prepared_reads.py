"""The PostgreSQL store's reads run as statements prepared once per connection and planned once
(postgres_read.py): the same rows as ever, on a connection that lost its statements, after
its backend was terminated, across a schema dropped and created again, and with hostile
filter values; and the server plans each of them, and the writer's, once per connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from psycopg import sql

from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.postgres_read import NAMES
from eventledger.eventstore.records import RecordedEvent
from tests.integration.pg_tools import execute, terminate
from tests.integration.store_contract import ANY, NO_STREAM, new_event, new_events

Plans = dict[str, tuple[int, int]]


@pytest.fixture
def name() -> str:
    return f"el-{uuid4().hex[:12]}"


@pytest.fixture
async def store(postgres_url: str, pg_schema: str, name: str) -> AsyncIterator[PostgresEventStore]:
    # One pooled connection: the test can look into the session the reads ran in.
    store = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, max_size=1, application_name=name
    )
    yield store
    await store.close()


async def fill(store: PostgresEventStore) -> None:
    for n in range(3):
        await store.append(
            f"account-{n}", expected_version=NO_STREAM, events=new_events(4, "MoneyDeposited")
        )
        await store.append(f"transfer-{n}", expected_version=NO_STREAM, events=new_events(2))
    await store.append(
        "account-9",
        expected_version=NO_STREAM,
        events=[new_event("TransactionNoted", {"transaction_id": "t9"})],
    )


async def every_read(store: PostgresEventStore) -> list[object]:
    """Each prepared read, each shape of read_all: what a user gets from them."""
    first = (await store.read_all(limit=1))[0]
    return [
        await store.read_all(after=0, limit=500),
        await store.read_all(after=2, limit=3),
        await store.read_all(types=["MoneyDeposited"], limit=500),
        await store.read_all(stream_prefix="transfer-", limit=500),
        await store.read_all(after=1, types=["Happened"], stream_prefix="transfer-", limit=2),
        await store.read_stream("account-1"),
        await store.read_stream("account-1", from_version=3, limit=1),
        await store.stream_version("account-2"),
        await store.stream_version("account-404"),
        await store.head_position(),
        await store.get_event(first.id),
        await store.get_event(uuid4()),
        await store.read_transaction("t9"),
    ]


def ids(events: object) -> object:
    if isinstance(events, list):
        return [e.id if isinstance(e, RecordedEvent) else e for e in events]
    return events.id if isinstance(events, RecordedEvent) else events


async def plans(store: PostgresEventStore) -> Plans:
    """(generic, custom) plans used by each of our statements in the pool's one session."""
    async with store._pool.connection() as conn:
        cur = await conn.execute(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE name LIKE 'eventledger%'"
        )
        return {name: (generic, custom) for name, generic, custom in await cur.fetchall()}


async def test_reads_are_prepared_once_and_planned_once_per_connection(
    store: PostgresEventStore,
) -> None:
    await fill(store)
    for _ in range(12):
        await store.append(f"more-{uuid4().hex}", expected_version=ANY, events=[new_event()])
    expected = [ids(r) for r in await every_read(store)]
    prepares = store._reads.prepares
    for _ in range(12):
        assert [ids(r) for r in await every_read(store)] == expected
    assert store._reads.prepares == prepares  # no PREPARE after the first round
    used = await plans(store)
    assert set(NAMES) - {"eventledger_load_keys"} <= set(used)
    # No statement was planned for its values: one generic plan, reused.
    assert {name: custom for name, (_, custom) in used.items() if custom} == {}
    # The writer's too: the stored ids' and the stream versions' statements ran every group.
    assert used["eventledger_stored"][0] >= 12
    assert used["eventledger_versions"][0] >= 12


async def test_a_filtered_page_far_behind_the_head_is_planned_for_its_values(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rare type's page from the start of a long log: its index, not the walk along the log.
    monkeypatch.setattr("eventledger.eventstore.postgres.NEAR_HEAD", 5)
    await fill(store)
    rare = await store.read_all(after=0, types=["Happened"], limit=500)
    near = await store.read_all(after=await store.head_position() - 3, types=["Happened"])
    used = await plans(store)
    assert used["eventledger_read_all_types"] == (1, 1)
    assert [e.stream for e in rare] == [f"transfer-{n}" for n in range(3) for _ in range(2)]
    assert [e.stream for e in near] == ["transfer-2", "transfer-2"]


async def test_reads_prepare_again_in_a_session_that_lost_its_statements(
    store: PostgresEventStore,
) -> None:
    await fill(store)
    expected = [ids(r) for r in await every_read(store)]
    for reset in ("DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE eventledger_read_stream"):
        async with store._pool.connection() as conn:
            await conn.execute(reset)
        prepares = store._reads.prepares
        assert [ids(r) for r in await every_read(store)] == expected, reset
        assert store._reads.prepares > prepares


async def test_reads_survive_a_terminated_backend(
    store: PostgresEventStore, postgres_url: str, name: str
) -> None:
    await fill(store)
    expected = [ids(r) for r in await every_read(store)]
    prepares = store._reads.prepares
    assert await terminate(postgres_url, name) >= 1  # the pool's connection and the listener
    # The connection died under the first read: once more on a new one, prepared anew.
    assert [ids(r) for r in await every_read(store)] == expected
    assert store._reads.prepares > prepares


async def test_reads_survive_their_schema_dropped_and_created_again(
    store: PostgresEventStore, postgres_url: str, pg_schema: str
) -> None:
    await fill(store)
    await every_read(store)  # every statement prepared on the pool's connection
    schema = sql.Identifier(pg_schema)
    await execute(postgres_url, sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
    with pytest.raises(StoreUnavailable):  # no table: the read fails, the connection lives
        await store.read_all()
    with pytest.raises(StoreUnavailable):
        await store.head_position()
    again = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        await fill(again)
    finally:
        await again.close()
    # The statements prepared before the drop are parsed again against the new tables.
    expected_streams = [e.stream for e in await again_read(postgres_url, pg_schema)]
    assert [e.stream for e in await store.read_all(limit=500)] == expected_streams
    assert await store.head_position() == len(expected_streams) == 19
    assert [e.stream_version for e in await store.read_stream("account-1")] == [1, 2, 3, 4]


async def again_read(postgres_url: str, pg_schema: str) -> list[RecordedEvent]:
    fresh = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        return await fresh.read_all(limit=500)
    finally:
        await fresh.close()


async def test_hostile_filter_values_are_values(store: PostgresEventStore) -> None:
    await fill(store)
    hostile = ["it's", "a\\b", "E'x'", '"q"', "x,y", "{}", "$$", "'); DROP TABLE events; --"]
    assert await store.read_all(types=hostile) == []
    for prefix in [*hostile, "%", "_", "account\\"]:
        assert await store.read_all(stream_prefix=prefix) == [], prefix
        assert await store.stream_version(prefix) == 0
    assert await store.read_transaction("t9'; --") == []
    # Integers past bigint mean what they say: nothing after, everything up to.
    assert await store.read_all(after=2**70) == []
    assert len(await store.read_stream("account-1", limit=2**70)) == 4
    assert await store.read_stream("account-1", from_version=2**40) == []


async def test_a_statement_is_planned_again_for_a_log_that_grew(
    store: PostgresEventStore,
) -> None:
    # Planned on a one-event log, a filtered page's generic plan is a scan of the table and a
    # sort; once the log has grown past twice that (and 1,000 more) it is prepared again, and
    # planned for the log as it is: the position index, reading only the page's events.
    await store.append("account-0", expected_version=NO_STREAM, events=[new_event()])
    assert await store.read_all(stream_prefix="account-") != []
    assert await store.head_position() == 1
    prepares = store._reads.prepares
    assert "Seq Scan" in await generic_plan(store, "eventledger_read_all_prefix")
    for n in range(1, 4):
        await store.append(f"account-{n}", expected_version=NO_STREAM, events=new_events(1000))
    page = await store.read_all(after=3000, stream_prefix="account-")
    assert [e.position for e in page] == [3001]
    assert store._reads.prepares == prepares + 1
    assert "Index Scan using" in await generic_plan(store, "eventledger_read_all_prefix")


async def generic_plan(store: PostgresEventStore, name: str) -> str:
    async with store._pool.connection() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cur = await conn.execute(f"EXPLAIN EXECUTE {name}(0, 'account-%', 10)".encode())
            return "\n".join(row[0] for row in await cur.fetchall())
        finally:
            await conn.execute("RESET plan_cache_mode")
