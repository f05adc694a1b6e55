"""The statistics service against the real stream service, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.readside.db import SqliteReadModelDB
from eventledger.services.statistics.app import create_app
from tests.integration import readmodel_support as support
from tests.integration.openapi_checks import openapi_defects
from tests.integration.readmodel_support import (
    Clock,
    Ledger,
    OpenDB,
    StreamServer,
    caught_up,
    get,
    runner_of,
    serving,
)
from tests.integration.stream_support import until

# The fixtures every read-model service suite shares (readmodel_support.py).
clock, stream, log, client = support.clock, support.stream, support.log, support.client
open_db = support.open_db_fixture("statistics")


@pytest.fixture
def app(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_app(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.3, head_poll_interval=0.05
    )


async def two_days(log: Ledger, clock: Clock) -> int:
    """27 Nov: EUR a, b, c opened, 1000 in, 250 a->b, 50 out, c closed; USD u, 7 in.
    28 Nov (after midnight UTC): 300 in and 100 b->a."""
    for account in ("a", "b", "c"):
        await log.open(account)
    await log.open("u", "USD")
    await log.deposit("a", 1000)
    await log.transfer("a", "b", 250)
    await log.withdraw("b", 50)
    await log.close("c")
    await log.deposit("u", 7)
    clock.advance(hours=14)  # 2026-11-28T00:00Z
    await log.deposit("a", 300)
    return await log.transfer("b", "a", 100)


# Two-phase transfers (tests/integration/test_two_phase_reads.py): none in this log.
NONE_PENDING = {
    what: {"count": 0, "volume": 0} for what in ("placed", "pending", "posted", "voided", "expired")
}


async def test_stats_count_accounts_balances_and_movements_per_currency(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, clock: Clock
) -> None:
    head = await two_days(log, clock)
    await caught_up(app, head)
    assert await get(client, "/stats") == {
        "position": head,
        "currencies": {
            "EUR": {
                "accounts": {"open": 2, "closed": 1},
                "total_balance": 1250,
                "deposits": {"count": 2, "volume": 1300},
                "withdrawals": {"count": 1, "volume": 50},
                "transfers": {"count": 2, "volume": 350},
                "reversals": {"count": 0, "volume": 0},
                "two_phase": NONE_PENDING,
            },
            "USD": {
                "accounts": {"open": 1, "closed": 0},
                "total_balance": 7,
                "deposits": {"count": 1, "volume": 7},
                "withdrawals": {"count": 0, "volume": 0},
                "transfers": {"count": 0, "volume": 0},
                "reversals": {"count": 0, "volume": 0},
                "two_phase": NONE_PENDING,
            },
        },
    }


async def test_daily_volumes_per_utc_day_list_every_day_of_the_range(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, clock: Clock
) -> None:
    head = await two_days(log, clock)
    await caught_up(app, head)
    body = await get(client, "/stats/daily", **{"from": "2026-11-26", "to": "2026-11-29"})
    assert (body["from"], body["to"], body["position"]) == ("2026-11-26", "2026-11-29", head)
    assert [d["date"] for d in body["days"]] == [
        "2026-11-26",
        "2026-11-27",
        "2026-11-28",
        "2026-11-29",
    ]
    first, second = body["days"][1]["currencies"], body["days"][2]["currencies"]
    assert body["days"][0]["currencies"] == body["days"][3]["currencies"] == {}
    assert first["EUR"] == {
        "accounts_opened": 3,
        "accounts_closed": 1,
        "net_flow": 950,
        "deposits": {"count": 1, "volume": 1000},
        "withdrawals": {"count": 1, "volume": 50},
        "transfers": {"count": 1, "volume": 250},
        "reversals": {"count": 0, "volume": 0},
        "two_phase": {k: v for k, v in NONE_PENDING.items() if k != "pending"},
    }
    assert first["USD"]["deposits"] == {"count": 1, "volume": 7}
    assert set(second) == {"EUR"}
    assert second["EUR"]["deposits"] == {"count": 1, "volume": 300}
    assert second["EUR"]["transfers"] == {"count": 1, "volume": 100}


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_daily_defaults_to_the_last_thirty_days(client: httpx.AsyncClient) -> None:
    body = await get(client, "/stats/daily")
    assert len(body["days"]) == 30
    assert body["days"][-1]["date"] == body["to"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-11-27", "to": "2026-11-26"}, "from"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "to"),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "20261127", "to": "2026-11-28"}, "from"),
        ({"from": "2026-11-27", "to": "tomorrow"}, "to"),
        ({"from": "2026-W48-5", "to": "2026-11-28"}, "from"),
    ],
)
@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_a_bad_date_range_is_a_422_problem(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/stats/daily", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_the_default_range_stops_at_the_first_day_of_the_calendar(
    client: httpx.AsyncClient,
) -> None:
    body = await get(client, "/stats/daily", to="0001-01-05")
    assert (body["from"], body["to"], len(body["days"])) == ("0001-01-01", "0001-01-05", 5)


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_a_full_year_is_allowed(client: httpx.AsyncClient) -> None:
    body = await get(client, "/stats/daily", **{"from": "2024-01-01", "to": "2024-12-31"})
    assert len(body["days"]) == 366


async def test_x_min_position_waits_or_answers_503(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    head = await log.open("a")
    response = await client.get("/stats", headers={"X-Min-Position": str(head)})
    assert response.status_code == 200
    assert response.json()["currencies"]["EUR"]["accounts"]["open"] == 1
    late = await client.get("/stats/daily", params={"min_position": str(head + 1)})
    assert late.status_code == 503
    assert late.headers["retry-after"] == "1"
    assert late.json()["type"] == "not-caught-up"


async def test_health_and_halting_on_an_event_it_cannot_apply(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    good = await log.open("a")
    # The stream service refuses money on an account never opened: only a write to the store
    # itself, behind its back, gets it into the log.
    money = {"account_id": "ghost", "transaction_id": str(uuid4()), "amount": 5}
    bad = await log.behind_the_guard("account-ghost", "MoneyWithdrawn", money)
    head = await log.deposit("a", 5)
    runner = runner_of(app)
    await until(lambda: runner.halted is not None and runner.head_position == head)
    health = await get(client, "/health")
    assert (health["status"], health["service"], health["position"]) == (
        "halted",
        "statistics",
        good,
    )
    assert (health["head_position"], health["lag"]) == (head, head - good)
    assert health["halted"]["position"] == bad
    assert (await get(client, "/stats"))["currencies"]["EUR"]["accounts"]["open"] == 1


async def test_a_rebuild_gives_the_same_statistics(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, clock: Clock
) -> None:
    head = await two_days(log, clock)
    await caught_up(app, head)
    range_ = {"from": "2026-11-27", "to": "2026-11-28"}
    before = (await get(client, "/stats"), await get(client, "/stats/daily", **range_))
    response = await client.post("/admin/rebuild", json={})
    assert response.status_code == 202
    await caught_up(app, head)
    assert (await get(client, "/stats"), await get(client, "/stats/daily", **range_)) == before


async def test_statistics_keep_their_own_checkpoint_next_to_accounting(
    stream: StreamServer, log: Ledger, clock: Clock, tmp_path: Path
) -> None:
    # Both read models in one SQLite file: separate tables, migrations and checkpoints.
    path = tmp_path / "readmodels.db"
    statistics = create_app(
        stream_url=stream.url,
        open_db=lambda: SqliteReadModelDB(path, namespace="statistics"),
    )
    accounting = create_accounting(
        stream_url=stream.url,
        open_db=lambda: SqliteReadModelDB(path, namespace="accounting"),
    )
    head = await two_days(log, clock)
    async with serving(statistics) as stats_client, serving(accounting) as accounts_client:
        await caught_up(statistics, head)
        await caught_up(accounting, head)
        total = (await get(stats_client, "/stats"))["currencies"]["EUR"]["total_balance"]
        accounts = (await get(accounts_client, "/accounts"))["items"]
        assert total == sum(a["balance"] for a in accounts if a["currency"] == "EUR")
        started = time.monotonic()
        assert (await stats_client.post("/admin/rebuild", json={})).status_code == 202
        await caught_up(statistics, head)
        assert time.monotonic() - started < 5
        assert runner_of(accounting).position == head  # untouched by the other's rebuild
        assert (await get(accounts_client, "/accounts"))["items"] == accounts


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_the_openapi_document_lists_every_endpoint(client: httpx.AsyncClient) -> None:
    document = await get(client, "/openapi.json")
    assert set(document["paths"]) >= {"/stats", "/stats/daily", "/health", "/admin/rebuild"}
    names = {p["name"] for p in document["paths"]["/stats/daily"]["get"]["parameters"]}
    assert {"from", "to", "min_position"} <= names


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_the_openapi_document_documents_every_problem_as_problem_json(
    client: httpx.AsyncClient,
) -> None:
    document = await get(client, "/openapi.json")
    assert openapi_defects(document) == []
    for path in ["/stats", "/stats/daily"]:
        assert {"422", "503"} <= set(document["paths"][path]["get"]["responses"]), path
