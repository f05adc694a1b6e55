"""Blue/green rebuilds of the read models: the new version is built beside the live one, which
answers every read meanwhile (never 503 `rebuilding`); reads switch to the new version at
once, positions never go backwards, and the old version is dropped; a build that halts leaves
the old version live and says why; several instances sharing a PostgreSQL read model all
switch, and a build whose builder stopped is resumed. Each test runs on SQLite and PostgreSQL
unless it says otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg import sql

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.readside.bluegreen import BlueGreen
from eventledger.services.readside.db import ReadModelDB, Session, SqliteReadModelDB
from eventledger.services.readside.projection import EventRejected, Projection
from eventledger.services.readside.versions import versions_of
from eventledger.services.statistics.app import create_app as create_statistics
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


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDB]:
    """As readmodel_support's, and the versions a test made are dropped after it."""
    if request.param == "sqlite":
        yield lambda: SqliteReadModelDB(tmp_path / "readmodel.db", namespace="accounting")
        return
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("pg_schema")
    from eventledger.services.readside.db import open_readmodel_db

    yield lambda: open_readmodel_db(url, namespace=schema)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{schema}\\_\\_v%",)
        ).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        for table in ("readmodel_live", "readmodel_builds"):
            with contextlib.suppress(psycopg.Error):
                conn.execute(
                    sql.SQL("DELETE FROM readmodel_control.{} WHERE namespace = %s").format(
                        sql.Identifier(table)
                    ),
                    (schema,),
                )


