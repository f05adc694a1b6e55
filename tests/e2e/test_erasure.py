"""Erasure by crypto-shredding over real processes (tokens required, as in production): an
account opened with an owner and deposits and a transfer with references is forgotten; then
the stream (reads, SSE from 0), accounting, statistics, a rebuild and `eventledger verify`
all show the personal data erased and the balances and hash chain intact, also after the
stream service was killed (-9) right after the forget answered. The stored file never held
the plaintext."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    System,
    cli_env,
    make_credentials,
    min_position,
    new_id,
    problem_type,
    sse_events,
    start_system,
)

OWNER = "Ebba Lindqvist-Nakamura"
REFERENCE = "invoice 4711 for E. Lindqvist"
TRANSFER_REFERENCE = "rent to landlord Ebba"
OPERATOR = ("admin", "ledger:write", "ledger:read", "events:read")
CLERK = ("ledger:write", "ledger:read")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    credentials = make_credentials(tmp_path / "auth", {"operator": OPERATOR, "clerk": CLERK})
    with ExitStack() as stack:
        yield start_system(
            request, stack, tmp_path / "system", request.param, credentials=credentials
        )


def headers(system: System, who: str = "operator") -> dict[str, str]:
    assert system.credentials is not None
    return {**system.credentials.bearer(who), "Content-Type": "application/json"}


async def post(http: httpx.AsyncClient, system: System, path: str, body: Any) -> dict[str, Any]:
    answer = await http.post(f"{system.transaction.url}{path}", json=body, headers=headers(system))
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def read(http: httpx.AsyncClient, url: str, system: System, position: int) -> Any:
    """A read at `position` or later; a read model being rebuilt answers 503 until it is."""
    deadline = time.monotonic() + 60
    while True:
        answer = await http.get(url, headers={**headers(system), **min_position(position)})
        if answer.status_code != 503 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer.json()
        await asyncio.sleep(0.05)


def verify(system: System) -> str:
    where = (
        ["--store", system.store] if system.store else ["--data-dir", str(system.stream.data_dir)]
    )
    done = subprocess.run(
        [sys.executable, "-m", "eventledger", "verify", *where],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_forgotten_account_reads_erased_everywhere_and_its_money_is_intact(
    secured: System,
) -> None:
    system = secured
    alice, bob = new_id("erase"), new_id("keep")
    # The operator's token on every request (SSE included); some requests name another.
    async with httpx.AsyncClient(timeout=15.0, headers=headers(system)) as http:
        await post(
            http, system, "/accounts", {"account_id": alice, "currency": "EUR", "owner": OWNER}
        )
        await post(
            http, system, "/accounts", {"account_id": bob, "currency": "EUR", "owner": "Bob"}
        )
        await post(
            http, system, f"/accounts/{alice}/deposits", {"amount": 10_000, "reference": REFERENCE}
        )
        transfer = {"from_account": alice, "to_account": bob, "amount": 2_500}
        await post(http, system, "/transfers", {**transfer, "reference": TRANSFER_REFERENCE})
        if system.store is None:  # SQLite: the file and its WAL never held the plaintext
            stored = b"".join(p.read_bytes() for p in system.stream.data_dir.glob("events.db*"))
            assert OWNER.encode() not in stored and REFERENCE.encode() not in stored

        clerk = await http.post(
            f"{system.transaction.url}/accounts/{alice}/forget", headers=headers(system, "clerk")
        )
        assert clerk.status_code == 403 and problem_type(clerk) == "forbidden"
        forgot = await http.post(
            f"{system.transaction.url}/accounts/{alice}/forget", headers=headers(system)
        )
        assert forgot.status_code == 201, forgot.text
        erased_at = forgot.json()["position"]

        system.stream.kill()  # -9, right after the forget answered
        system.stream.start().wait_healthy()

        stream = await read(http, f"{system.stream.url}/streams/account-{alice}", system, 0)
        events = stream["events"]
        assert [e["type"] for e in events] == [
            "AccountOpened",
            "MoneyDeposited",
            "TransferSent",
            "PersonalDataErased",
        ]
        assert events[0]["data"]["owner"] is None and events[0]["metadata"]["erased"] == ["owner"]
        assert events[1]["data"]["reference"] is None and events[2]["data"]["reference"] is None
        assert [e["data"].get("amount") for e in events[1:3]] == [10_000, 2_500]

        seen: list[dict[str, Any]] = []
        sse = sse_events(http, f"{system.stream.url}/events/subscribe", {"after": 0})
        async for _, _, envelope in sse:
            seen.append(envelope)
            if envelope["position"] >= erased_at:
                break
        await sse.aclose()
        mine = [e for e in seen if e["stream"] == f"account-{alice}"]
        assert next(e["data"].get("owner") for e in mine) is None
        assert all(e["data"].get("reference") is None for e in mine)
        bobs = [e for e in seen if e["stream"] == f"account-{bob}"]
        assert bobs[0]["data"]["owner"] == "Bob"  # the other side keeps its own copy
        assert bobs[1]["data"]["reference"] == TRANSFER_REFERENCE

        await check_read_models(http, system, alice, bob, erased_at)
        rebuilt = await http.post(f"{system.accounting.url}/admin/rebuild", headers=headers(system))
        assert rebuilt.status_code in (200, 202), rebuilt.text
        await check_read_models(http, system, alice, bob, erased_at)
    assert "verified 6 events: head position 6" in verify(system)


async def check_read_models(
    http: httpx.AsyncClient, system: System, alice: str, bob: str, position: int
) -> None:
    accounting = system.accounting.url
    account = await read(http, f"{accounting}/accounts/{alice}", system, position)
    assert account["owner"] is None and account["balance"] == 7_500
    history = await read(http, f"{accounting}/accounts/{alice}/transactions", system, position)
    assert [i["reference"] for i in history["items"]] == [None, None]
    assert [i["amount"] for i in history["items"]] == [-2_500, 10_000]
    other = await read(http, f"{accounting}/accounts/{bob}/transactions", system, position)
    assert [i["reference"] for i in other["items"]] == [TRANSFER_REFERENCE]
    stats = await read(http, f"{system.statistics.url}/stats", system, position)
    eur = stats["currencies"]["EUR"]
    assert eur["total_balance"] == 10_000 and eur["deposits"] == {"count": 1, "volume": 10_000}


def eventledger(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    ports = {f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services}
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        env=cli_env(**ports),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_command_line_forgets_an_account_once_and_the_stream_shows_it(system: System) -> None:
    account = new_id("cli-forget")
    opened = eventledger(system, "open", "--id", account, "--currency", "EUR", "--owner", OWNER)
    assert opened.returncode == 0, opened.stderr
    asked = eventledger(system, "forget", account)  # no --yes, no terminal: nothing done
    assert asked.returncode != 0 and "Erased" not in asked.stdout
    first = eventledger(system, "forget", account, "--yes")
    assert first.returncode == 0, first.stderr
    assert f"Erased the personal data of {account}" in first.stdout
    again = eventledger(system, "forget", account, "--yes", "--json")
    assert again.returncode == 0 and '"replayed": true' in again.stdout
    stream = eventledger(system, "stream", f"account-{account}")
    assert stream.returncode == 0 and "PersonalDataErased" in stream.stdout
    assert OWNER not in stream.stdout
    unknown = eventledger(system, "forget", new_id("nobody"), "--yes")
    assert unknown.returncode == 1 and "Account not found" in unknown.stderr
