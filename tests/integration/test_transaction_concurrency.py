"""Concurrent commands never break an account's rules, and contention alone refuses nothing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.integration.test_transaction_api import Ledger, assert_problem, running_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


async def retries(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eventledger_transaction_retries_total{")
    )


async def fifty_withdrawals_of_100(ledger: Ledger, clients: list[httpx.AsyncClient]) -> None:
    account_id = await ledger.funded(2000)
    responses = await asyncio.gather(
        *(
            clients[i % len(clients)].post(
                f"/accounts/{account_id}/withdrawals", json={"amount": 100}
            )
            for i in range(50)
        )
    )
    accepted = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code != 201]
    assert len(accepted) == 20, [r.text for r in refused]
    assert len(refused) == 30
    for response in refused:
        assert_problem(response, 409, "insufficient-funds")
    assert sorted(r.json()["balance"] for r in accepted) == list(range(0, 2000, 100))
    withdrawals = [e for e in await ledger.events(account_id) if e.type == "MoneyWithdrawn"]
    assert len(withdrawals) == 20
    assert {e.data["transaction_id"] for e in withdrawals} == {
        r.json()["transaction_id"] for r in accepted
    }
    assert await ledger.balance(account_id) == 0


async def test_fifty_concurrent_withdrawals_give_twenty_successes_and_thirty_refusals(
    ledger: Ledger,
) -> None:
    await fifty_withdrawals_of_100(ledger, [ledger.http])


async def test_fifty_concurrent_withdrawals_through_three_instances(ledger: Ledger) -> None:
    # Instances do not share locks: they meet at the expected-version check and retry.
    clients = [ledger.http, await ledger.another_instance(), await ledger.another_instance()]
    await fifty_withdrawals_of_100(ledger, clients)


async def test_fifty_concurrent_withdrawals_without_a_cache() -> None:
    async with running_ledger(cache_size=0) as ledger:
        clients = [ledger.http, await ledger.another_instance(cache_size=0)]
        await fifty_withdrawals_of_100(ledger, clients)


async def test_a_conflict_with_another_instance_is_retried(ledger: Ledger) -> None:
    account_id = await ledger.open()  # this instance now has the account cached at version 1
    other = await ledger.another_instance()
    await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
    before = await retries(ledger.http)
    response = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1})
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == 101
    assert await retries(ledger.http) == before + 1


async def test_a_refusal_is_never_decided_on_a_stale_cache(ledger: Ledger) -> None:
    account_id = await ledger.open()  # cached here at balance 0
    other = await ledger.another_instance()
    await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
    response = await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 60})
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == 40


async def test_an_account_closed_by_another_instance_takes_no_more_money(ledger: Ledger) -> None:
    account_id = await ledger.open()
    other = await ledger.another_instance()
    assert (await other.post(f"/accounts/{account_id}/close", json={})).status_code == 201
    head = await ledger.head()
    response = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 5})
    assert_problem(response, 409, "account-closed")
    assert await ledger.head() == head


async def test_when_retries_run_out_the_command_answers_503_and_writes_nothing() -> None:
    async with running_ledger(max_retries=0) as ledger:
        account_id = await ledger.open()
        other = await ledger.another_instance()
        await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
        head = await ledger.head()
        response = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1})
        assert_problem(response, 503, "too-much-contention")
        assert response.headers["retry-after"]
        assert await ledger.head() == head


async def test_concurrent_transfers_across_instances_keep_every_cent(ledger: Ledger) -> None:
    clients = [ledger.http, await ledger.another_instance()]
    accounts = [await ledger.funded(500, overdraft_limit=100) for _ in range(5)]
    rng = random.Random(7)
    moves = []
    for _ in range(80):
        source, target = rng.sample(accounts, 2)
        moves.append((source, target, rng.randint(1, 300)))
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(
                "/transfers", json={"from_account": s, "to_account": t, "amount": a}
            )
            for i, (s, t, a) in enumerate(moves)
        )
    )
    for response in responses:
        if response.status_code != 201:
            assert_problem(response, 409, "insufficient-funds")
    balances = [await ledger.balance(a) for a in accounts]
    assert sum(balances) == 2500
    assert min(balances) >= -100
    kinds = [e.type for a in accounts for e in await ledger.events(a)]
    accepted = sum(r.status_code == 201 for r in responses)
    assert kinds.count("TransferSent") == kinds.count("TransferReceived") == accepted