def accounting(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_accounting(
        stream_url=stream.url, open_db=open_db, min_position_wait=5.0, head_poll_interval=0.05
    )


def bluegreen_of(app: FastAPI) -> BlueGreen:
    bluegreen: BlueGreen = app.state.bluegreen
    return bluegreen


async def busy_day(log: Ledger) -> int:
    for account in ("a", "b", "c"):
        await log.open(account)
    await log.deposit("a", 1000)
    await log.transfer("a", "b", 250)
    await log.withdraw("b", 50)
    return await log.deposit("c", 5)


async def accounts(client: httpx.AsyncClient) -> dict[str, Any]:
    items = (await get(client, "/accounts", limit=1000))["items"]
    return {
        a["account_id"]: (a, (await get(client, f"/accounts/{a['account_id']}/transactions")))
        for a in items
    }


async def switched(app: FastAPI, version: int, *, within: float = 20.0) -> None:
    await until(
        lambda: (
            runner_of(app).version == version
            and (b := bluegreen_of(app).build) is not None
            and b.state == "done"
        ),
        within=within,
    )


def present(open_db: OpenDB) -> list[int]:
    db = open_db()
    try:
        return versions_of(db, name="accounting").present()
    finally:
        db.close()


# -- building beside, switching, dropping ------------------------------------------------------


async def test_the_old_version_serves_while_the_new_one_is_built_then_reads_switch(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        before = await accounts(client)
        # The stream service is away: the new version cannot replay, the old one serves.
        await stream.stop()
        response = await client.post("/admin/rebuild", json={"mode": "blue-green"})
        assert response.status_code == 202, response.text
        assert response.headers["location"] == "/admin/rebuild"
        build = response.json()["blue_green"]
        assert (build["state"], build["version"], build["from_version"]) == ("building", 2, 1)
        assert response.json()["live_version"] == 1
        for _ in range(3):
            assert await accounts(client) == before
            answer = await client.get("/accounts/a", headers={"X-Min-Position": str(head)})
            assert answer.status_code == 200 and answer.json()["balance"] == 750
        health = await get(client, "/health")
        assert health["status"] == "ok" and health["blue_green"]["state"] == "building"
        status = await get(client, "/admin/rebuild")
        assert status["blue_green"]["state"] == "building" and status["live_version"] == 1
        # A second rebuild, of either kind, waits for this one.
        for body in ({"mode": "blue-green"}, {}):
            refused = await client.post("/admin/rebuild", json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["type"].endswith("rebuild-in-progress")
        await stream.start()
        await switched(app, 2)
        assert runner_of(app).position >= head
        assert await accounts(client) == before
        assert await get(client, "/admin/rebuild") == {
            "blue_green": {**bluegreen_of(app).to_json(), "state": "done"},  # type: ignore[dict-item]
            "live_version": 2,
        }
        # The new version follows the log; the old one is gone.
        later = await log.deposit("a", 1)
        answer = await client.get("/accounts/a", headers={"X-Min-Position": str(later)})
        assert answer.json()["balance"] == 751
        await until(lambda: present(open_db) == [2])
        metrics = (await client.get("/metrics")).text
        assert 'eventledger_projection_version{projection="accounting"} 2.0' in metrics
        assert 'eventledger_projection_bluegreen_switches{projection="accounting"} 1.0' in metrics
    # A restart opens the live version, not the base one.
    again = accounting(stream, open_db)
    async with serving(again) as client:
        assert runner_of(again).version == 2
        assert (await get(client, "/accounts/a"))["balance"] == 751


async def test_reads_and_commands_go_on_through_the_build_and_the_switch_never_503(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    await log.open("a")
    balance = 0
    for _ in range(150):
        await log.deposit("a", 1)
        balance += 1
    head = await log.deposit("a", 1)
    balance += 1
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        assert (await client.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        seen_positions: list[int] = []
        answers = 0
        while runner_of(app).version == 1 or answers < 5:
            head = await log.deposit("a", 1)
            balance += 1
            response = await client.get("/accounts/a", headers={"X-Min-Position": str(head)})
            assert response.status_code == 200, response.text
            assert response.json()["balance"] == balance  # exactly, never older nor newer
            seen_positions.append(runner_of(app).position)
            answers += 1
            assert answers < 2000, bluegreen_of(app).to_json()
        assert seen_positions == sorted(seen_positions)  # never backwards across the switch
        await switched(app, 2)


class _Buggy:
    """The projection with a bug that only a replay meets: it refuses the event at `bad`."""

    def __init__(self, inner: Projection, bad: int) -> None:
        self.inner, self.bad = inner, bad
        self.name, self.migrations = inner.name, inner.migrations

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        for index, event in enumerate(events):
            if event.position == self.bad:
                rejected = self.inner.apply(session, events[:index])
                return rejected or EventRejected(event, "a bug met only by a replay")
        return self.inner.apply(session, events)

    def reset(self, session: Session) -> None:
        self.inner.reset(session)


async def test_a_build_that_halts_fails_with_its_reason_and_the_old_version_stays_live(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    await log.open("a")
    bad = await log.deposit("a", 10)
    head = await log.deposit("a", 20)
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        runner = runner_of(app)
        runner.projection = _Buggy(runner.projection, bad)
        assert (await client.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        await until(lambda: (b := bluegreen_of(app).build) is not None and b.state == "failed")
        status = (await get(client, "/admin/rebuild"))["blue_green"]
        assert status["state"] == "failed"
        assert f"halted at position {bad}" in status["error"]
        assert "a bug met only by a replay" in status["error"]
        assert runner.version == 1 and runner.halted is None
        assert (await get(client, "/accounts/a"))["balance"] == 30
        later = await log.deposit("a", 1)
        await caught_up(app, later)
        assert (await get(client, "/accounts/a"))["balance"] == 31
        await until(lambda: present(open_db) == [1])  # the failed version is dropped
        health = await get(client, "/health")
        assert health["blue_green"]["state"] == "failed"
        # Fixed, a new build may go (once the failed one has let go of its lease).
        await until(lambda: not bluegreen_of(app).active)
        runner.projection = runner.projection.inner
        again = await client.post("/admin/rebuild", json={"mode": "blue-green"})
        assert again.status_code == 202 and again.json()["blue_green"]["version"] == 3
        await switched(app, 3)
        assert (await get(client, "/accounts/a"))["balance"] == 31


async def test_a_build_stopped_with_its_process_is_resumed_by_the_next_one(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    first = accounting(stream, open_db)
    async with serving(first) as client:
        await caught_up(first, head)
        before = await accounts(client)
        await stream.stop()
        assert (await client.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
    await stream.start()
    second = accounting(stream, open_db)
    async with serving(second) as client:
        assert runner_of(second).version == 1
        assert await accounts(client) == before
        await switched(second, 2)
        assert await accounts(client) == before
        await until(lambda: present(open_db) == [2])


async def test_a_bad_rebuild_body_is_refused_and_changes_nothing(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await log.open("a")
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        for body, kind, status in (
            ({"mode": "purple"}, "validation-error", 422),
            ({"mode": "blue-green", "extra": 1}, "validation-error", 422),
            ([], "validation-error", 422),
        ):
            response = await client.post("/admin/rebuild", json=body)
            assert response.status_code == status, response.text
            assert response.json()["type"].endswith(kind)
        response = await client.post(
            "/admin/rebuild", content=b"mode=blue-green", headers={"content-type": "text/plain"}
        )
        assert response.status_code == 415
        assert bluegreen_of(app).build is None and runner_of(app).version == 1
        assert "blue_green" not in await get(client, "/health")
        assert await get(client, "/admin/rebuild") == {"blue_green": None, "live_version": 1}


# -- several instances sharing one PostgreSQL read model ---------------------------------------


@pytest.mark.parametrize("open_db", ["postgres"], indirect=True)
async def test_instances_sharing_a_postgres_read_model_all_switch_and_one_builds(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    first, second = accounting(stream, open_db), accounting(stream, open_db)
    async with serving(first) as one, serving(second) as two:
        await caught_up(first, head)
        await caught_up(second, head)
        before = await accounts(two)
        await stream.stop()
        assert (await one.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        # The other instance sees the build (and may not start another one).
        await until(lambda: bluegreen_of(second).active)
        refused = await two.post("/admin/rebuild", json={"mode": "blue-green"})
        assert refused.status_code == 409
        assert not bluegreen_of(second).building_here
        positions: list[int] = []
        await stream.start()
        while runner_of(second).version == 1:
            assert await accounts(two) == before
            positions.append((await get(two, "/health"))["position"])
            await asyncio.sleep(0.02)
        await switched(first, 2)
        await until(lambda: runner_of(second).version == 2)
        assert await accounts(two) == before == await accounts(one)
        later = await log.deposit("a", 7)
        for client in (one, two):
            answer = await client.get("/accounts/a", headers={"X-Min-Position": str(later)})
            assert answer.json()["balance"] == 757
        positions.append((await get(two, "/health"))["position"])
        assert positions == sorted(positions)
        await until(lambda: present(open_db) == [2], within=10)


# -- the statistics read model -----------------------------------------------------------------


async def test_the_statistics_read_model_switches_to_the_same_numbers(
    stream: StreamServer, open_db: OpenDB, log: Ledger, tmp_path: Path
) -> None:
    head = await busy_day(log)

    def open_stats() -> ReadModelDB:
        db = open_db()
        if isinstance(db, SqliteReadModelDB):
            db.close()
            return SqliteReadModelDB(tmp_path / "stats.db", namespace="statistics")
        return db

    app = create_statistics(stream_url=stream.url, open_db=open_stats, head_poll_interval=0.05)
    async with serving(app) as client:
        await caught_up(app, head)
        before = await get(client, "/stats")
        response = await client.post("/admin/rebuild", json={"mode": "blue-green"})
        assert response.status_code == 202
        await switched(app, 2)
        assert await get(client, "/stats") == before


async def test_the_live_version_is_never_dropped_whoever_asks(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await log.open("a")
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        versions = runner_of(app).versions
        assert versions is not None
        assert await asyncio.to_thread(versions.drop, 1) is False
        assert present(open_db) == [1]
        assert (await get(client, "/accounts/a"))["account_id"] == "a"


async def test_on_one_sqlite_file_shared_by_both_read_models_only_the_rebuilt_one_moves(
    stream: StreamServer, log: Ledger, tmp_path: Path
) -> None:
    head = await busy_day(log)
    shared = tmp_path / "readmodels.db"
    books = accounting(stream, lambda: SqliteReadModelDB(shared, namespace="accounting"))
    stats = create_statistics(
        stream_url=stream.url,
        open_db=lambda: SqliteReadModelDB(shared, namespace="statistics"),
        head_poll_interval=0.05,
    )
    async with serving(books) as one, serving(stats) as two:
        await caught_up(books, head)
        await caught_up(stats, head)
        before, numbers = await accounts(one), await get(two, "/stats")
        assert (await one.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        await switched(books, 2)
        assert await accounts(one) == before
        assert await get(two, "/stats") == numbers
        assert runner_of(stats).version == 1
        later = await log.deposit("a", 1)
        await caught_up(stats, later)
        await caught_up(books, later)
        assert (await get(one, "/accounts/a"))["balance"] == 751
    # The base file keeps the statistics (and the control tables), not accounting's tables.
    db = SqliteReadModelDB(shared, namespace="statistics")
    with db.read() as session:
        tables = {r[0] for r in session.fetchall("SELECT name FROM sqlite_master")}
    db.close()
    assert {"stats_accounts", "readmodel_live"} <= tables
    assert not {"accounts", "transactions"} & tables
    assert (tmp_path / "readmodels.accounting.v2.db").exists()


async def test_a_build_can_be_cancelled_and_the_live_version_stays(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    app = accounting(stream, open_db)
    async with serving(app) as client:
        await caught_up(app, head)
        before = await accounts(client)
        nothing = await client.request("DELETE", "/admin/rebuild", json={})
        assert nothing.status_code == 409 and nothing.json()["type"].endswith("not-rebuilding")
        await stream.stop()  # the build cannot finish by itself
        assert (await client.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        cancelled = await client.request("DELETE", "/admin/rebuild", json={})
        assert cancelled.status_code == 200, cancelled.text
        build = cancelled.json()["blue_green"]
        assert (build["state"], build["error"]) == ("failed", "cancelled by an operator")
        assert runner_of(app).version == 1 and not bluegreen_of(app).active
        assert await accounts(client) == before
        await until(lambda: present(open_db) == [1])
        await stream.start()
        again = await client.post("/admin/rebuild", json={"mode": "blue-green"})
        assert again.status_code == 202 and again.json()["blue_green"]["version"] == 3
        await switched(app, 3)
        assert await accounts(client) == before


@pytest.mark.parametrize("open_db", ["postgres"], indirect=True)
async def test_a_build_cancelled_from_another_instance_stops_its_builder(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    first, second = accounting(stream, open_db), accounting(stream, open_db)
    async with serving(first) as one, serving(second) as two:
        await caught_up(first, head)
        await caught_up(second, head)
        await stream.stop()
        assert (await one.post("/admin/rebuild", json={"mode": "blue-green"})).status_code == 202
        await until(lambda: bluegreen_of(second).active)
        assert (await two.request("DELETE", "/admin/rebuild", json={})).status_code == 200
        await until(lambda: not bluegreen_of(first).active, within=10)
        build = bluegreen_of(first).build
        assert (
            build is not None
            and build.state == "failed"
            and build.error == "cancelled by an operator"
        )
        await until(lambda: present(open_db) == [1], within=10)
        await stream.start()
        assert runner_of(first).version == runner_of(second).version == 1
