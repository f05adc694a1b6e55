"""A read side that never answers wrong: during a rebuild (started by another instance sharing
the read model) reads answer 503 `rebuilding`, never a 404 or an empty list; no read shows
part of an atomic append; `/health` says 503, with the reason, when the read model database
cannot serve, and says it within a second."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.readside.db import SqliteReadModelDB, open_readmodel_db
from eventledger.services.statistics.app import create_app as create_statistics
from tests.e2e.harness import fresh_postgres_database
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import (
    Ledger,
    OpenDB,
    StreamServer,
    caught_up,
    get,
    runner_of,
    serving,
)
from tests.integration.stream_support import until

clock, stream, log = support.clock, support.stream, support.log
open_db = support.open_db_fixture("accounting")


def accounting(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_accounting(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.5, head_poll_interval=0.05
    )


async def test_a_second_instance_answers_rebuilding_while_the_first_rebuilds_never_404(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    await log.open("a")
    head = await log.deposit("a", 100)
    first, second = accounting(stream, open_db), accounting(stream, open_db)
    async with serving(first) as one, serving(second) as two:
        await caught_up(first, head)
        await caught_up(second, head)
        assert (await get(two, "/accounts/a"))["balance"] == 100
        # The stream service is away: the replay cannot go on, the rebuild stays in progress.
        await stream.stop()
        assert (await one.post("/admin/rebuild", json={})).status_code == 202
        for path, headers in [
            ("/accounts/a", {}),
            ("/accounts/a", {"X-Min-Position": str(head)}),
            ("/accounts", {}),
            ("/accounts/a/transactions", {}),
        ]:
            response = await two.get(path, headers=headers)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["type"] == "rebuilding"
            assert response.headers["retry-after"].isdigit()
        health = await two.get("/health")
        assert health.status_code == 503
        assert health.headers["content-type"] == "application/problem+json"
        assert (health.json()["type"], health.json()["state"]) == ("rebuilding", "rebuilding")
        assert "rebuilt" in health.json()["reason"]
        await stream.start()
        await until(lambda: not runner_of(first).rebuilding and runner_of(first).position == head)
        response = await two.get("/accounts/a", headers={"X-Min-Position": str(head)})
        assert response.status_code == 200, response.text
        assert response.json()["balance"] == 100
        assert (await two.get("/health")).status_code == 200


async def test_a_transfer_is_never_seen_half_applied_even_one_event_per_transaction(
    stream: StreamServer, log: Ledger, tmp_path: Path
) -> None:
    app = create_statistics(
        stream_url=stream.url,
        open_db=lambda: SqliteReadModelDB(tmp_path / "stats.db", namespace="statistics"),
        batch_size=1,
        head_poll_interval=0.05,
    )
    async with serving(app) as client:
        await log.open("a")
        await log.open("b")
        head = await log.deposit("a", 1000)
        await caught_up(app, head)
        seen: set[int] = set()
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                body = await get(client, "/stats")
                seen.add(body["currencies"]["EUR"]["total_balance"])

        watcher = asyncio.create_task(watch())
        for n in range(20):
            head = await log.transfer("a" if n % 2 == 0 else "b", "b" if n % 2 == 0 else "a", 7)
        await caught_up(app, head)
        done.set()
        await watcher
        assert seen == {1000}  # never 993: a TransferSent without its TransferReceived
        events = await stream.store.read_all(after=head - 2)
        assert [e.batch_end for e in events] == [head, head]


# -- health when the read model database cannot serve ----------------------------------------


async def health_within_a_second(client: httpx.AsyncClient) -> httpx.Response:
    started = time.monotonic()
    response = await client.get("/health")
    assert time.monotonic() - started < 1.0
    return response


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_health_is_503_once_the_sqlite_read_model_file_is_gone_and_logs_it_once(
    stream: StreamServer, log: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "accounting.db"
    app = accounting(stream, lambda: SqliteReadModelDB(path, namespace="accounting"))
    async with serving(app) as client:
        head = await log.open("a")
        await caught_up(app, head)
        assert (await health_within_a_second(client)).status_code == 200
        caplog.clear()
        await asyncio.to_thread(remove_database, path)
        for _ in range(5):
            response = await health_within_a_second(client)
            assert response.status_code == 503
            body = response.json()
            assert (body["type"], body["state"]) == ("readmodel-unavailable", "unavailable")
            assert body["database"]["reachable"] is False
            assert str(path) in body["reason"]
        said = [r for r in caplog.records if "cannot serve" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR
        # No reader makes a new, empty database and answers 404 for an account that exists.
        for _ in range(5):
            assert (await client.get("/accounts/a")).status_code in (200, 503)


async def test_health_is_503_within_a_second_once_the_postgresql_read_model_is_dropped(
    stream: StreamServer, log: Ledger, postgres_url: str
) -> None:
    with fresh_postgres_database(postgres_url) as url:
        app = accounting(stream, lambda: open_readmodel_db(url, namespace="accounting"))
        async with serving(app) as client:
            head = await log.open("a")
            await caught_up(app, head)
            assert (await health_within_a_second(client)).status_code == 200
            import psycopg
            from psycopg import sql

            name = url.rsplit("/", 1)[1]
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            for _ in range(3):
                response = await health_within_a_second(client)
                assert response.status_code == 503, response.text
                assert response.json()["database"]["reachable"] is False
            read = await client.get("/accounts/a")
            assert read.status_code == 503
            assert read.json()["type"] == "readmodel-unavailable"
