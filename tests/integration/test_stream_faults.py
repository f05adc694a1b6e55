"""The stream service over a SQLite store whose disk fails: what an HTTP client is told.

A COMMIT that fails is 503 `outcome-unknown` (the append may be stored), and sending the same
append again settles it; a full disk is 503 on appends and on `/health`, until space is back.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.eventstore import sqlite_write
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from tests.integration.sqlite_faults import io_error, writer_connection


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.ping()
    yield store
    await store.close()


@pytest.fixture
async def client(store: SqliteEventStore) -> AsyncIterator[httpx.AsyncClient]:
    async def open_store() -> EventStore:
        return store

    app = create_app(open_store=open_store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


def body(count: int = 2) -> dict[str, Any]:
    events = [{"id": str(uuid.uuid4()), "type": "Happened", "data": {"n": n}} for n in range(count)]
    return {"expected_version": "no_stream", "events": events}


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
async def test_a_failed_commit_is_503_outcome_unknown_and_the_same_append_again_settles_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    def commit(conn: sqlite3.Connection) -> None:
        if applied:
            conn.execute("COMMIT")
        raise io_error("SQLITE_IOERR_FSYNC")

    append = body()
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_write, "_run_commit", commit)
        failed = await client.post("/streams/faulty", json=append)
    assert failed.status_code == 503
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.headers["retry-after"] == "1"
    problem = failed.json()
    assert problem["type"].endswith("outcome-unknown")
    assert "same event ids" in problem["detail"]
    again = await client.post("/streams/faulty", json=append)
    assert again.status_code == (200 if applied else 201)
    assert again.json()["positions"] == [1, 2]
    events = (await client.get("/streams/faulty")).json()["events"]
    assert [e["id"] for e in events] == [e["id"] for e in append["events"]]


async def test_a_full_disk_is_503_on_appends_and_on_health_until_space_is_back(
    client: httpx.AsyncClient, store: SqliteEventStore
) -> None:
    assert (await client.get("/health")).status_code == 200
    writer = writer_connection(store)
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = {"expected_version": "any", "events": [{"type": "Big", "data": {"x": "y" * 30_000}}]}
    refused = await client.post("/streams/big", json=big)
    assert refused.status_code == 503
    assert "SQLITE_FULL" in refused.json()["detail"]
    health = await client.get("/health")
    assert health.status_code == 503
    assert "full" in health.json()["detail"]
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/streams/big", json=big)).status_code == 201
