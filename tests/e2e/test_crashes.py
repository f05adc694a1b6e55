"""Processes killed under load: no acknowledged deposit lost, none doubled; the read side
serves alone while the write side is down."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.harness import (
    ServiceProcess,
    System,
    log_events,
    min_position,
    new_id,
    start_system,
)

pytestmark = pytest.mark.slow

CLIENTS = 8
DEPOSITS_PER_CLIENT = 30
ACCOUNTS = 6
RETRY_PAUSE = (0.02, 0.1)
DEADLINE = 60.0


@pytest.fixture(scope="module")
def crash_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[System]:
    """A system of its own: these tests kill its processes."""
    with ExitStack() as stack:
        yield start_system(request, stack, tmp_path_factory.mktemp("crash"), suite_store)


@dataclass
class Load:
    """Concurrent clients depositing with idempotency keys, each retrying until acknowledged."""

    tx_url: str
    accounts: list[str]
    acknowledged: dict[str, tuple[str, int]] = field(default_factory=dict)  # key: account, amount
    retries: Counter[str] = field(default_factory=Counter)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    acknowledged_at_kill: int = -1

    async def client(self, http: httpx.AsyncClient, number: int) -> None:
        rng = random.Random(number)
        for _ in range(DEPOSITS_PER_CLIENT):
            key = str(uuid.uuid4())
            account = rng.choice(self.accounts)
            body = {"amount": rng.randint(1, 10_000), "reference": key}
            started = time.monotonic()
            while True:
                assert time.monotonic() - started < DEADLINE, f"{key} never acknowledged"
                try:
                    response = await http.post(
                        f"{self.tx_url}/accounts/{account}/deposits",
                        json=body,
                        headers={"Idempotency-Key": key},
                    )
                except httpx.TransportError as exc:
                    self.retries[type(exc).__name__] += 1
                else:
                    if response.status_code in (200, 201):
                        assert response.json()["amount"] == body["amount"]
                        self.acknowledged[key] = (account, int(body["amount"]))
                        if len(self.acknowledged) % 20 == 0:
                            self.progress.set()
                        break
                    # Only "not now" may be retried; anything else is a wrong answer.
                    assert response.status_code >= 500, response.text
                    self.retries[str(response.status_code)] += 1
                await asyncio.sleep(rng.uniform(*RETRY_PAUSE))

    async def run_while(self, crash: ServiceProcess) -> None:
        """Run the load; kill -9 `crash` once it is under way, restart it after a moment."""
        limits = httpx.Limits(max_connections=CLIENTS * 2)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits) as http:
            clients = [asyncio.create_task(self.client(http, n)) for n in range(CLIENTS)]
            await asyncio.wait_for(self.progress.wait(), timeout=DEADLINE)
            self.acknowledged_at_kill = len(self.acknowledged)
            assert crash.kill(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.sleep(0.3)  # requests fail meanwhile: the clients must retry them
            await asyncio.to_thread(crash.start().wait_healthy)
            await asyncio.gather(*clients)


async def open_accounts(http: httpx.AsyncClient, tx_url: str, count: int) -> list[str]:
    accounts = [new_id("crash") for _ in range(count)]
    for account in accounts:
        response = await http.post(
            f"{tx_url}/accounts", json={"account_id": account, "currency": "EUR"}
        )
        assert response.status_code == 201, response.text
    return accounts


@pytest.mark.parametrize("victim", ["stream", "transaction", "accounting"])
async def test_a_killed_service_loses_and_doubles_no_acknowledged_deposit(
    crash_system: System, client: httpx.AsyncClient, victim: str
) -> None:
    system = crash_system
    accounts = await open_accounts(client, system.transaction.url, ACCOUNTS)
    load = Load(system.transaction.url, accounts)

    await load.run_while(getattr(system, victim))

    assert len(load.acknowledged) == CLIENTS * DEPOSITS_PER_CLIENT
    # The kill came in the middle of the load, and the clients did have to retry.
    assert 0 < load.acknowledged_at_kill < len(load.acknowledged) / 2
    if victim != "accounting":
        assert sum(load.retries.values()) > 0
    expected: defaultdict[str, int] = defaultdict(int)
    for account, amount in load.acknowledged.values():
        expected[account] += amount
    head = system.head_position()
    for account in accounts:
        read = await client.get(
            f"{system.accounting.url}/accounts/{account}", headers=min_position(head)
        )
        assert read.status_code == 200, read.text
        assert read.json()["balance"] == expected[account], f"{account} after {load.retries}"

    # The log holds exactly one deposit per key (the key is also the reference).
    events = await log_events(
        client, system.stream.url, type="MoneyDeposited", stream_prefix="account-crash-"
    )
    mine = Counter(
        e["data"]["reference"] for e in events if e["data"].get("reference") in load.acknowledged
    )
    assert set(mine) == set(load.acknowledged)
    assert [key for key, count in mine.items() if count != 1] == []


async def test_the_read_side_serves_alone_while_the_write_side_is_down(
    crash_system: System, client: httpx.AsyncClient
) -> None:
    system = crash_system
    (account,) = await open_accounts(client, system.transaction.url, 1)
    deposited = await client.post(
        f"{system.transaction.url}/accounts/{account}/deposits", json={"amount": 4_200}
    )
    assert deposited.status_code == 201
    position = deposited.json()["position"]
    read = await client.get(
        f"{system.accounting.url}/accounts/{account}", headers=min_position(position)
    )
    assert read.status_code == 200 and read.json()["balance"] == 4_200

    system.stream.kill(signal.SIGKILL)
    system.transaction.kill(signal.SIGKILL)
    try:
        # Reads and health answer within a second, again and again, while the stream is gone.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            for service in (system.accounting, system.statistics):
                health = await client.get(f"{service.url}/health", timeout=1.0)
                assert health.status_code == 200, health.text
                assert health.json()["position"] >= position
            read = await client.get(f"{system.accounting.url}/accounts/{account}", timeout=1.0)
            assert read.status_code == 200 and read.json()["balance"] == 4_200
            history = await client.get(
                f"{system.accounting.url}/accounts/{account}/transactions", timeout=1.0
            )
            assert history.status_code == 200
            await asyncio.sleep(0.1)
    finally:
        back = time.monotonic()
        await asyncio.to_thread(system.stream.start().wait_healthy)
        await asyncio.to_thread(system.transaction.start().wait_healthy)

    # Once the stream is back, the read side catches up with what is written next.
    deposited = await client.post(
        f"{system.transaction.url}/accounts/{account}/deposits", json={"amount": 1}
    )
    assert deposited.status_code == 201, deposited.text
    read = await client.get(
        f"{system.accounting.url}/accounts/{account}",
        headers=min_position(deposited.json()["position"]),
    )
    assert read.status_code == 200 and read.json()["balance"] == 4_201
    assert time.monotonic() - back < 15.0
    health = (await client.get(f"{system.accounting.url}/health")).json()
    assert health["head_position"] >= deposited.json()["position"]
