"""Two-phase transfers over real processes, on each store backend: a hold's expiry survives a
kill -9 of the transaction service before its deadline (the restarted service finds the
deadline in the log and writes the expiry once), two transaction instances expiring the same
holds write each expiry once, and `eventledger hold` drives it all from the command line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    HTTP,
    ServiceProcess,
    System,
    cli_env,
    new_id,
    start_system,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def two_phase_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """A system of its own per backend: these tests kill its transaction service."""
    with ExitStack() as stack:
        yield start_system(
            request, stack, tmp_path_factory.mktemp(f"two-phase-{request.param}"), request.param
        )


def command(system: System, path: str, body: dict[str, Any], url: str | None = None) -> Any:
    response = HTTP.post(
        f"{url or system.transaction.url}{path}",
        json=body,
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    return response.json()


def funded_pair(system: System, amount: int = 10_000) -> tuple[str, str]:
    a, b = new_id("payer"), new_id("payee")
    for account in (a, b):
        command(system, "/accounts", {"account_id": account, "currency": "EUR"})
    command(system, f"/accounts/{a}/deposits", {"amount": amount})
    return a, b


def voided(system: System, transaction_ids: set[str]) -> list[dict[str, Any]]:
    """The PendingTransferVoided events of these transfers in the log (from the stream)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        response = HTTP.get(
            f"{system.stream.url}/events",
            params={"after": after, "type": "PendingTransferVoided", "limit": 1000},
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found += [e for e in page["events"] if e["data"]["transaction_id"] in transaction_ids]
        if len(page["events"]) < 1000:
            return found
        after = page["last_position"]


def wait_until(moment: str) -> None:
    """Wait until the wall clock has passed an RFC 3339 UTC time (the holds' deadline)."""
    deadline = datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    wait_for(lambda: time.time() > deadline + 1, timeout=60, what=f"the clock to pass {moment}")


def test_an_expiry_due_while_the_transaction_service_is_down_is_written_once_after_restart(
    two_phase_system: System,
) -> None:
    system = two_phase_system
    a, b = funded_pair(system)
    hold = command(
        system,
        "/transfers",
        {"from_account": a, "to_account": b, "amount": 700, "pending": True, "timeout_seconds": 3},
    )
    assert system.transaction.kill(signal.SIGKILL) == -signal.SIGKILL
    wait_until(hold["expires_at"])
    assert voided(system, {hold["transaction_id"]}) == []  # nobody expired it meanwhile
    system.transaction.restart()
    events = wait_for(
        lambda: (found := voided(system, {hold["transaction_id"]})) and len(found) >= 2 and found,
        timeout=30,
        what="the expiry after the restart",
    )
    # One pair, written once, with reason "expired": and not again after a second restart.
    system.transaction.kill(signal.SIGKILL)
    system.transaction.restart()
    state = HTTP.get(f"{system.transaction.url}/transfers/{hold['transaction_id']}").json()
    assert state["status"] == "expired"
    again = voided(system, {hold["transaction_id"]})
    assert sorted(e["data"]["account_id"] for e in again) == sorted([a, b])
    assert {e["data"]["reason"] for e in again} == {"expired"}
    assert [e["id"] for e in again] == [e["id"] for e in events]
    refused = HTTP.post(
        f"{system.transaction.url}/transfers/{hold['transaction_id']}/post", json={}
    )
    assert (refused.status_code, refused.json()["transfer_status"]) == (409, "expired")


def test_two_transaction_instances_expiring_the_same_holds_write_each_expiry_once(
    two_phase_system: System,
) -> None:
    system = two_phase_system
    first = system.transaction
    # A second instance of the same installation: the same stream and idempotency secret.
    second = ServiceProcess(
        "transaction", first.data_dir.parent / "transaction-2", first.log_dir, first.extra_args
    )
    second.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(first.data_dir / "idempotency.secret", second.data_dir / "idempotency.secret")
    second.start().wait_healthy()
    try:
        holds = []
        for index in range(6):
            a, b = funded_pair(system, 1_000)
            url = (first if index % 2 else second).url
            body = {"from_account": a, "to_account": b, "amount": 100 + index}
            holds.append(
                command(system, "/transfers", body | {"pending": True, "timeout_seconds": 2}, url)
            )
        ids = {h["transaction_id"] for h in holds}
        wait_for(
            lambda: len(voided(system, ids)) >= 2 * len(ids),
            timeout=30,
            what="every hold to expire",
        )
        # Both instances had the deadlines; give the slower one its chance to write twice.
        wait_for(
            lambda: all(
                HTTP.get(f"{s.url}/transfers/{h['transaction_id']}").json()["status"] == "expired"
                for s in (first, second)
                for h in holds
            ),
            timeout=10,
            what="both instances to see every hold expired",
        )
        metrics = [HTTP.get(f"{s.url}/metrics").text for s in (first, second)]
        events = voided(system, ids)
        assert len(events) == 2 * len(ids)
        assert len({(e["data"]["transaction_id"], e["data"]["account_id"]) for e in events}) == (
            2 * len(ids)
        )
        written = sum(_expired_count(text) for text in metrics)
        assert written == len(ids)  # each expiry written by exactly one of them
    finally:
        second.stop()


def _expired_count(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith('eventledger_transaction_hold_expiries_total{outcome="expired"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def run_cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "eventledger",
            *args,
            "--transaction-url",
            system.transaction.url,
            "--accounting-url",
            system.accounting.url,
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )


def test_the_command_line_places_shows_posts_and_voids_holds(two_phase_system: System) -> None:
    system = two_phase_system
    a, b = funded_pair(system)
    placed = run_cli(system, "hold", "place", a, b, "2500", "--timeout", "600", "--json")
    assert placed.returncode == 0, placed.stderr
    hold = json.loads(placed.stdout)
    assert (hold["status"], hold["from_available"], hold["from_balance"]) == (
        "pending",
        7_500,
        10_000,
    )
    tid = hold["transaction_id"]
    shown = run_cli(system, "hold", "show", tid)
    assert shown.returncode == 0 and "pending" in shown.stdout, shown.stderr
    too_much = run_cli(system, "hold", "post", tid, "--amount", "2501")
    assert too_much.returncode == 1 and "Amount exceeds the hold" in too_much.stderr
    posted = run_cli(system, "hold", "post", tid, "--amount", "1000")
    assert posted.returncode == 0, posted.stderr
    assert "Posted 1000 (10.00 EUR) of 2500 (25.00 EUR) from" in posted.stdout
    again = run_cli(system, "hold", "void", tid)
    assert again.returncode == 1
    assert "is no longer pending: it is posted" in again.stderr
    second = json.loads(run_cli(system, "hold", "place", a, b, "300", "--json").stdout)
    assert second["expires_at"] is None
    void = run_cli(system, "hold", "void", second["transaction_id"], "--json")
    assert void.returncode == 0, void.stderr
    assert (json.loads(void.stdout)["status"], json.loads(void.stdout)["from_available"]) == (
        "voided",
        9_000,
    )
    account = httpx.get(f"{system.transaction.url}/transfers/{second['transaction_id']}")
    assert account.json()["status"] == "voided"
