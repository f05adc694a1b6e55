"""The index of transaction ids (`EventStore.read_transaction`) on the SQL backends: the
migration that adds it indexes a log written before it, once, and a lookup is an index
search, not a scan of the log. (What every backend answers: the store contract suite.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from uuid import uuid4

import pytest
from psycopg import sql

from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.sqlite import SqliteEventStore
from tests.integration.pg_tools import execute, fetch
from tests.integration.store_contract import NO_STREAM, new_event, new_stream


async def _write_transactions(store: SqliteEventStore | PostgresEventStore) -> list[str]:
    ids = [str(uuid4()) for _ in range(3)]
    for tx in ids:
        stream = new_stream("account")
        events = [new_event("Moved", {"transaction_id": tx, "amount": 1})]
        await store.append(stream, expected_version=NO_STREAM, events=events)
    return ids


async def test_sqlite_migration_indexes_a_log_written_before_it_once(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    ids = await _write_transactions(store)
    await store.close()
    # The file as version 2 left it: no index.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX events_by_transaction")
        conn.execute("DROP TABLE personal_data_keys")  # migration 4's, after this one
        conn.execute("PRAGMA user_version = 2")
    store = SqliteEventStore(path)
    try:
        for tx in ids:
            assert [e.data["transaction_id"] for e in await store.read_transaction(tx)] == [tx]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 3
        ((plan,),) = [
            row[3:]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT position FROM events"
                " WHERE json_extract(data, '$.transaction_id') = ?"
                " AND stream >= 'account-' AND stream < 'account.' ORDER BY position",
                (ids[0],),
            )
        ]
        assert "USING INDEX events_by_transaction" in plan


async def test_postgres_migration_indexes_a_log_written_before_it_once(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    ids = await _write_transactions(store)
    await store.close()
    ident = sql.Identifier(pg_schema)
    await execute(postgres_url, sql.SQL("DROP INDEX {}.events_by_transaction").format(ident))
    await execute(
        postgres_url, sql.SQL("DELETE FROM {}.schema_migrations WHERE version = 3").format(ident)
    )
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        for tx in ids:
            assert [e.data["transaction_id"] for e in await store.read_transaction(tx)] == [tx]
    finally:
        await store.close()
    rows = await fetch(
        postgres_url,
        "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
        [pg_schema, "events_by_transaction"],
    )
    assert rows == [(1,)]


@pytest.mark.parametrize("events", [2000])
async def test_postgres_finds_a_transaction_by_the_index(
    postgres_url: str, pg_schema: str, events: int
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        stream = new_stream("account")
        batch = [new_event("Moved", {"transaction_id": str(uuid4())}) for _ in range(events)]
        await store.append(stream, expected_version=NO_STREAM, events=batch)
    finally:
        await store.close()
    ident = sql.Identifier(pg_schema)
    await execute(postgres_url, sql.SQL("ANALYZE {}.events").format(ident))
    plan = await fetch(
        postgres_url,
        sql.SQL(
            "EXPLAIN SELECT position FROM {}.events WHERE (data->>'transaction_id') = %s"
            " AND starts_with(stream, 'account-') ORDER BY position LIMIT 100"
        ).format(ident),
        [batch[7].data["transaction_id"]],
    )
    assert "events_by_transaction" in " ".join(str(row[0]) for row in plan)
