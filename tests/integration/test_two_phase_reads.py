"""Two-phase transfers on the read side, against the real stream service (its guard applies
the validity rule): the accounting service shows `available`, the pending transfers and the
history of each hold and outcome; the statistics service counts them; both on SQLite and on
PostgreSQL. Holds and outcomes are appended as the transaction service writes them: each
pair in one atomic batch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.statistics.app import create_app as create_statistics
from tests.integration import readmodel_support as support
from tests.integration.openapi_checks import openapi_defects
from tests.integration.readmodel_support import (
    Ledger,
    OpenDB,
    StreamServer,
    caught_up,
    get,
    serving,
)

clock, stream, log = support.clock, support.stream, support.log
open_db = support.open_db_fixture("readside")
EXPIRY = "2026-11-27T10:05:00.000000Z"


@pytest.fixture
def app(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_accounting(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.3, head_poll_interval=0.05
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        yield c


class TwoPhase:
    """Appends holds and their outcomes through `POST /batches`, each pair atomically."""

    def __init__(self, log: Ledger) -> None:
        self.log = log

    async def batch(self, parts: list[tuple[str, str, dict[str, Any]]]) -> int:
        appends = [
            {
                "stream": f"account-{account}",
                "expected_version": await self.log.version(f"account-{account}"),
                "events": [{"type": type, "schema_version": 1, "data": data}],
            }
            for account, type, data in parts
        ]
        answer = await self.log.post("/batches", {"appends": appends})
        return int(max(p for r in answer["results"] for p in r["positions"]))

    async def hold(
        self,
        source: str,
        target: str,
        amount: int,
        *,
        reference: str | None = None,
        expires_at: str | None = None,
    ) -> tuple[str, int]:
        tx = str(uuid.uuid4())
        common = {"transaction_id": tx, "amount": amount, "reference": reference}
        common["expires_at"] = expires_at
        head = await self.batch(
            [
                (
                    source,
                    "PendingTransferSent",
                    {"account_id": source, **common, "to_account": target},
                ),
                (
                    target,
                    "PendingTransferReceived",
                    {"account_id": target, **common, "from_account": source},
                ),
            ]
        )
        return tx, head

    async def outcome(
        self, type: str, source: str, target: str, tx: str, amount: int, **more: Any
    ) -> int:
        data = {"transaction_id": tx, "from_account": source, "to_account": target}
        return await self.batch(
            [
                (a, type, {"account_id": a, **data, "amount": amount, **more})
                for a in (source, target)
            ]
        )

    async def post(self, source: str, target: str, tx: str, amount: int) -> int:
        return await self.outcome("PendingTransferPosted", source, target, tx, amount)

    async def void(
        self, source: str, target: str, tx: str, amount: int, reason: str = "voided"
    ) -> int:
        return await self.outcome(
            "PendingTransferVoided", source, target, tx, amount, reason=reason
        )


@pytest.fixture
def two_phase(log: Ledger) -> TwoPhase:
    return TwoPhase(log)


async def funded(log: Ledger, amount: int = 1000) -> int:
    await log.open("a")
    await log.open("b")
    return await log.deposit("a", amount)


def sums(account: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        account["balance"],
        account["available"],
        account["pending_debits"],
        account["pending_credits"],
    )


# -- accounting ------------------------------------------------------------------------------


async def test_available_follows_a_hold_a_partial_post_a_void_and_an_expiry(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, two_phase: TwoPhase
) -> None:
    await funded(log)
    first, head = await two_phase.hold("a", "b", 400, expires_at=EXPIRY)
    second, head = await two_phase.hold("a", "b", 100)
    await caught_up(app, head)
    assert sums(await get(client, "/accounts/a")) == (1000, 500, 500, 0)
    assert sums(await get(client, "/accounts/b")) == (0, 0, 0, 500)

    head = await two_phase.post("a", "b", first, 250)  # partial: 150 released
    await caught_up(app, head)
    assert sums(await get(client, "/accounts/a")) == (750, 650, 100, 0)
    assert sums(await get(client, "/accounts/b")) == (250, 250, 0, 100)

    head = await two_phase.void("a", "b", second, 100)
    await caught_up(app, head)
    assert sums(await get(client, "/accounts/a")) == (750, 750, 0, 0)
    assert sums(await get(client, "/accounts/b")) == (250, 250, 0, 0)

    third, _ = await two_phase.hold("b", "a", 50, expires_at=EXPIRY)
    head = await two_phase.void("b", "a", third, 50, reason="expired")
    await caught_up(app, head)
    assert sums(await get(client, "/accounts/b")) == (250, 250, 0, 0)
    listed = await get(client, "/accounts")
    assert {a["account_id"]: a["available"] for a in listed["items"]} == {"a": 750, "b": 250}


async def test_the_history_shows_each_hold_and_its_outcome(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, two_phase: TwoPhase
) -> None:
    await funded(log)
    posted, _ = await two_phase.hold("a", "b", 400, reference="order 7")
    voided, _ = await two_phase.hold("a", "b", 100)
    expired, _ = await two_phase.hold("a", "b", 50, expires_at=EXPIRY)
    await two_phase.post("a", "b", posted, 300)
    await two_phase.void("a", "b", voided, 100)
    head = await two_phase.void("a", "b", expired, 50, reason="expired")
    await caught_up(app, head)
    items = (await get(client, "/accounts/a/transactions"))["items"]
    assert [
        (i["kind"], i["amount"], i["held"], i["balance_after"], i["available_after"]) for i in items
    ] == [
        ("transfer_expired", 0, -50, 700, 700),
        ("transfer_voided", 0, -100, 700, 650),
        ("transfer_posted", -300, -400, 700, 550),
        ("transfer_pending", 0, -50, 1000, 450),
        ("transfer_pending", 0, -100, 1000, 500),
        ("transfer_pending", 0, -400, 1000, 600),
        ("deposit", 1000, None, 1000, 1000),
    ]
    outcomes = [expired, voided, posted]
    assert [i["transaction_id"] for i in items[:6]] == outcomes * 2
    post_item = items[2]
    assert (post_item["counterparty"], post_item["reference"]) == ("b", "order 7")
    received = (await get(client, "/accounts/b/transactions"))["items"]
    assert [(i["kind"], i["amount"], i["held"]) for i in received][:3] == [
        ("transfer_expired", 0, 50),
        ("transfer_voided", 0, 100),
        ("transfer_posted", 300, 400),
    ]


async def test_pending_transfers_are_listed_oldest_first_in_pages(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, two_phase: TwoPhase
) -> None:
    await funded(log)
    await log.open("c")
    holds = []
    for amount in (10, 20, 30, 40):
        holds.append(await two_phase.hold("a", "b", amount, reference=f"r{amount}"))
    incoming, _ = await two_phase.hold("c", "a", 5, expires_at=EXPIRY)
    head = await two_phase.post("a", "b", holds[1][0], 20)  # no longer pending
    await caught_up(app, head)
    first = await get(client, "/accounts/a/pending", limit=2)
    assert (first["pending_debits"], first["pending_credits"]) == (80, 5)
    assert [(i["amount"], i["direction"], i["counterparty"]) for i in first["items"]] == [
        (10, "out", "b"),
        (30, "out", "b"),
    ]
    assert first["items"][0] == {
        "transaction_id": holds[0][0],
        "direction": "out",
        "counterparty": "b",
        "amount": 10,
        "reference": "r10",
        "expires_at": None,
        "recorded_at": first["items"][0]["recorded_at"],
        "position": holds[0][1] - 1,
    }
    rest = await get(client, "/accounts/a/pending", limit=2, after=first["next"])
    assert [(i["amount"], i["direction"], i["expires_at"]) for i in rest["items"]] == [
        (40, "out", None),
        (5, "in", EXPIRY),
    ]
    assert rest["items"][1]["transaction_id"] == incoming
    assert rest["next"] is None
    assert (await get(client, "/accounts/b/pending"))["pending_credits"] == 80


async def test_the_pending_listing_refuses_bad_parameters_and_unknown_accounts(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    head = await funded(log)
    await caught_up(app, head)
    for params in ({"limit": "0"}, {"limit": "1001"}, {"after": "nope"}, {"limit": "1e3"}):
        response = await client.get("/accounts/a/pending", params=params)
        assert response.status_code == 422, params
        assert response.json()["type"] == "validation-error"
    missing = await client.get("/accounts/nobody/pending")
    assert missing.status_code == 404
    assert missing.json()["type"] == "account-not-found"
    assert (await get(client, "/accounts/a/pending")) == {
        "account_id": "a",
        "pending_debits": 0,
        "pending_credits": 0,
        "items": [],
        "next": None,
    }


async def test_the_balance_then_says_what_was_available_then(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, two_phase: TwoPhase
) -> None:
    deposited = await funded(log)
    tx, held = await two_phase.hold("a", "b", 400)
    posted = await two_phase.post("a", "b", tx, 400)
    await caught_up(app, posted)

    async def then(position: int) -> tuple[int, int, int]:
        body = await get(client, "/accounts/a/balance", at_position=position)
        return body["balance"], body["available"], body["pending_debits"]

    assert await then(deposited) == (1000, 1000, 0)
    assert await then(held) == (1000, 600, 400)
    assert await then(posted) == (600, 600, 0)
    at_time = await get(client, "/accounts/b/balance", at="2030-01-01T00:00:00Z")
    assert (at_time["balance"], at_time["available"], at_time["pending_credits"]) == (400, 400, 0)


async def test_the_openapi_document_lists_the_pending_route_cleanly(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/accounts/{account_id}/pending"]["get"]
    assert operation["operationId"] == "getPendingTransfers"
    assert operation["tags"] == ["accounts"]
    assert openapi_defects(document) == []


# -- statistics ------------------------------------------------------------------------------


async def test_statistics_count_two_phase_transfers_per_currency_and_day(
    stream: StreamServer, open_db: OpenDB, log: Ledger, two_phase: TwoPhase
) -> None:
    stats = create_statistics(
        stream_url=stream.url, open_db=open_db, min_position_wait=5, head_poll_interval=0.05
    )
    await funded(log, 5000)
    posted, _ = await two_phase.hold("a", "b", 400)
    voided, _ = await two_phase.hold("a", "b", 300)
    expired, _ = await two_phase.hold("a", "b", 200, expires_at=EXPIRY)
    await two_phase.hold("a", "b", 100)
    await two_phase.post("a", "b", posted, 350)
    await two_phase.void("a", "b", voided, 300)
    head = await two_phase.void("a", "b", expired, 200, reason="expired")
    async with serving(stats) as client:
        eur = (await get(client, "/stats", min_position=head))["currencies"]["EUR"]
        daily = await get(
            client, "/stats/daily", min_position=head, **{"from": "2026-11-27"}, to="2026-11-27"
        )
    assert eur["two_phase"] == {
        "placed": {"count": 4, "volume": 1000},
        "pending": {"count": 1, "volume": 100},
        "posted": {"count": 1, "volume": 350},
        "voided": {"count": 1, "volume": 300},
        "expired": {"count": 1, "volume": 200},
    }
    assert eur["total_balance"] == 5000
    assert eur["transfers"] == {"count": 0, "volume": 0}
    day = daily["days"][0]["currencies"]["EUR"]["two_phase"]
    assert day == {
        "placed": {"count": 4, "volume": 1000},
        "posted": {"count": 1, "volume": 350},
        "voided": {"count": 1, "volume": 300},
        "expired": {"count": 1, "volume": 200},
    }
