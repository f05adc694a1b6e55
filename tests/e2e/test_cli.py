"""The command line against running services, and `up`/`serve` starting and stopping."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventledger import __version__
from eventledger.config import SERVICES as SERVICE_NAMES
from tests.e2e.harness import (
    ServiceProcess,
    System,
    cli_env,
    free_port,
    new_id,
    wait_for,
)

pytestmark = pytest.mark.slow

STOP_SECONDS = 5.0


def system_env(system: System) -> dict[str, str]:
    """Settings that point the command line at `system`, as a user would set them."""
    return cli_env(**{f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services})


def eventledger(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_command_line_opens_deposits_and_shows_balances(system: System) -> None:
    env = system_env(system)
    account = new_id("cli")
    assert account in ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))

    deposited = ok(eventledger("deposit", account, "1234", "--reference", "salary", env=env))
    assert "12.34 EUR" in deposited and "1234" in deposited
    withdrawn = ok(
        eventledger(
            "withdraw",
            account,
            "34",
            "--transaction-url",
            system.transaction.url,
            "--accounting-url",
            system.accounting.url,
            env=cli_env(),
        )
    )
    assert "0.34 EUR" in withdrawn and "12.00 EUR" in withdrawn

    balance = ok(eventledger("balance", account, env=env))
    assert "12.00 EUR" in balance and "1200" in balance
    history = ok(eventledger("history", account, env=env))
    assert "deposit" in history and "withdrawal" in history and "salary" in history
    ok(eventledger("accounts", env=env))
    assert "EUR" in ok(eventledger("stats", env=env))


def test_the_command_line_retries_a_money_command_safely_with_the_same_key(
    system: System,
) -> None:
    env = system_env(system)
    account = new_id("cli")
    ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))
    args = ("deposit", account, "500", "--idempotency-key", f"key-{account}")
    ok(eventledger(*args, env=env))
    again = ok(eventledger(*args, env=env))
    assert "5.00 EUR" in again and "replayed" in again
    assert "5.00 EUR" in ok(eventledger("balance", account, env=env))


def test_the_command_line_says_what_went_wrong_in_one_line(system: System) -> None:
    env = system_env(system)
    missing = one_line_error(eventledger("deposit", new_id("nobody"), "100", env=env))
    assert "Account not found" in missing

    account = new_id("cli")
    ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))
    refused = one_line_error(eventledger("withdraw", account, "1", env=env))
    assert "insufficient" in refused.lower()
    assert "currency" in one_line_error(eventledger("open", "--currency", "eur", env=env))

    port = free_port()
    down = cli_env(EVENTLEDGER_TRANSACTION_PORT=str(port))
    unreachable = one_line_error(eventledger("deposit", account, "1", env=down))
    assert f"cannot reach the transaction service at http://127.0.0.1:{port}" in unreachable

    # A float is not an amount: refused before anything is sent.
    floated = eventledger("deposit", account, "12.34", env=env)
    assert floated.returncode == 2 and "Traceback" not in floated.stderr
    assert "0.00 EUR" in ok(eventledger("balance", account, env=env))


def test_tail_prints_each_new_event_as_it_is_committed(system: System) -> None:
    env = system_env(system)
    after = system.head_position()
    account = new_id("tail")
    with subprocess.Popen(
        [sys.executable, "-m", "eventledger", "tail", "--after", str(after)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as tail:
        try:
            ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))
            ok(eventledger("deposit", account, "250", env=env))
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=lambda: [lines.put(x) for x in tail.stdout or ()]).start()
            mine: list[str] = []
            deadline = time.monotonic() + 20.0
            while not any("MoneyDeposited" in line for line in mine):
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                if account in line:
                    mine.append(line)
            assert ["AccountOpened" in mine[0], "MoneyDeposited" in mine[1]] == [True, True]
        finally:
            tail.send_signal(signal.SIGINT)
            assert tail.wait(timeout=STOP_SECONDS) == 0
            assert tail.stderr is not None
            assert "Traceback" not in tail.stderr.read()


def test_rebuild_replays_a_read_model_and_shows_it_caught_up(system: System) -> None:
    env = system_env(system)
    account = new_id("rebuild")
    ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))
    ok(eventledger("deposit", account, "4321", env=env))
    for name in ("accounting", "statistics"):
        assert "caught up" in ok(eventledger("rebuild", name, env=env, timeout=120.0))
    assert "43.21 EUR" in ok(eventledger("balance", account, env=env))


def test_history_prints_times_with_their_zone_that_balance_at_reads_back(
    system: System,
) -> None:
    env = system_env(system)
    account = new_id("times")
    ok(eventledger("open", "--id", account, "--currency", "EUR", env=env))
    ok(eventledger("deposit", account, "1000", env=env))
    ok(eventledger("withdraw", account, "300", env=env))
    history = ok(eventledger("history", account, env=env))
    times = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", history)
    assert len(times) == 2, history  # newest first, each with its zone
    # Pasted back, a time includes what was recorded within that second.
    assert "7.00 EUR" in ok(eventledger("balance", account, "--at", times[0], env=env))
    today = times[0][:10]
    assert "7.00 EUR" in ok(eventledger("balance", account, "--at", today, env=env))
    late_in_paris = f"{today}T23:59:59+01:00"  # 22:59:59Z
    said = ok(eventledger("balance", account, "--at", late_in_paris, env=env))
    assert f"at {today}T22:59:59.999999Z" in said
    before = one_line_error(eventledger("balance", account, "--at", "2000-01-01", env=env))
    assert "did not exist then" in before
    shown = ok(eventledger("balance", account, env=env))
    assert re.search(r"updated at\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown), shown


@pytest.mark.parametrize(
    ("at", "says"),
    [
        ("yesterday", "is not a time: give an RFC 3339 time with its zone"),
        ("2026-11-27T11:12:30", "has no zone"),
        ("2026-11-31", "is not a valid time"),
    ],
)
def test_a_time_that_cannot_be_read_is_a_one_line_usage_error(at: str, says: str) -> None:
    # Refused before anything is sent: no service is needed to say so.
    env = cli_env(EVENTLEDGER_ACCOUNTING_PORT=str(free_port()))
    line = one_line_error(eventledger("balance", "alice", "--at", at, env=env), code=2)
    assert says in line and "2026-11-27T11:12:30Z" in line, line


def test_stream_shows_each_events_version_beside_its_position(system: System) -> None:
    env = system_env(system)
    account, other = new_id("stream"), new_id("other")
    for name in (account, other):
        ok(eventledger("open", "--id", name, "--currency", "EUR", env=env))
    ok(eventledger("deposit", account, "500", "--reference", "[bold]salary", env=env))
    ok(eventledger("transfer", account, other, "200", env=env))
    shown = ok(eventledger("stream", f"account-{account}", env={**env, "COLUMNS": "200"}))
    rows = [line.split() for line in shown.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert [(row[0], row[3]) for row in rows] == [
        ("1", "AccountOpened"),
        ("2", "MoneyDeposited"),
        ("3", "TransferSent"),
    ], shown
    positions = [int(row[1]) for row in rows]
    assert positions == sorted(positions) and positions[2] - positions[0] > 2, shown
    assert f"Stream account-{account} (version 3)" in shown
    assert 'reference="[bold]salary"' in shown  # stored text shown as it is

    page = ok(
        eventledger("stream", f"account-{account}", "--from-version", "2", "--limit", "1", env=env)
    )
    assert "MoneyDeposited" in page and "TransferSent" not in page
    assert "more: --from-version 3" in page
    as_json = json.loads(ok(eventledger("stream", f"account-{other}", "--json", env=env)))
    assert [e["stream_version"] for e in as_json["events"]] == [1, 2]
    assert as_json["events"][1]["type"] == "TransferReceived"
    missing = one_line_error(eventledger("stream", new_id("nothing"), env=env))
    assert "Stream not found" in missing


def test_version_and_shell_completion() -> None:
    env = cli_env()
    assert ok(eventledger("--version", env=env)).strip() == f"eventledger {__version__}"
    # Typer finds the shell from the process tree (under make that is sh, which it refuses);
    # its own switch turns the detection off so the shell can be named, as a user may.
    detection_off = {**env, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = ok(eventledger("--show-completion", "bash", env=detection_off))
    assert "_EVENTLEDGER_COMPLETE=complete_bash" in script
    completing = {**env, "COMP_WORDS": "eventledger dep", "COMP_CWORD": "1"}
    completing["_EVENTLEDGER_COMPLETE"] = "complete_bash"
    assert ok(eventledger(env=completing)).split() == ["deposit"]


# -- up and serve ------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def all_healthy(ports: dict[str, int]) -> bool:
    try:
        return all(
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200
            for port in ports.values()
        )
    except httpx.TransportError:
        return False


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int], Path]]:
    ports = {name: free_port() for name in (*SERVICE_NAMES, "console")}
    env = cli_env(**{f"EVENTLEDGER_{n.upper()}_PORT": str(p) for n, p in ports.items()})
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventledger", "up", "--data-dir", str(tmp_path / "data")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_for(
            lambda: "/docs" in log.read_text() or process.poll() is not None,
            timeout=60.0,
            what="eventledger up to print its addresses",
        )
        assert process.poll() is None, log.read_text()
        yield process, ports, log
    finally:
        for child in children_of(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait()


def test_up_starts_every_service_and_stops_them_all_on_ctrl_c(
    up: tuple[subprocess.Popen[bytes], dict[str, int], Path],
) -> None:
    process, ports, log = up
    assert all_healthy(ports), log.read_text()
    output = log.read_text()
    for name, port in ports.items():
        assert f"http://127.0.0.1:{port}/docs" in output
        assert any(line.startswith(name) for line in output.splitlines()), output
    children = children_of(process.pid)
    assert len(children) == 5  # the four services and the console

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15.0) == 0, log.read_text()
    assert not any(listening(port) for port in ports.values())
    assert not any(Path(f"/proc/{child}").exists() for child in children)
    assert "Traceback" not in log.read_text()


def test_up_creates_private_credentials_on_first_start_that_the_cli_finds(
    up: tuple[subprocess.Popen[bytes], dict[str, int], Path], tmp_path: Path
) -> None:
    _, ports, log = up
    data = tmp_path / "data"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(data) == 0o700 and mode(data / "tokens") == 0o700
    private = [data / "auth.json", data / "idempotency.secret", *(data / "tokens").iterdir()]
    assert {path.name for path in (data / "tokens").iterdir()} == {
        "transaction.token",
        "accounting.token",
        "statistics.token",
        "console.token",
        "cli.token",
    }
    assert {path.name: mode(path) for path in private} == {path.name: 0o600 for path in private}
    tokens = {path.stem: path.read_text().strip() for path in (data / "tokens").iterdir()}
    assert not any(token in (data / "auth.json").read_text() for token in tokens.values())

    env = cli_env(
        EVENTLEDGER_DATA_DIR=str(data),
        **{f"EVENTLEDGER_{n.upper()}_PORT": str(p) for n, p in ports.items()},
    )
    account = new_id("up")
    assert f"Opened account {account}" in ok(
        eventledger("open", "--id", account, "--currency", "EUR", env=env)
    )
    assert "12.00 EUR" in ok(eventledger("deposit", account, "1200", env=env))

    stream = f"http://127.0.0.1:{ports['stream']}"
    accounting = f"http://127.0.0.1:{ports['accounting']}"
    assert httpx.get(f"{accounting}/accounts/{account}").status_code == 401
    minted = {"expected_version": "any", "events": [{"type": "MoneyDeposited", "data": {}}]}
    for reader in ("accounting", "statistics"):
        refused = httpx.post(
            f"{stream}/streams/account-{account}",
            json=minted,
            headers={"Authorization": f"Bearer {tokens[reader]}"},
        )
        assert refused.status_code == 403, refused.text
    assert not any(token in log.read_text() for token in tokens.values())


def test_up_stops_everything_with_an_error_when_a_service_dies(
    up: tuple[subprocess.Popen[bytes], dict[str, int], Path],
) -> None:
    process, ports, log = up
    children = children_of(process.pid)
    victim = next(
        child
        for child in children
        if "accounting" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
    )
    os.kill(victim, signal.SIGKILL)
    assert process.wait(timeout=15.0) != 0
    output = log.read_text()
    assert "accounting service stopped unexpectedly" in output, output
    assert not any(listening(port) for port in ports.values())


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_serve_exits_within_seconds_of_sigterm_even_with_a_live_subscriber(
    system: System, tmp_path: Path, name: str
) -> None:
    extra = [] if name == "stream" else ["--stream-url", system.stream.url]
    service = ServiceProcess(name, tmp_path / "data", tmp_path / "logs", extra)
    service.start().wait_healthy()
    with httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as subscriber:
        try:
            if name == "stream":  # an open subscription must not hold the server
                request = subscriber.build_request("GET", f"{service.url}/events/subscribe")
                response = subscriber.send(request, stream=True)
                assert response.status_code == 200
            started = time.monotonic()
            code = service.kill(signal.SIGTERM, timeout=STOP_SECONDS + 5)
            assert code == 0, service.log_tail()
            assert time.monotonic() - started < STOP_SECONDS, service.log_tail()
            assert "Traceback" not in service.log_text()
        finally:
            service.stop()
