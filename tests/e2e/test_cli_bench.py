"""`eventledger bench` against a running system: it measures, then verifies the money."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.harness import System, cli_env


def eventledger(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_bench_sends_the_commands_asked_for_and_verifies_the_money(system: System) -> None:
    result = eventledger(
        "bench",
        "--commands",
        "200",
        "--concurrency",
        "8",
        "--json",
        "--transaction-url",
        system.transaction.url,
        "--accounting-url",
        system.accounting.url,
    )

    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["commands"] == 200
    assert report["commands_per_second"] > 0
    assert report["verified"] is True
    assert report["mismatches"] == []
    assert sum(report["outcomes"].values()) == 200
    assert report["outcomes"]["201"] > 0
    assert sum(kind["commands"] for kind in report["kinds"].values()) == 200
    assert report["read_your_writes_lag_ms"] >= 0
    assert report["last_position"] <= system.head_position()


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [["--duration", "1s", "--commands", "10"], ["--duration", "ten"], ["--accounts", "1"]],
)
def test_bench_refuses_bad_flags_before_sending_anything(system: System, flags: list[str]) -> None:
    head = system.head_position()

    result = eventledger("bench", *flags, "--transaction-url", system.transaction.url)

    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert system.head_position() == head
