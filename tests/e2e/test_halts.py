"""A halted read model, over real processes: an event the read models cannot apply gets into
the log behind the stream service's back (written into its SQLite file while it is stopped),
both read models halt on it and go on serving, and the operator gets them past it with
`eventledger projection skip|park`, audited, while a wrong position is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.sqlite import SqliteEventStore
from tests.e2e.harness import HTTP, System, cli_env, new_id, running, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running(System(tmp_path)) as started:
        yield started


def eventledger(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(**{f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services})
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def command(system: System, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = HTTP.post(
        f"{system.transaction.url}{path}", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def write_behind_the_stream_service(system: System) -> int:
    """A deposit to an account never opened, appended to the stopped stream service's SQLite
    file with the store's own code: the door's checks are not on this path."""
    path = (system.stream.data_dir / "events.db").resolve()
    data = {"account_id": "ghost", "transaction_id": str(uuid.uuid4()), "amount": 5}
    event = NewEvent(uuid.uuid4(), "MoneyDeposited", {**data, "reference": None})

    async def append() -> int:
        store = SqliteEventStore.from_url(f"sqlite:///{path}", upcasters=build_upcasters())
        try:
            done = await store.append(
                "account-ghost", expected_version=StreamState.ANY, events=[event]
            )
        finally:
            await store.close()
        return done.positions[-1]

    system.stream.stop()
    position = asyncio.run(append())
    system.stream.start().wait_healthy()
    return position


def health(url: str) -> dict[str, Any]:
    body: dict[str, Any] = HTTP.get(f"{url}/health", timeout=5.0).json()
    return body


def halted_at(url: str, position: int) -> dict[str, Any] | None:
    body = health(url)
    halted = body.get("halted")
    return body if halted and halted["position"] == position else None


def test_the_operator_skips_and_parks_the_event_read_models_halted_on(
    system: System,
) -> None:
    account = new_id()
    command(system, "/accounts", {"account_id": account, "currency": "EUR"})
    command(system, f"/accounts/{account}/deposits", {"amount": 100})
    bad = write_behind_the_stream_service(system)
    head = command(system, f"/accounts/{account}/deposits", {"amount": 20})["position"]
    for service in (system.accounting, system.statistics):
        wait_for(lambda s=service: halted_at(s.url, bad), timeout=20, what=f"{service.name} halted")
        # Halted, yet serving: /health is 200 and reads answer as of before the event.
        assert HTTP.get(f"{service.url}/health").status_code == 200
    balance = HTTP.get(f"{system.accounting.url}/accounts/{account}").json()["balance"]
    assert balance == 100

    wrong = eventledger(system, "projection", "skip", "accounting", "--position", str(bad + 1))
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "halted at position" in wrong.stderr
    assert halted_at(system.accounting.url, bad) is not None

    skipped = eventledger(
        system, "projection", "skip", "accounting", "--position", str(bad), "--reason", "ghost"
    )
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert f"Skipped the event at position {bad}" in skipped.stdout
    parked = eventledger(
        system, "projection", "park", "statistics", "--position", str(bad), "--json"
    )
    assert parked.returncode == 0, parked.stdout + parked.stderr
    assert json.loads(parked.stdout)["decision"]["action"] == "park"

    for service in (system.accounting, system.statistics):
        wait_for(
            lambda s=service: (b := health(s.url))["position"] >= head and not b["halted"],
            timeout=20,
            what=f"{service.name} past the halt",
        )
    response = HTTP.get(
        f"{system.accounting.url}/accounts/{account}", headers={"X-Min-Position": str(head)}
    )
    assert response.json()["balance"] == 120
    assert health(system.accounting.url)["decisions"]["skipped"] == 1
    assert health(system.statistics.url)["decisions"]["parked"] == 1

    listed = eventledger(system, "projection", "decisions", "statistics", "--json")
    assert listed.returncode == 0, listed.stderr
    [kept] = json.loads(listed.stdout)["items"]
    assert (kept["position"], kept["action"], kept["envelope"]["stream"]) == (
        bad,
        "park",
        "account-ghost",
    )
    assert "@" in kept["by"]  # who: the operator's user and host

    # A restart keeps the decisions: the read models come back past the event, not halted.
    system.accounting.restart()
    assert HTTP.get(f"{system.accounting.url}/health").json()["halted"] is None
