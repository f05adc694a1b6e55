"""The contract as one story, told over HTTP to real processes; idempotency; contention."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    System,
    all_pages,
    assert_problem,
    log_events,
    min_position,
    new_id,
    problem_type,
)

pytestmark = pytest.mark.slow


class Ledger:
    """The calls of the story, each asserting its status code."""

    def __init__(self, client: httpx.AsyncClient, system: System) -> None:
        self.http = client
        self.tx = system.transaction.url
        self.acc = system.accounting.url
        self.stats = system.statistics.url
        self.stream = system.stream.url
        self.position = 0  # the consistency token of the last write

    async def command(self, path: str, body: dict[str, Any], *, expect: int = 201) -> Any:
        response = await self.http.post(
            f"{self.tx}{path}", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code == expect, response.text
        if expect < 300:
            self.position = max(self.position, response.json()["position"])
            return response.json()
        return response

    async def read(self, base: str, path: str, **params: Any) -> Any:
        response = await self.http.get(
            f"{base}{path}", params=params, headers=min_position(self.position)
        )
        assert response.status_code == 200, response.text
        return response.json()


def currency_stats(stats: Any, currency: str) -> dict[str, Any]:
    """The `/stats` entry of one currency, whether keyed by currency or listed."""
    for key in ("currencies", "by_currency", "per_currency"):
        if isinstance(stats, dict) and key in stats:
            return currency_stats(stats[key], currency)
    if isinstance(stats, list):
        return next((row for row in stats if row.get("currency") == currency), {})
    return dict(stats.get(currency, {}))


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def stats_delta(before: Any, after: Any, currency: str) -> dict[str, int]:
    old, new = flat(currency_stats(before, currency)), flat(currency_stats(after, currency))
    return {
        key: value - old.get(key, 0)
        for key, value in new.items()
        if type(value) is int and value != old.get(key, 0)
    }


async def test_the_whole_story_of_the_contract(
    store_system: System, client: httpx.AsyncClient
) -> None:
    ledger = Ledger(client, store_system)
    # A currency of its own, so that the statistics can be compared before and after.
    currency = "CHF"
    head = store_system.head_position()
    stats_before = await client.get(f"{ledger.stats}/stats", headers=min_position(head))
    assert stats_before.status_code == 200, stats_before.text
    too_far = asyncio.ensure_future(
        client.get(f"{ledger.acc}/accounts/nobody", headers=min_position(10**15))
    )

    # Open: with an id, without one (generated), and an id that is taken.
    alice, bob = new_id("alice"), new_id("bob")
    opened = await ledger.command("/accounts", {"account_id": alice, "currency": currency})
    assert opened["account_id"] == alice
    assert opened["currency"] == currency
    await ledger.command("/accounts", {"account_id": bob, "currency": currency, "owner": "Bob"})
    carol = (await ledger.command("/accounts", {"currency": "JPY"}))["account_id"]
    assert isinstance(carol, str) and 1 <= len(carol) <= 64
    taken = await ledger.command("/accounts", {"account_id": alice, "currency": "EUR"}, expect=409)
    assert problem_type(taken) == "account-exists"

    # Money moves; every answer carries the balance and the position.
    deposited = await ledger.command(f"/accounts/{alice}/deposits", {"amount": 10_000})
    assert deposited["account_id"] == alice
    assert deposited["amount"] == 10_000
    assert deposited["balance"] == 10_000
    uuid.UUID(deposited["transaction_id"])
    withdrawn = await ledger.command(
        f"/accounts/{alice}/withdrawals", {"amount": 2_500, "reference": "rent"}
    )
    assert withdrawn["balance"] == 7_500
    assert withdrawn["position"] > deposited["position"]
    moved = await ledger.command(
        "/transfers", {"from_account": alice, "to_account": bob, "amount": 1_000}
    )
    assert (moved["from_balance"], moved["to_balance"]) == (6_500, 1_000)

    # Refusals: each with its problem type, and nothing written.
    head = store_system.head_position()
    refusals = [
        ("/transfers", {"from_account": alice, "to_account": carol, "amount": 1}, 409),
        ("/transfers", {"from_account": alice, "to_account": alice, "amount": 1}, 422),
        (f"/accounts/{alice}/withdrawals", {"amount": 1_000_000}, 409),
        ("/transfers", {"from_account": alice, "to_account": bob, "amount": 6_501}, 409),
        (f"/accounts/{new_id()}/deposits", {"amount": 1}, 404),
        (f"/accounts/{bob}/close", {}, 409),
    ]
    slugs = []
    for path, body, status in refusals:
        slugs.append(problem_type(await ledger.command(path, body, expect=status)))
    assert slugs[0] == "currency-mismatch"
    assert slugs[2:] == [
        "insufficient-funds",
        "insufficient-funds",
        "account-not-found",
        "balance-not-zero",
    ]
    assert store_system.head_position() == head

    # Read your writes: the accounting service answers once it has applied the position.
    account = await ledger.read(ledger.acc, f"/accounts/{alice}")
    assert account["account_id"] == alice
    assert account["currency"] == currency
    assert account["balance"] == 6_500
    assert account["overdraft_limit"] == 0
    assert account["status"] == "open"
    assert account["version"] == 4  # opened, deposited, withdrawn, sent
    # The position of the account's own last event (the transfer's first half).
    assert withdrawn["position"] < account["position"] <= moved["position"]
    datetime.fromisoformat(account["updated_at"])
    also = await client.get(
        f"{ledger.acc}/accounts/{bob}", params={"min_position": ledger.position}
    )
    assert also.status_code == 200 and also.json()["balance"] == 1_000

    # History, newest first, with the balance after each movement.
    history = (await ledger.read(ledger.acc, f"/accounts/{alice}/transactions"))["items"]
    assert [(i["kind"], i["amount"], i["balance_after"]) for i in history] == [
        ("transfer_out", -1_000, 6_500),
        ("withdrawal", -2_500, 7_500),
        ("deposit", 10_000, 10_000),
    ]
    assert history[0]["counterparty"] == bob
    assert history[0]["transaction_id"] == moved["transaction_id"]
    assert history[1]["reference"] == "rent"
    assert [i["position"] for i in history] == sorted(
        (i["position"] for i in history), reverse=True
    )
    bob_history = (await ledger.read(ledger.acc, f"/accounts/{bob}/transactions"))["items"]
    assert [(i["kind"], i["amount"], i.get("counterparty")) for i in bob_history] == [
        ("transfer_in", 1_000, alice)
    ]

    # Paging: small pages, followed by cursor, give the same items as one big page.
    for amount in range(1, 8):
        await ledger.command(f"/accounts/{bob}/deposits", {"amount": amount})
    path = f"/accounts/{bob}/transactions"
    whole = (await ledger.read(ledger.acc, path, limit=50))["items"]
    assert len(whole) == 8 and whole[0]["balance_after"] == 1_028
    paged = await all_pages(
        client,
        f"{ledger.acc}{path}",
        params={"limit": 3},
        headers=min_position(ledger.position),
        cursor="before",
    )
    assert paged == whole

    # The balance as it was: at a position, and at a time.
    at = f"/accounts/{alice}/balance"
    for position, balance in [
        (deposited["position"], 10_000),
        (withdrawn["position"], 7_500),
        (moved["position"], 6_500),
        (ledger.position, 6_500),
    ]:
        assert (await ledger.read(ledger.acc, at, at_position=position))["balance"] == balance
    deposit_time = history[2]["recorded_at"]
    if deposit_time < history[1]["recorded_at"]:
        assert (await ledger.read(ledger.acc, at, at=deposit_time))["balance"] == 10_000
    future = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    later = future.isoformat().replace("+00:00", "Z")
    assert (await ledger.read(ledger.acc, at, at=later))["balance"] == 6_500

    # Close: only at zero; then the account takes nothing more.
    await ledger.command(f"/accounts/{bob}/withdrawals", {"amount": 1_028})
    await ledger.command(f"/accounts/{bob}/close", {})
    for path, body in [
        (f"/accounts/{bob}/deposits", {"amount": 1}),
        ("/transfers", {"from_account": alice, "to_account": bob, "amount": 1}),
    ]:
        assert problem_type(await ledger.command(path, body, expect=409)) == "account-closed"
    assert (await ledger.read(ledger.acc, f"/accounts/{bob}"))["status"] == "closed"

    # The list of accounts has them all.
    listed = await all_pages(
        client, f"{ledger.acc}/accounts", params={"limit": 2}, headers=min_position(ledger.position)
    )
    ids = [item["account_id"] for item in listed]
    assert {alice, bob, carol} <= set(ids)
    assert len(ids) == len(set(ids))

    # Statistics: what this story did, in its own currency.
    stats_after = await ledger.read(ledger.stats, "/stats")
    assert stats_delta(stats_before.json(), stats_after, currency) == {
        "accounts.open": 1,
        "accounts.closed": 1,
        "total_balance": 6_500,
        "deposits.count": 8,
        "deposits.volume": 10_028,
        "withdrawals.count": 2,
        "withdrawals.volume": 3_528,
        "transfers.count": 1,
        "transfers.volume": 1_000,
    }
    today = datetime.now(UTC).date()
    daily = await ledger.read(
        ledger.stats,
        "/stats/daily",
        **{
            "from": (today - timedelta(days=1)).isoformat(),
            "to": (today + timedelta(days=1)).isoformat(),
        },
    )
    days = {day["date"]: flat(day["currencies"].get(currency, {})) for day in daily["days"]}
    assert today.isoformat() in days
    totals = Counter[str]()
    for figures in days.values():
        totals.update({k: v for k, v in figures.items() if type(v) is int})
    assert totals["deposits.volume"] >= 10_028 and totals["transfers.count"] >= 1

    # A position the service will not reach in time: 503 with Retry-After.
    late = await too_far
    assert late.status_code == 503, late.text
    assert "retry-after" in late.headers


async def test_a_retried_command_returns_its_first_answer_and_writes_nothing(
    system: System, client: httpx.AsyncClient
) -> None:
    tx, account = system.transaction.url, new_id()
    opened = await client.post(f"{tx}/accounts", json={"account_id": account, "currency": "EUR"})
    assert opened.status_code == 201, opened.text
    key, reference = str(uuid.uuid4()), f"once-{uuid.uuid4().hex}"
    deposit = f"{tx}/accounts/{account}/deposits"
    body = {"amount": 500, "reference": reference}

    first = await client.post(deposit, json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = await client.post(deposit, json=body, headers={"Idempotency-Key": key})
    assert again.status_code in (200, 201), again.text
    if again.status_code == 200:
        assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    # The account changes; the retry still answers what the first call did.
    other = await client.post(deposit, json={"amount": 1})
    assert other.status_code == 201
    head = system.head_position()
    late = await client.post(deposit, json=body, headers={"Idempotency-Key": key})
    assert late.status_code in (200, 201)
    assert late.json() == first.json()
    assert system.head_position() == head

    # The same key with another body is refused.
    for changed in ({"amount": 501, "reference": reference}, {"amount": 500}):
        reused = await client.post(deposit, json=changed, headers={"Idempotency-Key": key})
        assert_problem(reused, 422)
        assert problem_type(reused) == "idempotency-key-reused"
    assert system.head_position() == head

    # A refused command binds nothing: retried later, it is decided again.
    key2 = str(uuid.uuid4())
    withdraw = f"{tx}/accounts/{account}/withdrawals"
    refused = await client.post(withdraw, json={"amount": 600}, headers={"Idempotency-Key": key2})
    assert problem_type(refused) == "insufficient-funds"
    topped = await client.post(deposit, json={"amount": 100})
    assert topped.status_code == 201
    accepted = await client.post(withdraw, json={"amount": 600}, headers={"Idempotency-Key": key2})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["balance"] == 1

    events = await log_events(client, system.stream.url, stream_prefix=f"account-{account}")
    mine = [e for e in events if e["stream"] == f"account-{account}"]
    deposits = [e for e in mine if e["data"].get("reference") == reference]
    assert len(deposits) == 1
    assert Counter(e["type"] for e in mine) == {
        "AccountOpened": 1,
        "MoneyDeposited": 3,
        "MoneyWithdrawn": 1,
    }


async def test_fifty_concurrent_withdrawals_of_100_against_2000_accept_exactly_twenty(
    system: System, client: httpx.AsyncClient
) -> None:
    tx, account = system.transaction.url, new_id()
    opened = await client.post(f"{tx}/accounts", json={"account_id": account, "currency": "EUR"})
    assert opened.status_code == 201
    funded = await client.post(f"{tx}/accounts/{account}/deposits", json={"amount": 2_000})
    assert funded.status_code == 201

    async def withdraw() -> httpx.Response:
        return await client.post(
            f"{tx}/accounts/{account}/withdrawals",
            json={"amount": 100},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )

    answers = await asyncio.gather(*(withdraw() for _ in range(50)))
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 20, 409: 30}, [a.text for a in answers if a.status_code >= 500]
    assert {problem_type(a) for a in answers if a.status_code == 409} == {"insufficient-funds"}
    accepted = sorted(a.json()["balance"] for a in answers if a.status_code == 201)
    assert accepted == list(range(0, 2_000, 100))

    last = max(a.json()["position"] for a in answers if a.status_code == 201)
    read = await client.get(
        f"{system.accounting.url}/accounts/{account}", headers=min_position(last)
    )
    assert read.status_code == 200 and read.json()["balance"] == 0
    stream = await client.get(f"{system.stream.url}/streams/account-{account}")
    types = Counter(e["type"] for e in stream.json()["events"])
    assert types["MoneyWithdrawn"] == 20


@pytest.mark.parametrize("name", ["stream", "transaction", "accounting", "statistics"])
async def test_every_service_serves_health_metrics_openapi_and_docs(
    system: System, client: httpx.AsyncClient, name: str
) -> None:
    base = getattr(system, name).url
    health = await client.get(f"{base}/health")
    assert health.status_code == 200 and isinstance(health.json(), dict)
    metrics = await client.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    openapi = await client.get(f"{base}/openapi.json")
    assert openapi.status_code == 200 and openapi.json()["paths"]
    docs = await client.get(f"{base}/docs")
    assert docs.status_code == 200 and "<html" in docs.text.lower()
    unknown = await client.get(f"{base}/no-such-thing")
    assert_problem(unknown, 404)
