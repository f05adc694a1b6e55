"""The PostgreSQL event store: the store contract, then what only PostgreSQL promises
(versioned migrations, refusing unsafe durability settings, failing fast, recovering from
killed connections without losing an acknowledged append, group commit, least privileges)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eventledger.eventstore import postgres, postgres_write
from eventledger.eventstore.errors import (
    DuplicateEventId,
    InvalidAppend,
    StoreOutcomeUnknown,
    StoreUnavailable,
    WrongExpectedVersion,
)
from eventledger.eventstore.hashing import verify_chain
from eventledger.eventstore.postgres import (
    IncompatibleSchema,
    PostgresEventStore,
    UnsafeDurability,
    durability_problems,
)
from eventledger.eventstore.records import StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry
from tests.integration.pg_tools import (
    CommitHold,
    InsertHold,
    admin,
    execute,
    fetch,
    terminate,
    wait_until,
    waiting_on,
)
from tests.integration.store_contract import (
    ANY,
    NO_STREAM,
    EventStoreContract,
    new_event,
    new_events,
    new_stream,
)


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str, pg_schema: str) -> None:
        self.url, self.schema = postgres_url, pg_schema

    async def create_store(
        self, tmp_path: Path, *, upcasters: UpcasterRegistry | None = None
    ) -> EventStore:
        return await PostgresEventStore.open(self.url, schema=self.schema, upcasters=upcasters)

    @contextlib.asynccontextmanager
    async def writes_held(self, store: EventStore) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        assert isinstance(store, PostgresEventStore)

        async def all_taken() -> None:
            async def busy() -> bool:
                return store._engine.in_flight > 0

            await wait_until(busy, what="the writer to wait for the counter row")

        async with admin(self.url) as holder:
            await holder.execute("BEGIN")
            await holder.execute(
                sql.SQL("SELECT * FROM {}.event_position FOR UPDATE").format(
                    sql.Identifier(self.schema)
                )
            )
            try:
                yield all_taken
            finally:
                await holder.execute("ROLLBACK")

    async def refuse_marked_rows(self, store: EventStore, marker: str) -> None:
        await execute(
            self.url,
            sql.SQL("ALTER TABLE {}.events ADD CONSTRAINT {} CHECK (NOT data ? {})").format(
                sql.Identifier(self.schema), sql.Identifier(marker), sql.Literal(marker)
            ),
        )

    @contextlib.contextmanager
    def failing_commit(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch, *, applied: bool
    ) -> Iterator[None]:
        send_commit = postgres_write._send_commit

        async def fail(conn: postgres_write.Connection, statements: Sequence[str]) -> None:
            if applied:  # the COMMIT took effect, then the connection was lost
                await send_commit(conn, statements)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        with monkeypatch.context() as patch:
            # The message with the COMMIT fails after it was run, or before it was sent.
            patch.setattr(postgres_write, "_send_commit", fail)
            yield


@pytest.fixture
async def store(postgres_url: str, pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    yield store
    await store.close()


async def table_rows(url: str, schema: str, query: str) -> list[tuple[object, ...]]:
    """Rows of `query`, where `{s}` stands for the schema."""
    return await fetch(url, sql.SQL(query).format(s=sql.Identifier(schema)))


async def assert_positions_gapless(url: str, schema: str) -> list[tuple[object, ...]]:
    rows = await table_rows(url, schema, "SELECT position, id FROM {s}.events ORDER BY position")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    ((last,),) = await table_rows(url, schema, "SELECT last FROM {s}.event_position")
    assert last == len(rows)
    return rows


# -- migrations --------------------------------------------------------------------------


async def test_opening_twice_migrates_once_and_keeps_the_events(
    postgres_url: str, pg_schema: str
) -> None:
    first = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    stream = new_stream()
    try:
        await first.append(stream, expected_version=NO_STREAM, events=new_events(2))
    finally:
        await first.close()
    second = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        assert await second.stream_version(stream) == 2
    finally:
        await second.close()
    rows = await table_rows(
        postgres_url, pg_schema, "SELECT version FROM {s}.schema_migrations ORDER BY version"
    )
    assert rows == [(version,) for version, _ in postgres.MIGRATIONS]


async def test_instances_starting_together_on_a_new_schema_migrate_it_once(
    postgres_url: str, pg_schema: str
) -> None:
    stores = await asyncio.gather(
        *(PostgresEventStore.open(postgres_url, schema=pg_schema) for _ in range(4))
    )
    try:
        results = await asyncio.gather(
            *(s.append(new_stream(), expected_version=ANY, events=[new_event()]) for s in stores)
        )
        assert sorted(r.positions[0] for r in results) == [1, 2, 3, 4]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    rows = await table_rows(
        postgres_url, pg_schema, "SELECT version FROM {s}.schema_migrations ORDER BY version"
    )
    assert rows == [(version,) for version, _ in postgres.MIGRATIONS]


async def test_a_later_migration_is_applied_once_by_the_next_open(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await PostgresEventStore.open(postgres_url, schema=pg_schema)).close()
    next_version = len(postgres.MIGRATIONS) + 1
    later = (*postgres.MIGRATIONS, (next_version, "CREATE TABLE migration_probe (x integer)"))
    monkeypatch.setattr(postgres, "MIGRATIONS", later)
    for _ in range(2):
        await (await PostgresEventStore.open(postgres_url, schema=pg_schema)).close()
    versions = await table_rows(
        postgres_url, pg_schema, "SELECT version FROM {s}.schema_migrations ORDER BY version"
    )
    assert versions == [(v,) for v in range(1, next_version + 1)]
    assert await table_rows(postgres_url, pg_schema, "SELECT x FROM {s}.migration_probe") == []


async def test_a_schema_migrated_by_a_newer_eventledger_is_refused(
    postgres_url: str, pg_schema: str
) -> None:
    await (await PostgresEventStore.open(postgres_url, schema=pg_schema)).close()
    await execute(
        postgres_url,
        sql.SQL("INSERT INTO {}.schema_migrations VALUES (99, now())").format(
            sql.Identifier(pg_schema)
        ),
    )
    with pytest.raises(IncompatibleSchema, match="version 99"):
        await PostgresEventStore.open(postgres_url, schema=pg_schema)


async def test_an_invalid_schema_name_is_refused(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        await PostgresEventStore.open(postgres_url, schema="Robert'); DROP TABLE x;--")


# -- durability and availability ---------------------------------------------------------


async def test_a_server_that_acknowledges_commits_before_they_are_durable_is_refused(
    postgres_url: str, pg_schema: str
) -> None:
    # The session setting is what the store's connections would run with.
    unsafe = make_conninfo(postgres_url, options="-c synchronous_commit=off")
    with pytest.raises(UnsafeDurability, match="synchronous_commit is off"):
        await PostgresEventStore.open(unsafe, schema=pg_schema)
    assert await fetch(postgres_url, "SELECT to_regnamespace(%s)", [pg_schema]) == [(None,)]
    store = await PostgresEventStore.open(unsafe, schema=pg_schema, allow_unsafe_durability=True)
    await store.close()


@pytest.mark.parametrize("setting", ["local", "remote_write", "remote_apply", "on"])
async def test_a_server_that_flushes_commits_on_the_primary_is_accepted(
    postgres_url: str, pg_schema: str, setting: str
) -> None:
    durable = make_conninfo(postgres_url, options=f"-c synchronous_commit={setting}")
    store = await PostgresEventStore.open(durable, schema=pg_schema)
    await store.close()


def test_fsync_off_or_asynchronous_commits_are_durability_problems() -> None:
    assert durability_problems(fsync="on", synchronous_commit="on") == []
    assert durability_problems(fsync="on", synchronous_commit="local") == []
    assert durability_problems(fsync="on", synchronous_commit="remote_write") == []
    assert durability_problems(fsync="on", synchronous_commit="remote_apply") == []
    assert len(durability_problems(fsync="on", synchronous_commit="off")) == 1
    assert len(durability_problems(fsync="off", synchronous_commit="on")) == 1
    assert len(durability_problems(fsync="off", synchronous_commit="off")) == 2


async def test_an_unreachable_server_raises_store_unavailable_within_3_seconds() -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await PostgresEventStore.open(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert loop.time() - started < 3


async def test_a_held_lock_gives_store_unavailable_after_the_lock_timeout(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema, lock_timeout="200ms")
    try:
        async with admin(postgres_url) as blocker:
            await blocker.execute("BEGIN")
            await blocker.execute(
                sql.SQL("SELECT * FROM {}.event_position FOR UPDATE").format(
                    sql.Identifier(pg_schema)
                )
            )
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                await asyncio.wait_for(
                    store.append(new_stream(), expected_version=ANY, events=[new_event()]), 3
                )
            await blocker.execute("ROLLBACK")
        result = await store.append(new_stream(), expected_version=ANY, events=[new_event()])
        assert result.positions == (1,)
    finally:
        await store.close()


async def test_ping_answers_while_open_and_a_closed_store_is_unavailable(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.append(new_stream(), expected_version=ANY, events=[new_event()])


async def test_killed_connections_lose_no_acknowledged_append(
    postgres_url: str, pg_schema: str
) -> None:
    name = f"el-{uuid4().hex[:12]}"
    store = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, application_name=name, max_size=4
    )
    acknowledged: dict[UUID, int] = {}
    unavailable = 0

    async def writer(w: int) -> None:
        nonlocal unavailable
        stream = f"survivor-{w}"
        for version in range(40):
            event = new_event(data={"w": w, "v": version})
            for _ in range(100):  # retry with the same id: idempotent whatever happened
                try:
                    result = await store.append(stream, expected_version=version, events=[event])
                    break
                except StoreUnavailable:
                    unavailable += 1
                    await asyncio.sleep(0.02)  # back off while the pool reconnects
            else:
                raise AssertionError("the store never recovered")
            acknowledged[event.id] = result.positions[0]

    try:
        writers = asyncio.gather(*(writer(w) for w in range(8)))
        for mark in (40, 120, 200):

            async def reached(mark: int = mark) -> bool:
                return len(acknowledged) >= mark

            await wait_until(reached, within=20, what=f"{mark} acknowledged appends")

            async def killed() -> bool:  # the pool may be between connections right now
                return await terminate(postgres_url, name) >= 1

            await wait_until(killed, within=10, what="a store connection to terminate")
        await asyncio.wait_for(writers, 60)
        await store.ping()
        waiting = asyncio.create_task(store.wait_for_events(await store.head_position(), 10))
        await store.append(new_stream(), expected_version=ANY, events=[new_event()])
        assert await asyncio.wait_for(waiting, 5)
    finally:
        await store.close()
    stored = dict(
        (event_id, position)
        for position, event_id in await assert_positions_gapless(postgres_url, pg_schema)
    )
    assert len(acknowledged) == 8 * 40
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
    print(f"appends that saw StoreUnavailable and were retried: {unavailable}")


async def test_the_listener_reconnects_after_its_connection_is_killed(
    postgres_url: str, pg_schema: str
) -> None:
    name = f"el-{uuid4().hex[:12]}"
    follower = await PostgresEventStore.open(postgres_url, schema=pg_schema, application_name=name)
    writer = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        head = await follower.head_position()

        async def listening() -> bool:
            rows = await fetch(
                postgres_url,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [f"{name}:listener"],
            )
            return bool(rows[0][0] == 1)

        await wait_until(listening, what="the listener")
        assert await terminate(postgres_url, f"{name}:listener") == 1
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(follower.wait_for_events(head, 10))

        async def settled() -> bool:
            return follower._watch.waiters == 1

        await wait_until(settled, what="the waiter to wait")
        appended_at = loop.time()
        await writer.append(new_stream(), expected_version=ANY, events=[new_event()])
        assert await asyncio.wait_for(waiting, 5)
        assert loop.time() - appended_at < 2.5  # the reconnect re-reads the head, or the 1 s tick
        await wait_until(listening, what="the listener to be back")
    finally:
        await asyncio.gather(follower.close(), writer.close())


async def test_data_jsonb_cannot_store_is_refused_before_anything_is_written(
    store: PostgresEventStore,
) -> None:
    stream = new_stream()
    refused: list[dict[str, Any]] = [
        {"amount": float("nan")},
        {"when": datetime.now(UTC)},
        {"bad": "\ud800"},
        {"nul": "a\x00b"},
        {"nested": {"key\x00": 1}},
    ]
    for data in refused:
        with pytest.raises(InvalidAppend):
            await store.append(stream, expected_version=ANY, events=[new_event(data=data)])
    assert await store.stream_version(stream) == 0
    fine = {"literal": "\\u0000 is text", "view": MappingProxyType({"a": 1}), "ü": "€"}
    event = new_event(data=fine)
    await store.append(stream, expected_version=NO_STREAM, events=[event])
    stored = await store.get_event(event.id)
    assert stored is not None
    assert stored.data == {"literal": "\\u0000 is text", "view": {"a": 1}, "ü": "€"}


# -- group commit --------------------------------------------------------------------------


async def test_concurrent_appends_are_committed_in_groups(store: PostgresEventStore) -> None:
    commits = store.commits
    appends = [
        store.append(new_stream(), expected_version=NO_STREAM, events=[new_event()])
        for _ in range(50)
    ]
    results = await asyncio.gather(*appends)
    assert sorted(p for r in results for p in r.positions) == list(range(1, 51))
    assert store.commits - commits < 10
    assert store.appends_written == 50


async def test_an_id_committed_by_another_instance_meanwhile_is_a_duplicate_not_a_gap(
    postgres_url: str, pg_schema: str
) -> None:
    # Two instances append the same event id to different streams at the same moment. Each
    # checks the id before the other committed; the second's INSERT then hits the unique id.
    first = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, application_name="el-first", lock_timeout="20s"
    )
    second = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, application_name="el-second", lock_timeout="20s"
    )
    hold = InsertHold(postgres_url, pg_schema)
    await hold.install()
    event = new_event()
    try:
        await hold.hold()
        winning = asyncio.create_task(
            first.append(new_stream("held"), expected_version=ANY, events=[event])
        )
        await wait_until(lambda: waiting_on(postgres_url, "el-first", "advisory"))
        losing = asyncio.create_task(
            second.append_batch(
                [
                    StreamAppend(new_stream("free"), ANY, [event]),
                    StreamAppend(new_stream("free"), ANY, [new_event()]),
                ]
            )
        )
        bystander = asyncio.create_task(
            second.append(new_stream("free"), expected_version=ANY, events=[new_event()])
        )
        await wait_until(lambda: waiting_on(postgres_url, "el-second"))
        await hold.release()
        assert (await asyncio.wait_for(winning, 5)).positions == (1,)
        with pytest.raises(DuplicateEventId):
            await asyncio.wait_for(losing, 5)
        assert (await asyncio.wait_for(bystander, 5)).positions == (2,)
    finally:
        await hold.release()
        await asyncio.gather(first.close(), second.close())
    assert len(await assert_positions_gapless(postgres_url, pg_schema)) == 2


async def test_a_group_is_two_messages_to_the_server(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BEGIN and its reads in one message, INSERT, COMMIT and NOTIFY in the other: one send
    # and one wait each, whatever the group holds.
    await store.append(new_stream(), expected_version=NO_STREAM, events=[new_event()])  # warm
    sent: list[Sequence[str]] = []
    send = postgres_write._send

    async def counting(conn: postgres_write.Connection, statements: Sequence[str]) -> Any:
        sent.append(statements)
        return await send(conn, statements)

    monkeypatch.setattr(postgres_write, "_send", counting)
    commits = store.commits
    await asyncio.gather(
        *(
            store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
            for _ in range(20)
        )
    )
    assert len(sent) == 2 * (store.commits - commits)
    assert [s[0] for s in sent[:2]] == ["BEGIN", sent[1][0]]
    assert "COMMIT" in sent[1]


async def test_event_data_with_quotes_and_backslashes_reads_back_as_written(
    store: PostgresEventStore,
) -> None:
    # A group's rows travel inside its message as an SQL string constant.
    awkward = {"quote": "it's", "both": "\\'", "e": "E'x'", "end": "\\", "dollar": "$$x$$"}
    stream = new_stream()
    await store.append(stream, expected_version=NO_STREAM, events=[new_event(data=awkward)])
    (stored,) = await store.read_stream(stream)
    assert stored.data == awkward


async def test_a_writer_whose_session_lost_its_statements_prepares_them_again(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema, max_size=1)
    stream = new_stream()
    try:
        await store.append(stream, expected_version=NO_STREAM, events=[new_event()])
        async with store._pool.connection() as conn:  # the writer's: the pool's only one
            await conn.execute("DEALLOCATE ALL")
        more = await store.append(stream, expected_version=1, events=[new_event()])
        assert more.first_version == 2
    finally:
        await store.close()


async def test_a_bulk_append_is_copied_and_reads_back_as_written(
    store: PostgresEventStore,
) -> None:
    # Groups of COPY_ROWS rows or more are written by COPY: its text format reads
    # backslashes specially, and JSON text is full of them.
    awkward = {
        "path": "C:\\temp\\new",
        "quote": 'say "hi"',
        "escapes": "tab\there\nnewline\\u0041",
        "ü": "€ 𝄞",
        "nested": {"list": [1, "\\", {"x": None}], "float": 1.5},
    }
    events = [new_event(data={**awkward, "n": n}) for n in range(postgres_write.COPY_ROWS)]
    stream = new_stream()
    result = await store.append(stream, expected_version=NO_STREAM, events=events)
    assert len(result.positions) == postgres_write.COPY_ROWS
    stored = await store.read_stream(stream, from_version=1, limit=postgres_write.COPY_ROWS)
    assert [e.data for e in stored] == [e.data for e in events]
    assert [e.id for e in stored] == [e.id for e in events]
    assert (await verify_chain(store)).broken_at is None


async def test_a_bulk_append_whose_copy_is_refused_fails_alone(
    postgres_url: str, pg_schema: str, store: PostgresEventStore
) -> None:
    # A rule only the database knows refuses one event of a bulk append (written by COPY):
    # that append fails alone, the bulk append committed in the same group is written.
    marker = f"poison{uuid4().hex[:8]}"
    await execute(
        postgres_url,
        sql.SQL("ALTER TABLE {}.events ADD CONSTRAINT {} CHECK (NOT data ? {})").format(
            sql.Identifier(pg_schema), sql.Identifier(marker), sql.Literal(marker)
        ),
    )
    count = postgres_write.COPY_ROWS
    bad = [*new_events(count - 1), new_event(data={marker: True})]
    refused, written = await asyncio.gather(
        store.append(new_stream(), expected_version=NO_STREAM, events=bad),
        store.append(new_stream(), expected_version=NO_STREAM, events=new_events(count)),
        return_exceptions=True,
    )
    assert isinstance(refused, InvalidAppend)
    assert not isinstance(written, BaseException) and len(written.positions) == count
    assert await store.get_event(bad[0].id) is None
    assert len(await assert_positions_gapless(postgres_url, pg_schema)) == count


async def test_a_backend_terminated_inside_commit_is_an_unknown_outcome_and_loses_nothing(
    postgres_url: str, pg_schema: str
) -> None:
    name = f"el-{uuid4().hex[:12]}"
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema, application_name=name)
    hold = CommitHold(postgres_url, pg_schema)
    await hold.install()
    held, bystander = new_stream("held"), new_stream("free")
    events = new_events(2)
    try:
        before = await store.append(bystander, expected_version=NO_STREAM, events=[new_event()])
        await hold.hold()
        committing = asyncio.create_task(
            store.append(held, expected_version=NO_STREAM, events=events)
        )
        await wait_until(lambda: waiting_on(postgres_url, name, "advisory"), what="the COMMIT")
        assert await terminate(postgres_url, name) >= 1
        with pytest.raises(StoreOutcomeUnknown):
            await asyncio.wait_for(committing, 10)
        await hold.release()
        # The retry with the same ids settles it: the COMMIT never finished, so it writes.
        retried = await store.append(held, expected_version=NO_STREAM, events=events)
        assert not retried.replayed
        assert retried.positions == (before.positions[0] + 1, before.positions[0] + 2)
        await store.ping()
        after = await store.append(bystander, expected_version=1, events=[new_event()])
        assert after.first_version == 2
    finally:
        await hold.release()
        await store.close()
    assert len(await assert_positions_gapless(postgres_url, pg_schema)) == 4


# -- least privileges ----------------------------------------------------------------------


async def test_a_role_with_only_the_documented_grants_can_run_the_store(
    postgres_url: str, pg_schema: str
) -> None:
    await (await PostgresEventStore.open(postgres_url, schema=pg_schema)).close()
    role = f"el_{uuid4().hex[:16]}"
    names = {"role": sql.Identifier(role), "s": sql.Identifier(pg_schema)}
    grants = [
        "CREATE ROLE {role} LOGIN",
        "GRANT USAGE ON SCHEMA {s} TO {role}",
        "GRANT SELECT ON {s}.schema_migrations TO {role}",
        "GRANT SELECT, INSERT ON {s}.events TO {role}",
        "GRANT SELECT, UPDATE ON {s}.event_position TO {role}",
    ]
    async with admin(postgres_url) as conn:
        for grant in grants:
            await conn.execute(sql.SQL(grant).format(**names))
    try:
        store = await PostgresEventStore.open(
            make_conninfo(postgres_url, user=role), schema=pg_schema
        )
        try:
            stream = new_stream()
            head = await store.head_position()
            waiting = asyncio.create_task(store.wait_for_events(head, 10))
            result = await store.append(stream, expected_version=NO_STREAM, events=new_events(2))
            assert await asyncio.wait_for(waiting, 5)
            with pytest.raises(WrongExpectedVersion):
                await store.append(stream, expected_version=NO_STREAM, events=[new_event()])
            assert [e.position for e in await store.read_stream(stream)] == list(result.positions)
            assert len(await store.read_all(after=head)) == 2
        finally:
            await store.close()
    finally:
        async with admin(postgres_url) as conn:
            await conn.execute(sql.SQL("DROP OWNED BY {role}").format(**names))
            await conn.execute(sql.SQL("DROP ROLE {role}").format(**names))
