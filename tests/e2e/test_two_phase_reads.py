"""Two-phase transfers as a reader sees them, over real processes on each store backend:
holds placed, posted in part, voided and expired through the transaction service; the
accounting service's available balance, pending listing, history and past balances; the
statistics' counters; `eventledger pending` on the command line; and both read models
killed (-9) among holds and outcomes, each event applied once after the restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.e2e.harness import System, cli_env, min_position, new_id, start_system, wait_for
from tests.e2e.test_story import currency_stats

pytestmark = pytest.mark.slow


class Reader:
    """Commands that assert their status, and reads that wait for the last command."""

    def __init__(self, client: httpx.AsyncClient, system: System) -> None:
        self.http = client
        self.system = system
        self.position = 0

    async def command(self, path: str, body: dict[str, Any]) -> Any:
        response = await self.http.post(
            f"{self.system.transaction.url}{path}",
            json=body,
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 201, response.text
        answer = response.json()
        self.position = max(self.position, answer["position"])
        return answer

    async def read(self, base: str, path: str, **params: Any) -> Any:
        response = await self.http.get(
            f"{base}{path}", params=params, headers=min_position(self.position)
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def account(self, account: str) -> tuple[int, int, int, int]:
        body = await self.read(self.system.accounting.url, f"/accounts/{account}")
        return (
            body["balance"],
            body["available"],
            body["pending_debits"],
            body["pending_credits"],
        )


async def test_a_reader_follows_holds_posts_voids_and_expiries(
    store_system: System, client: httpx.AsyncClient
) -> None:
    reader = Reader(client, store_system)
    acc, stats = store_system.accounting.url, store_system.statistics.url
    currency = "NOK"  # this test's own currency: its statistics are compared before and after
    stats_before = await reader.read(stats, "/stats")
    a, b = new_id("payer"), new_id("payee")
    for account in (a, b):
        await reader.command("/accounts", {"account_id": account, "currency": currency})
    await reader.command(f"/accounts/{a}/deposits", {"amount": 10_000})

    hold = {"from_account": a, "to_account": b, "pending": True}
    first = await reader.command(
        "/transfers", hold | {"amount": 4_000, "reference": "order 7", "timeout_seconds": 3600}
    )
    second = await reader.command("/transfers", hold | {"amount": 1_000})
    held = reader.position
    assert await reader.account(a) == (10_000, 5_000, 5_000, 0)
    assert await reader.account(b) == (0, 0, 0, 5_000)
    listed = await reader.read(acc, f"/accounts/{a}/pending")
    assert [(i["transaction_id"], i["direction"], i["amount"]) for i in listed["items"]] == [
        (first["transaction_id"], "out", 4_000),
        (second["transaction_id"], "out", 1_000),
    ]
    assert listed["items"][0]["expires_at"] == first["expires_at"]
    assert listed["items"][1]["expires_at"] is None

    await reader.command(f"/transfers/{first['transaction_id']}/post", {"amount": 2_500})
    await reader.command(f"/transfers/{second['transaction_id']}/void", {})
    assert await reader.account(a) == (7_500, 7_500, 0, 0)
    assert await reader.account(b) == (2_500, 2_500, 0, 0)
    assert (await reader.read(acc, f"/accounts/{b}/pending"))["items"] == []

    # A hold with a short timeout: the transaction service expires it from the log.
    third = await reader.command("/transfers", hold | {"amount": 500, "timeout_seconds": 1})

    def expired() -> bool:
        response = httpx.get(f"{acc}/accounts/{a}/transactions", params={"limit": 1})
        return response.status_code == 200 and response.json()["items"][0]["kind"] == (
            "transfer_expired"
        )

    wait_for(expired, timeout=30, what="the hold to expire")
    history = (await reader.read(acc, f"/accounts/{a}/transactions"))["items"]
    assert [(i["kind"], i["amount"], i["held"], i["available_after"]) for i in history] == [
        ("transfer_expired", 0, -500, 7_500),
        ("transfer_pending", 0, -500, 7_000),
        ("transfer_voided", 0, -1_000, 7_500),
        ("transfer_posted", -2_500, -4_000, 6_500),
        ("transfer_pending", 0, -1_000, 5_000),
        ("transfer_pending", 0, -4_000, 6_000),
        ("deposit", 10_000, None, 10_000),
    ]
    assert history[0]["transaction_id"] == third["transaction_id"]
    assert history[3]["reference"] == "order 7"

    then = await reader.read(acc, f"/accounts/{a}/balance", at_position=held)
    assert (then["balance"], then["available"], then["pending_debits"]) == (10_000, 5_000, 5_000)

    position = max(reader.position, store_system.head_position())
    after = await client.get(f"{stats}/stats", headers=min_position(position))
    assert after.status_code == 200, after.text
    old = currency_stats(stats_before, currency).get("two_phase", {})
    new = currency_stats(after.json(), currency)["two_phase"]
    delta = {
        kind: (
            counters["count"] - old.get(kind, {}).get("count", 0),
            counters["volume"] - old.get(kind, {}).get("volume", 0),
        )
        for kind, counters in new.items()
    }
    assert delta == {
        "placed": (3, 5_500),
        "pending": (0, 0),
        "posted": (1, 2_500),
        "voided": (1, 1_000),
        "expired": (1, 500),
    }


async def test_the_command_line_lists_pending_transfers(
    system: System, client: httpx.AsyncClient
) -> None:
    reader = Reader(client, system)
    a, b = new_id("cli-payer"), new_id("cli-payee")
    for account in (a, b):
        await reader.command("/accounts", {"account_id": account, "currency": "EUR"})
    await reader.command(f"/accounts/{a}/deposits", {"amount": 1_000})
    hold = await reader.command(
        "/transfers",
        {"from_account": a, "to_account": b, "amount": 250, "pending": True, "reference": "r1"},
    )
    ports = {f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services}
    env = cli_env(**ports, COLUMNS="200")

    def eventledger(*args: str, wait: bool = True) -> str:
        floor = ["--min-position", str(reader.position)] if wait else []
        done = subprocess.run(
            [sys.executable, "-m", "eventledger", *args, *floor],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    listed = json.loads(eventledger("pending", a, "--json"))
    assert (listed["pending_debits"], listed["pending_credits"]) == (250, 0)
    assert [
        (i["transaction_id"], i["direction"], i["amount"], i["reference"]) for i in listed["items"]
    ] == [(hold["transaction_id"], "out", 250, "r1")]
    table = eventledger("pending", a)
    assert "available 750 (7.50 EUR) (held out 250 (2.50 EUR)" in table
    assert hold["transaction_id"] in table and "never" in table
    shown = eventledger("balance", a)
    assert "available" in shown and "750 (7.50 EUR)" in shown
    # The statistics (no --min-position there: wait for the position first).
    wait_for(
        lambda: (
            httpx.get(
                f"{system.statistics.url}/stats", headers=min_position(reader.position)
            ).status_code
            == 200
        ),
        timeout=10,
        what="the statistics to apply the hold",
    )
    counted = json.loads(eventledger("stats", "--json", wait=False))["currencies"]["EUR"]
    assert counted["two_phase"]["pending"]["count"] >= 1
    assert "holds pending count" in eventledger("stats", wait=False)


@pytest.fixture(scope="module")
def crash_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[System]:
    """A system of its own: this test kills its read models."""
    with ExitStack() as stack:
        root = tmp_path_factory.mktemp("two-phase-crash")
        yield start_system(request, stack, root, suite_store)


async def test_read_models_killed_among_holds_and_outcomes_apply_each_once(
    crash_system: System, client: httpx.AsyncClient
) -> None:
    system = crash_system
    reader = Reader(client, system)
    pairs = [(new_id("payer"), new_id("payee")) for _ in range(4)]
    for payer, payee in pairs:
        for account in (payer, payee):
            await reader.command("/accounts", {"account_id": account, "currency": "SEK"})
        await reader.command(f"/accounts/{payer}/deposits", {"amount": 100_000})
    expected: dict[str, list[int]] = {a: [0, 0] for pair in pairs for a in pair}  # moved, held
    pending: dict[str, set[str]] = {payer: set() for payer, _ in pairs}
    done = 0
    progress = asyncio.Event()

    async def client_of(number: int) -> None:
        nonlocal done
        payer, payee = pairs[number]
        for step in range(12):
            amount = 100 + 10 * step + number
            hold = await reader.command(
                "/transfers",
                {"from_account": payer, "to_account": payee, "amount": amount, "pending": True},
            )
            tx = hold["transaction_id"]
            if step % 3 == 0:  # posted in part
                await reader.command(f"/transfers/{tx}/post", {"amount": amount - 7})
                expected[payer][0] -= amount - 7
                expected[payee][0] += amount - 7
            elif step % 3 == 1:
                await reader.command(f"/transfers/{tx}/void", {})
            else:  # left pending
                expected[payer][1] += amount
                expected[payee][1] += amount
                pending[payer].add(tx)
            done += 1
            if done == 12:
                progress.set()

    clients = [asyncio.create_task(client_of(n)) for n in range(len(pairs))]
    await asyncio.wait_for(progress.wait(), timeout=60)
    for victim in (system.accounting, system.statistics):
        assert victim.kill(signal.SIGKILL) == -signal.SIGKILL
    await asyncio.gather(*clients)
    for victim in (system.accounting, system.statistics):
        await asyncio.to_thread(victim.start().wait_healthy)
    head = max(reader.position, system.head_position())
    reader.position = head
    for payer, payee in pairs:
        moved, held = expected[payer]
        assert await reader.account(payer) == (100_000 + moved, 100_000 + moved - held, held, 0)
        moved, held = expected[payee]
        assert await reader.account(payee) == (moved, moved, 0, held)
        listed = await reader.read(system.accounting.url, f"/accounts/{payer}/pending")
        assert {i["transaction_id"] for i in listed["items"]} == pending[payer]
    stats = (await reader.read(system.statistics.url, "/stats"))["currencies"]["SEK"]
    assert stats["two_phase"]["placed"]["count"] == 48
    assert stats["two_phase"]["pending"] == {
        "count": sum(len(p) for p in pending.values()),
        "volume": sum(expected[payer][1] for payer, _ in pairs),
    }
    assert (stats["two_phase"]["posted"]["count"], stats["two_phase"]["voided"]["count"]) == (
        16,
        16,
    )
    assert stats["total_balance"] == 400_000
