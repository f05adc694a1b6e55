"""The whole-system bench (bench/whole.py) on real processes at tiny sizes: it starts our
services only through the CLI and the peer, measures every row, and its correctness gates
hold (and catch a broken ledger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("eventsourcing")  # the `bench` extra

from bench.http import Plan, run_phase
from bench.processes import Ours
from bench.whole import WholePlan, measure_backend

pytestmark = pytest.mark.slow

TINY = WholePlan(Plan(runs=1, seconds=1.0, warmup=0.2, latency=True), head=3_000, subscribers=20)


def test_every_row_is_measured_and_every_gate_passes(tmp_path: Path) -> None:
    result = measure_backend("SQLite", TINY, tmp_path, lambda _: None)
    assert result.failures == []
    assert result.bulk is not None and result.bulk.result["ops"] == TINY.head
    assert result.bulk.cpu_us_per_op()["stream"] > 0
    assert [c.service for c in result.catch_up] == ["accounting", "statistics"]
    assert all(c.events > 0 and c.rate > 0 for c in result.catch_up)
    for system in ("eventledger", "peer"):
        (run,) = result.runs[system]
        assert run.gate["passed"], run.gate
        assert run.rate("commands") and run.rate("reads")
    assert result.latencies()
    assert result.subscribers["ready"] == TINY.subscribers
    assert set(result.rss["after commands and reads"]) == {
        "stream", "transaction", "accounting", "statistics", "peer"
    }  # fmt: skip


def test_the_gate_fails_when_an_acknowledged_deposit_is_missing(tmp_path: Path) -> None:
    ours = Ours(tmp_path / "ours")
    plan = Plan(runs=1, seconds=0.5, warmup=0.0, latency=False)
    state = tmp_path / "state.json"
    try:
        ours.start()
        run_phase(ours, "open", state, prefix="gate", plan=plan, accounts=3)
        run_phase(ours, "commands", state, prefix="gate", plan=plan, clients=2, accounts=3)
        assert run_phase(ours, "verify", state, prefix="gate", plan=plan).result["passed"]
        # Claim one more acknowledged deposit than the ledger holds.
        raw = json.loads(state.read_text())
        account = raw["accounts"][0]
        raw["accepted"][account][0] += 5
        raw["accepted"][account][1] += 1
        state.write_text(json.dumps(raw))
        verdict = run_phase(ours, "verify", state, prefix="gate", plan=plan).result
    finally:
        ours.stop()
    assert not verdict["passed"]
    assert verdict["wrong_count"] == 1 and account in verdict["wrong"][0]
