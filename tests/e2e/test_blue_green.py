"""Blue/green rebuilds over real processes: `eventledger rebuild accounting --blue-green` while
a client keeps reading a balance and commands keep flowing (every answer right, never 503
`rebuilding`), and the accounting service killed (-9) during a build and around a switch:
after a restart exactly one version of the read model is left, live, with right balances.
Each test runs with the read models on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from eventledger.services.readside.db import SqliteReadModelDB, open_readmodel_db
from eventledger.services.readside.versions import versions_of
from tests.e2e.harness import (
    System,
    cli_env,
    fresh_postgres_database,
    min_position,
    new_id,
    running,
    wait_for,
)

pytestmark = pytest.mark.slow

EVENTS_PER_APPEND = 1000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def bg_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """A system of its own (these tests kill its accounting service), its read models on
    SQLite files or in a fresh PostgreSQL database."""
    with ExitStack() as stack:
        extra: list[str] = []
        if request.param == "postgresql":
            server = request.getfixturevalue("postgres_url")
            extra = ["--readmodel-store", stack.enter_context(fresh_postgres_database(server))]
        root = tmp_path_factory.mktemp(f"bluegreen-{request.param}")
        yield stack.enter_context(running(System(root, extra_args=extra)))


def present_versions(system: System) -> list[int]:
    """The versions of the accounting read model that exist now (live or not)."""
    args = system.accounting.extra_args
    if "--readmodel-store" in args:
        db = open_readmodel_db(args[args.index("--readmodel-store") + 1], namespace="accounting")
    else:
        db = SqliteReadModelDB(system.accounting.data_dir / "accounting.db", namespace="accounting")
    try:
        return versions_of(db, name="accounting").present()
    finally:
        db.close()


async def open_account(http: httpx.AsyncClient, system: System) -> str:
    account = new_id("bg")
    response = await http.post(
        f"{system.transaction.url}/accounts", json={"account_id": account, "currency": "EUR"}
    )
    assert response.status_code == 201, response.text
    return account


async def many_deposits(http: httpx.AsyncClient, system: System, account: str, appends: int) -> int:
    """`appends` x 1000 deposits of 1 straight into the account's stream (a long log to
    replay, written fast); the head after them."""
    stream = f"account-{account}"
    version = (
        await http.get(f"{system.stream.url}/streams/{stream}", params={"limit": "1"})
    ).json()["version"]
    position = 0
    for _ in range(appends):
        events = [
            {
                "type": "MoneyDeposited",
                "schema_version": 1,
                "data": {
                    "account_id": account,
                    "transaction_id": str(uuid.uuid4()),
                    "amount": 1,
                    "reference": None,
                },
            }
            for _ in range(EVENTS_PER_APPEND)
        ]
        response = await http.post(
            f"{system.stream.url}/streams/{stream}",
            json={"expected_version": version, "events": events},
        )
        assert response.status_code == 201, response.text
        version += EVENTS_PER_APPEND
        position = response.json()["positions"][-1]
    return int(position)


async def rebuild_status(http: httpx.AsyncClient, system: System) -> dict[str, Any]:
    response = await http.get(f"{system.accounting.url}/admin/rebuild")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def balance(http: httpx.AsyncClient, system: System, account: str, position: int) -> int:
    response = await http.get(
        f"{system.accounting.url}/accounts/{account}", headers=min_position(position)
    )
    assert response.status_code == 200, response.text
    return int(response.json()["balance"])


async def test_rebuild_blue_green_while_reads_and_commands_flow_answers_right_never_503(
    bg_system: System,
) -> None:
    system = bg_system
    async with httpx.AsyncClient(timeout=15.0) as http:
        account = await open_account(http, system)
        expected = 0
        await many_deposits(http, system, account, 5)
        expected += 5 * EVENTS_PER_APPEND
        argv = [
            sys.executable, "-m", "eventledger", "rebuild", "accounting", "--blue-green",
            "--url", system.accounting.url,
        ]  # fmt: skip
        cli = await asyncio.to_thread(
            subprocess.Popen,
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=cli_env(COLUMNS="120"),
        )
        reads = after_switch = 0
        deadline = time.monotonic() + 90
        while after_switch < 20:
            assert time.monotonic() < deadline, "the blue/green rebuild did not end"
            deposit = await http.post(
                f"{system.transaction.url}/accounts/{account}/deposits", json={"amount": 3}
            )
            assert deposit.status_code == 201, deposit.text
            expected += 3
            # Read-your-writes, exactly: never a 503 `rebuilding`, never an older balance.
            assert await balance(http, system, account, deposit.json()["position"]) == expected
            reads += 1
            if cli.poll() is not None:
                after_switch += 1
        output = cli.communicate(timeout=30)[0].decode()
        assert cli.returncode == 0, output
        assert "Switched: version 2 of the accounting read model is live" in output
        status = await rebuild_status(http, system)
        assert (status["live_version"], status["blue_green"]["state"]) == (2, "done")
        assert present_versions(system) == [2]
        assert reads >= 20


async def test_a_kill_9_during_the_build_and_around_the_switch_leaves_one_live_version(
    bg_system: System,
) -> None:
    system = bg_system
    async with httpx.AsyncClient(timeout=15.0) as http:
        account = await open_account(http, system)
        head = await many_deposits(http, system, account, 20)
        assert await balance(http, system, account, head) == 20 * EVENTS_PER_APPEND

        # Killed during the build: the restarted service resumes it and switches.
        started = await http.post(
            f"{system.accounting.url}/admin/rebuild", json={"mode": "blue-green"}
        )
        assert started.status_code == 202, started.text
        assert started.json()["blue_green"]["state"] == "building"
        system.accounting.kill(signal.SIGKILL)
        await asyncio.to_thread(system.accounting.start().wait_healthy)
        assert await balance(http, system, account, head) == 20 * EVENTS_PER_APPEND
        done = await until_done(http, system)
        assert done["live_version"] == 2
        assert "resuming the blue/green rebuild of version 2" in system.accounting.log_text()
        await asyncio.to_thread(
            wait_for, lambda: present_versions(system) == [2], timeout=20, what="one version"
        )

        # Killed around the switch (when it is seen switching, or just done).
        head = await many_deposits(http, system, account, 2)
        started = await http.post(
            f"{system.accounting.url}/admin/rebuild", json={"mode": "blue-green"}
        )
        assert started.status_code == 202, started.text
        # A remote state, polled as fast as it answers: the switch is a moment.
        while (await rebuild_status(http, system))["blue_green"]["state"] == "building":  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        system.accounting.kill(signal.SIGKILL)
        await asyncio.to_thread(system.accounting.start().wait_healthy)
        done = await until_done(http, system)
        assert done["live_version"] == 3
        await asyncio.to_thread(
            wait_for, lambda: present_versions(system) == [3], timeout=20, what="one version"
        )
        deposit = await http.post(
            f"{system.transaction.url}/accounts/{account}/deposits", json={"amount": 5}
        )
        assert deposit.status_code == 201, deposit.text
        assert (
            await balance(http, system, account, deposit.json()["position"])
            == 22 * EVENTS_PER_APPEND + 5
        )
        history = await http.get(
            f"{system.accounting.url}/accounts/{account}/transactions", params={"limit": "1000"}
        )
        assert history.status_code == 200 and len(history.json()["items"]) == 1000


async def until_done(http: httpx.AsyncClient, system: System) -> dict[str, Any]:
    """The build's status once it is done and its version live (the restarted service
    resumes it, or finds it switched); fails on `failed` or after a minute."""
    deadline = time.monotonic() + 60.0
    while True:
        status = await rebuild_status(http, system)
        if (
            status["blue_green"]["state"] == "done"
            and status["live_version"] == status["blue_green"]["version"]
        ):
            return status
        assert status["blue_green"]["state"] != "failed", status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
