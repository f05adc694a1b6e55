"""`eventledger verify` and the hash chain on real databases: an event edited behind the
store's back is named by its position, on SQLite and PostgreSQL; a store written by the
previous schema version gets its chain once when opened, and verifies."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
from psycopg import sql
from typer.testing import CliRunner

from eventledger.cli import app
from eventledger.eventstore.codec import format_time
from eventledger.eventstore.hashing import GENESIS, verify_chain
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.postgres_schema import MIGRATIONS, migrate
from eventledger.eventstore.records import StreamAppend
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.integration.pg_tools import admin, execute
from tests.integration.store_contract import ANY, NO_STREAM, new_event, new_events, new_stream

runner = CliRunner()


async def fill(store: SqliteEventStore | PostgresEventStore) -> None:
    """Eight events in four appends, one of them a batch over two streams."""
    await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
    await store.append_batch(
        [
            StreamAppend(new_stream(), NO_STREAM, [new_event(data={"amount": 5, "f": 1e20})]),
            StreamAppend(new_stream(), NO_STREAM, new_events(2)),
        ]
    )
    await store.append(new_stream(), expected_version=ANY, events=new_events(3))


async def verify(*args: str) -> tuple[int, str]:
    """Run `eventledger verify` (in a thread: the command runs its own event loop)."""
    result = await asyncio.to_thread(runner.invoke, app, ["verify", *args])
    return result.exit_code, " ".join(result.output.split())


# -- SQLite, through the command line --------------------------------------------------------


async def test_verify_passes_on_an_intact_sqlite_store_and_prints_the_head(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        await fill(store)
        (head,) = await store.read_stored(after=7)
    finally:
        await store.close()
    code, out = await verify("--data-dir", str(tmp_path))
    assert code == 0, out
    assert f"verified 8 events: head position 8, hash {head.hash}" in out
    code, out = await verify("--store", f"sqlite:///{tmp_path / 'events.db'}")
    assert code == 0 and "head position 8" in out


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE events SET data = json_set(data, '$.n', 99) WHERE position = 5",
        "UPDATE events SET stream = 'somewhere-else' WHERE position = 5",
        "UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE position = 5",
        "DELETE FROM events WHERE position = 5",
    ],
    ids=["data", "stream", "recorded_at", "deleted"],
)
async def test_verify_names_the_position_of_an_event_edited_in_the_sqlite_file(
    tmp_path: Path, edit: str
) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        await fill(store)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        conn.execute(edit)
    finally:
        conn.close()
    code, out = await verify("--data-dir", str(tmp_path))
    assert code == 1
    assert "the hash chain breaks at position 5" in out
    assert "4 events before it verified" in out


async def test_verify_of_a_missing_postgres_server_is_one_line_and_exit_1() -> None:
    code, out = await verify("--store", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 1
    assert "cannot open the event store" in out


async def test_a_sqlite_store_of_the_previous_schema_gets_its_chain_when_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in SQLITE_MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        at = format_time(datetime.now(UTC))
        for position in range(1, 6):
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (position, str(uuid4()), f"old-{position % 2}", (position + 1) // 2, "Happened",
                 1, json.dumps({"n": position, "f": 2.5}), "{}", at),
            )  # fmt: skip
    finally:
        conn.close()
    store = SqliteEventStore(path)
    try:
        old = await store.read_stored(after=0)
        assert [e.batch_end for e in old] == [1, 2, 3, 4, 5]
        assert all(len(e.hash) == 64 for e in old)
        more = await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
        assert more.positions == (6, 7)
        report = await verify_chain(store)
        assert (report.broken_at, report.checked, report.head_position) == (None, 7, 7)
    finally:
        await store.close()
    code, out = await verify("--data-dir", str(tmp_path))
    assert code == 0 and "head position 7" in out


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_verify_names_the_position_of_an_event_edited_in_postgresql(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        await fill(store)
        intact = await verify_chain(store, page=3)
        assert (intact.broken_at, intact.checked, intact.head_position) == (None, 8, 8)
        await execute(
            postgres_url,
            sql.SQL(
                "UPDATE {}.events SET data = jsonb_set(data, '{{amount}}', '6') WHERE position = 3"
            ).format(sql.Identifier(pg_schema)),
        )
        edited = await verify_chain(store, page=3)
        assert (edited.broken_at, edited.checked) == (3, 2)
    finally:
        await store.close()


async def test_a_postgresql_store_of_the_previous_schema_gets_its_chain_when_opened(
    postgres_url: str, pg_schema: str
) -> None:
    async with admin(postgres_url) as conn:
        await migrate(conn, pg_schema, MIGRATIONS[:1])
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        for position in range(1, 5):
            await conn.execute(
                "INSERT INTO events (position, id, stream, stream_version, type, schema_version,"
                " data, metadata) VALUES (%s, %s, %s, 1, 'Happened', 1, %s::jsonb, '{}')",
                [position, uuid4(), f"old-{position}", json.dumps({"f": [1e20, 0.5, -0.0]})],
            )
        await conn.execute("UPDATE event_position SET last = 4")
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        old = await store.read_stored(after=0)
        assert [e.batch_end for e in old] == [1, 2, 3, 4]
        more = await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
        assert more.positions == (5, 6)
        report = await verify_chain(store)
        assert (report.broken_at, report.checked, report.head_position) == (None, 6, 6)
        assert report.head_hash != GENESIS
    finally:
        await store.close()


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """A fresh database (the command line uses the default schema), dropped afterwards."""
    name = f"t_{uuid4().hex}"
    async with admin(postgres_url) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    finally:
        async with admin(postgres_url) as conn:
            await conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def test_verify_on_the_command_line_names_an_event_edited_in_postgresql(
    pg_database: str,
) -> None:
    store = await PostgresEventStore.open(pg_database)
    try:
        await fill(store)
    finally:
        await store.close()
    code, out = await verify("--store", pg_database)
    assert code == 0 and "verified 8 events: head position 8" in out, out
    await execute(pg_database, "UPDATE eventledger.events SET type = 'Forged' WHERE position = 6")
    code, out = await verify("--store", pg_database)
    assert code == 1
    assert "the hash chain breaks at position 6" in out
