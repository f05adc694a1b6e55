"""The accounting service against the real stream service: HTTP contract, read-your-writes,
halting, restarts, outages and rebuilds. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app
from eventledger.services.readside.db import SqliteReadModelDB
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
open_db = support.open_db_fixture("accounting")


def accounting(stream: StreamServer, open_db: OpenDB, *, wait: float = 5.0) -> FastAPI:
    return create_app(
        stream_url=stream.url, open_db=open_db, min_position_wait=wait, head_poll_interval=0.05
    )


@pytest.fixture
async def app(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return accounting(stream, open_db, wait=0.3)


# -- reading the model --------------------------------------------------------------------


async def test_an_account_shows_its_balance_status_and_version(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, clock: Clock
) -> None:
    await log.open("acc-1", "USD", overdraft=500)
    clock.advance(seconds=5)
    await log.deposit("acc-1", 1200)
    head = await log.withdraw("acc-1", 1500)
    await caught_up(app, head)
    assert await get(client, "/accounts/acc-1") == {
        "account_id": "acc-1",
        "currency": "USD",
        "balance": -300,
        "available": -300,
        "pending_debits": 0,
        "pending_credits": 0,
        "overdraft_limit": 500,
        "owner": None,
        "status": "open",
        "version": 3,
        "opened_at": "2026-11-27T10:00:00.000000Z",
        "updated_at": "2026-11-27T10:00:05.000000Z",
        "position": head,
    }


async def test_transactions_are_newest_first_with_signed_amounts_and_kinds(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    await log.open("a")
    await log.open("b")
    deposited = await log.deposit("a", 1000, reference="salary")
    withdrawn = await log.withdraw("a", 100)
    sent = await log.transfer("a", "b", 300)
    await caught_up(app, sent)
    page = await get(client, "/accounts/a/transactions")
    assert page["next"] is None
    assert [
        (i["kind"], i["amount"], i["balance_after"], i["counterparty"]) for i in page["items"]
    ] == [
        ("transfer_out", -300, 600, "b"),
        ("withdrawal", -100, 900, None),
        ("deposit", 1000, 1000, None),
    ]
    assert [i["position"] for i in page["items"]] == [sent - 1, withdrawn, deposited]
    assert page["items"][2]["reference"] == "salary"
    assert set(page["items"][0]) == {
        "transaction_id",
        "kind",
        "amount",
        "balance_after",
        "available_after",
        "held",
        "reverses",
        "reversed_by",
        "counterparty",
        "reference",
        "recorded_at",
        "position",
    }
    other = await get(client, "/accounts/b/transactions")
    assert [(i["kind"], i["amount"], i["counterparty"]) for i in other["items"]] == [
        ("transfer_in", 300, "a")
    ]
    assert other["items"][0]["transaction_id"] == page["items"][0]["transaction_id"]


async def test_transactions_are_paged_with_an_opaque_cursor(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    await log.open("a")
    head = 0
    for amount in range(1, 8):
        head = await log.deposit("a", amount)
    await caught_up(app, head)
    amounts: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before": cursor} if cursor else {})
        page = await get(client, "/accounts/a/transactions", **params)
        amounts += [i["amount"] for i in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
        assert not cursor.isdigit()
    assert amounts == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


async def test_the_balance_as_it_was_at_a_position_or_a_time(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, clock: Clock
) -> None:
    opened = await log.open("a")
    clock.advance(minutes=1)
    first = await log.deposit("a", 100)
    clock.advance(minutes=1)
    head = await log.deposit("a", 50)
    await caught_up(app, head)
    at = await get(client, "/accounts/a/balance", at_position=first)
    assert at == {
        "account_id": "a",
        "currency": "EUR",
        "balance": 100,
        "available": 100,
        "pending_debits": 0,
        "pending_credits": 0,
        "as_of_position": first,
        "at_position": first,
    }
    assert (await get(client, "/accounts/a/balance", at_position=opened))["balance"] == 0
    assert (await get(client, "/accounts/a/balance", at_position=head))["balance"] == 150
    times = {
        "2026-11-27T10:00:30Z": 0,
        "2026-11-27T10:01:00Z": 100,
        "2026-11-27T11:01:59+01:00": 100,
        "2026-11-27T10:02:00.000000Z": 150,
        "2030-01-01T00:00:00Z": 150,
    }
    for moment, balance in times.items():
        assert (await get(client, "/accounts/a/balance", at=moment))["balance"] == balance, moment
    before = await client.get("/accounts/a/balance", params={"at": "2026-11-27T09:59:59Z"})
    assert before.status_code == 404
    assert before.json()["type"] == "account-not-found"


async def test_the_balance_at_a_position_before_the_account_existed_is_404(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    await log.open("x")
    head = await log.open("a")
    await caught_up(app, head)
    response = await client.get("/accounts/a/balance", params={"at_position": head - 1})
    assert response.status_code == 404
    assert response.json()["type"] == "account-not-found"


async def test_accounts_are_listed_in_pages_by_id(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    head = 0
    for account in ["c", "a", "e", "b", "d"]:
        head = await log.open(account)
    await caught_up(app, head)
    first = await get(client, "/accounts", limit=2)
    assert [a["account_id"] for a in first["items"]] == ["a", "b"]
    assert first["next"] == "b"
    second = await get(client, "/accounts", limit=2, after="b")
    third = await get(client, "/accounts", limit=2, after=second["next"])
    assert [a["account_id"] for a in second["items"] + third["items"]] == ["c", "d", "e"]
    assert third["next"] is None
    assert (await get(client, "/accounts"))["items"][0]["balance"] == 0


async def test_an_unknown_account_is_404_account_not_found(client: httpx.AsyncClient) -> None:
    for path in ["/accounts/nobody", "/accounts/nobody/transactions", "/accounts/nobody/balance"]:
        params = {"at_position": "0"} if path.endswith("balance") else {}
        response = await client.get(path, params=params)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "account-not-found"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/accounts/a/transactions", {"limit": "0"}, "limit"),
        ("/accounts/a/transactions", {"limit": "1001"}, "limit"),
        ("/accounts/a/transactions", {"limit": "10.0"}, "limit"),
        ("/accounts/a/transactions", {"limit": "+5"}, "limit"),
        ("/accounts/a/transactions", {"limit": "1e3"}, "limit"),
        ("/accounts/a/transactions", {"before": "not-a-cursor"}, "before"),
        ("/accounts/a/transactions", {"before": "eDE"}, "before"),
        ("/accounts/a/balance", {}, "at"),
        ("/accounts/a/balance", {"at": "2026-11-27T10:00:00Z", "at_position": "1"}, "at"),
        ("/accounts/a/balance", {"at": "yesterday"}, "at"),
        ("/accounts/a/balance", {"at": "2026-11-27T10:00:00"}, "at"),
        ("/accounts/a/balance", {"at": "0001-01-01T00:00:00+01:00"}, "at"),
        ("/accounts/a/balance", {"at": "9999-12-31T23:59:59-01:00"}, "at"),
        ("/accounts/a/balance", {"at_position": "-1"}, "at_position"),
        ("/accounts/a/balance", {"at_position": "1.0"}, "at_position"),
        ("/accounts", {"limit": "abc"}, "limit"),
        ("/accounts", {"after": "-bad"}, "after"),
        ("/accounts/a", {"min_position": "x"}, "min_position"),
        ("/accounts/-a", {}, "account_id"),
        ("/accounts/" + "a" * 65, {}, "account_id"),
    ],
)
@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_a_bad_parameter_is_a_422_problem(
    client: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation-error"
    assert [e["field"] for e in body["errors"]] == [field]


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_a_bad_x_min_position_header_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/accounts", headers={"X-Min-Position": "1.5"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "X-Min-Position"


# -- read-your-writes ---------------------------------------------------------------------


async def test_x_min_position_waits_until_the_position_is_applied(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    app = accounting(stream, open_db, wait=10)
    async with serving(app) as client:
        await caught_up(app, await log.open("a"))
        head = runner_of(app).position
        request = asyncio.create_task(
            client.get("/accounts/a", headers={"X-Min-Position": str(head + 1)})
        )
        await log.deposit("a", 42)
        response = await request
    assert response.status_code == 200
    assert response.json()["balance"] == 42


async def test_x_min_position_beyond_the_wait_is_503_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    head = await log.open("a")
    started = time.monotonic()
    response = await client.get("/accounts/a", params={"min_position": str(head + 100)})
    assert response.status_code == 503
    assert 0.3 <= time.monotonic() - started < 3
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "not-caught-up"
    assert response.json()["min_position"] == head + 100
    balance = await client.get("/accounts/a/balance", params={"at_position": str(head + 100)})
    assert balance.status_code == 503


async def test_health_reports_position_hash_head_and_lag(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, stream: StreamServer
) -> None:
    head = await log.open("a")
    await caught_up(app, head)
    # The checkpoint shown is the one last read back from the database (a moment after the
    # position moved): wait for it too.
    await until(
        lambda: runner_of(app).head_position == head and runner_of(app).checkpoint.position == head
    )
    applied = (await stream.store.read_all(after=head - 1, limit=1))[0]
    assert await get(client, "/health") == {
        "status": "ok",
        "service": "accounting",
        "position": head,
        "hash": applied.hash or None,
        "head_position": head,
        "lag": 0,
        "lag_seconds": 0.0,
        "halted": None,
        "stream_connected": True,
        "rebuilding": False,
        "checkpoint": {
            "position": head,
            "hash": applied.hash or None,
            "generation": 0,
            "rebuild_until": None,
        },
        "decisions": {"skipped": 0, "parked": 0, "last": None},
        "database": {"reachable": True, "error": None},
        "error": None,
        "reason": None,
    }
    metrics = (await client.get("/metrics")).text
    assert f'eventledger_projection_position{{projection="accounting"}} {float(head)}' in metrics


# -- halting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ("MoneyDeposited", "never opened"),
        ("AccountOpened", "opens once"),
        ("MoneyTeleported", "unknown event type"),
    ],
)
async def test_an_event_it_cannot_apply_halts_the_projection_and_reads_go_on(
    app: FastAPI,
    client: httpx.AsyncClient,
    log: Ledger,
    stream: StreamServer,
    bad: tuple[str, str],
) -> None:
    event_type, reason = bad
    # The stream service refuses each of these events (the account rules): only a write to
    # the store itself, behind its back, gets them into the log.
    await log.open("a")
    await log.open("b")
    good = await log.deposit("a", 10)
    if event_type == "MoneyDeposited":
        money = {"account_id": "ghost", "transaction_id": str(uuid4()), "amount": 5}
        halt_at = await log.behind_the_guard("account-ghost", event_type, money)
    elif event_type == "AccountOpened":
        opened = {"account_id": "a", "currency": "EUR", "overdraft_limit": 0, "owner": None}
        halt_at = await log.behind_the_guard("account-a", event_type, opened)
    else:
        # A type from a newer writer.
        halt_at = await log.behind_the_guard("account-a", event_type, {"account_id": "a"})
    head = await log.deposit("b", 20)
    runner = runner_of(app)
    assert not await runner.wait_for(head, 5)
    await until(lambda: runner.head_position == head)
    health = await get(client, "/health")
    assert health["status"] == "halted"
    assert (health["position"], health["head_position"], health["lag"]) == (
        good,
        head,
        head - good,
    )
    assert health["halted"]["position"] == halt_at
    assert reason in health["halted"]["reason"]
    assert (await get(client, "/accounts/a"))["balance"] == 10
    started = time.monotonic()
    response = await client.get("/accounts/a", headers={"X-Min-Position": str(head)})
    assert response.status_code == 503
    assert time.monotonic() - started < 0.3  # no point waiting: it will not get there
    assert "halted" in response.json()["detail"]


async def test_streams_that_are_not_accounts_are_skipped_but_passed(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    await log.open("a")
    other = await log.append("idempotency-xyz", ("KeyBound", {"anything": True}))
    response = await client.get("/accounts", headers={"X-Min-Position": str(other)})
    assert response.status_code == 200
    assert [a["account_id"] for a in response.json()["items"]] == ["a"]
    assert runner_of(app).halted is None


# -- restarts, outages, rebuilds ----------------------------------------------------------


async def snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    accounts = (await get(client, "/accounts", limit=1000))["items"]
    return {
        a["account_id"]: (
            a,
            (await get(client, f"/accounts/{a['account_id']}/transactions"))["items"],
        )
        for a in accounts
    }


async def busy_day(log: Ledger) -> int:
    for account in ("a", "b", "c", "d"):
        await log.open(account)
    await log.deposit("a", 1000)
    await log.transfer("a", "b", 250)
    await log.withdraw("b", 50)
    await log.transfer("b", "c", 75)
    await log.close("d")
    return await log.deposit("c", 5)


async def test_the_checkpoint_survives_a_restart_without_applying_anything_twice(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    head = await busy_day(log)
    first = accounting(stream, open_db)
    async with serving(first) as client:
        await caught_up(first, head)
        before = await snapshot(client)
    head = await log.deposit("a", 1)
    # The stream service is down while the second instance starts: it can only know where the
    # first one stopped from the checkpoint (else it may already have applied the deposit).
    await stream.stop()
    second = accounting(stream, open_db)
    async with serving(second) as client:
        assert runner_of(second).position == head - 1  # where the first one stopped
        await stream.start()
        await caught_up(second, head)
        after = await snapshot(client)
    assert after["a"][0]["balance"] == before["a"][0]["balance"] + 1
    assert len(after["a"][1]) == len(before["a"][1]) + 1
    assert {k: v for k, v in after.items() if k != "a"} == {
        k: v for k, v in before.items() if k != "a"
    }


async def test_reads_go_on_while_the_stream_service_is_down_and_it_catches_up_after(
    app: FastAPI, client: httpx.AsyncClient, stream: StreamServer, log: Ledger
) -> None:
    head = await busy_day(log)
    await caught_up(app, head)
    runner = runner_of(app)
    await stream.stop()
    await until(lambda: runner.head_position is None and not runner.connected)
    started = time.monotonic()
    health = await get(client, "/health")
    assert time.monotonic() - started < 1
    assert (health["status"], health["head_position"], health["lag"]) == ("ok", None, None)
    assert health["stream_connected"] is False
    assert (await get(client, "/accounts/a"))["balance"] == 750
    await stream.start()
    started = time.monotonic()
    head = await log.deposit("a", 1)
    await caught_up(app, head)
    assert time.monotonic() - started < 5
    assert (await get(client, "/accounts/a"))["balance"] == 751


async def test_a_rebuild_replays_the_log_into_the_same_state(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    head = await busy_day(log)
    await caught_up(app, head)
    before = await snapshot(client)
    response = await client.post("/admin/rebuild", json={})
    assert response.status_code == 202
    assert response.json()["position"] == 0
    await caught_up(app, head)
    assert await snapshot(client) == before
    await until(lambda: not runner_of(app).rebuilding)


async def test_a_new_instance_with_an_empty_database_builds_itself_from_the_log(
    stream: StreamServer, open_db: OpenDB, log: Ledger, tmp_path: Path
) -> None:
    head = await busy_day(log)
    first = accounting(stream, open_db)
    async with serving(first) as client:
        await caught_up(first, head)
        expected = await snapshot(client)
    fresh = accounting(
        stream, lambda: SqliteReadModelDB(tmp_path / "fresh.db", namespace="accounting")
    )
    async with serving(fresh) as client:
        await caught_up(fresh, head)
        assert await snapshot(client) == expected


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_the_openapi_document_lists_every_endpoint(client: httpx.AsyncClient) -> None:
    document = await get(client, "/openapi.json")
    assert set(document["paths"]) >= {
        "/accounts",
        "/accounts/{account_id}",
        "/accounts/{account_id}/transactions",
        "/accounts/{account_id}/balance",
        "/health",
        "/admin/rebuild",
    }
    parameters = document["paths"]["/accounts/{account_id}"]["get"]["parameters"]
    assert {"x-min-position", "min_position"} <= {p["name"].lower() for p in parameters}
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize("open_db", ["sqlite"], indirect=True)
async def test_the_openapi_document_documents_every_problem_as_problem_json(
    client: httpx.AsyncClient,
) -> None:
    document = await get(client, "/openapi.json")
    assert openapi_defects(document) == []
    for path in ["/accounts/{account_id}", "/accounts/{account_id}/transactions"]:
        assert {"404", "422", "503"} <= set(document["paths"][path]["get"]["responses"]), path
    assert {"422", "503"} <= set(document["paths"]["/accounts"]["get"]["responses"])
