"""Reversals over real processes: the command line reverses a transfer and the accounting
service links both ways; reversals in flight when the transaction service is killed (-9) are
retried with their Idempotency-Keys after the restart: each answers once and for all, the
first answer again where there was one, and the log holds one set of events per reversal."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.e2e.harness import System, log_events, min_position, new_id, start_system
from tests.e2e.test_cli import eventledger, ok, one_line_error, system_env

pytestmark = pytest.mark.slow

REVERSALS = 24


@pytest.fixture(scope="module")
def reversal_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[System]:
    """A system of its own: a test kills its transaction service."""
    with ExitStack() as stack:
        yield start_system(request, stack, tmp_path_factory.mktemp("reversals"), suite_store)


async def command(
    http: httpx.AsyncClient, system: System, path: str, body: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    response = await http.post(f"{system.transaction.url}{path}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_command_line_reverses_a_transfer_and_the_history_links_both_ways(
    reversal_system: System,
) -> None:
    system, env = reversal_system, system_env(reversal_system)
    alice, bob = new_id("alice"), new_id("bob")
    ok(eventledger("open", "--currency", "EUR", "--id", alice, env=env))
    ok(eventledger("open", "--currency", "EUR", "--id", bob, env=env))
    ok(eventledger("deposit", alice, "1000", env=env))
    sent = json.loads(ok(eventledger("transfer", alice, bob, "300", "--json", env=env)))
    out = ok(eventledger("reverse", sent["transaction_id"], "--reason", "wrong payee", env=env))
    assert f"Reversed transaction {sent['transaction_id']}" in out
    assert alice in out and bob in out
    again = one_line_error(eventledger("reverse", sent["transaction_id"], env=env))
    assert again.startswith("error: Transaction already reversed") and "reversed by" in again
    history = ok(eventledger("history", bob, env={**env, "COLUMNS": "200"}))
    assert f"reverses {sent['transaction_id'][:8]}" in history
    assert "reversed by " in history
    with httpx.Client(timeout=10.0) as http:
        floor = min_position(system.head_position())
        url = f"{system.accounting.url}/accounts"
        for account, amount in ((alice, 300), (bob, -300)):
            items = http.get(f"{url}/{account}/transactions", headers=floor).json()["items"]
            reversal, original = items[0], items[1]
            assert (reversal["kind"], reversal["amount"]) == ("reversal", amount)
            assert reversal["reverses"] == original["transaction_id"] == sent["transaction_id"]
            assert original["reversed_by"] == reversal["transaction_id"]
            assert reversal["reference"] == "wrong payee"
        balances = [http.get(f"{url}/{a}", headers=floor).json()["balance"] for a in (alice, bob)]
        assert balances == [1000, 0]
        stats = http.get(f"{system.statistics.url}/stats", headers=floor).json()
        assert stats["currencies"]["EUR"]["reversals"]["count"] >= 1


async def reverse_until_answered(
    http: httpx.AsyncClient, system: System, original: str, key: str
) -> tuple[int, dict[str, Any]]:
    """POST the reversal with its key until the service answers it (it may be down)."""
    url = f"{system.transaction.url}/transactions/{original}/reverse"
    for _ in range(600):
        try:
            response = await http.post(
                url, json={"reference": "undo"}, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError:
            await asyncio.sleep(0.05)
            continue
        if response.status_code == 503:
            await asyncio.sleep(0.05)
            continue
        return response.status_code, response.json()
    raise AssertionError(f"reversal of {original} never answered")


async def test_reversals_retried_across_a_kill_of_the_transaction_service_write_once(
    reversal_system: System,
) -> None:
    system = reversal_system
    async with httpx.AsyncClient(timeout=10.0) as http:
        account = (await command(http, system, "/accounts", {"currency": "EUR"}))["account_id"]
        deposits = [
            (await command(http, system, f"/accounts/{account}/deposits", {"amount": 10 + n}))[
                "transaction_id"
            ]
            for n in range(REVERSALS)
        ]
        keys = {tx: f"reverse-{uuid.uuid4()}" for tx in deposits}
        first: dict[str, tuple[int, dict[str, Any]]] = {}
        answered = asyncio.Event()

        async def one(tx: str) -> None:
            try:
                first[tx] = await reverse_until_answered_once(http, system, tx, keys[tx])
                answered.set()
            except httpx.TransportError:
                pass  # killed in flight: the outcome is unknown until the retry

        flight = [asyncio.create_task(one(tx)) for tx in deposits]
        # Kill -9 once the first reversal is answered: the others are in flight (they share
        # one account, so the service carries them out one after another).
        await asyncio.wait_for(answered.wait(), timeout=30)
        assert system.transaction.kill(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.gather(*flight)
        system.transaction.restart()
        retried = {tx: await reverse_until_answered(http, system, tx, keys[tx]) for tx in deposits}
        # Each answered 201 (written now) or 200 (written before the kill: the first answer).
        assert {status for status, _ in retried.values()} <= {200, 201}
        for tx, (status, body) in retried.items():
            assert body["reverses"] == tx
            assert body["accounts"][0]["account_id"] == account
            if tx in first and first[tx][0] == 201:
                assert (status, body) == (200, first[tx][1])
        events = await log_events(http, system.stream.url)
    mine = [e for e in events if e["data"].get("reverses") in keys]  # (the module's others)
    reversed_ = Counter(e["data"]["reverses"] for e in mine if e["type"] == "TransactionReversed")
    assert reversed_ == Counter(deposits)  # every one reversed exactly once
    markers = Counter(e["stream"] for e in mine if e["type"] == "ReversalRecorded")
    assert markers == Counter(f"reversal-{tx}" for tx in deposits)
    # The kill came in the middle: some were answered before it, some were not.
    assert 0 < sum(1 for status, _ in first.values() if status == 201) < REVERSALS


async def reverse_until_answered_once(
    http: httpx.AsyncClient, system: System, original: str, key: str
) -> tuple[int, dict[str, Any]]:
    """One attempt, as a client whose connection may die with the service."""
    response = await http.post(
        f"{system.transaction.url}/transactions/{original}/reverse",
        json={"reference": "undo"},
        headers={"Idempotency-Key": key},
    )
    return response.status_code, response.json()
