"""The whole system over HTTP, eventledger beside the HTTP peer, in the same run.

    python -m bench.http --quick          # commands/s and reads/s on SQLite, ≤ 90 s
    python -m bench.http --quick --latency  # and the command → read latency
    python -m bench.http [--runs N] [--seconds S]
    python -m bench.http --quick --postgres [URL]  # on PostgreSQL (URL: the test server's)

Starts eventledger's four services (bench/processes.py, through the CLI only) and the peer
(bench/peer_app.py), then, per run, on each system in turn (the first alternates between
runs): opens 200 fresh accounts, 32 clients post deposits (commands/s), 32 clients read
accounts (reads/s), optionally the command → read latency (ours), then the correctness gates
(money conserved, every acknowledged command visible). Around each timed phase it reads each
service's CPU time and resident memory: CPU µs per command per service.

The load generator (bench/load.py) is a process of its own for every phase. On PostgreSQL
(ours on a fresh database, the peer on a fresh schema) it also reads, per process, the CPU of
the server processes serving its connections (`pg:<name>`) and the data segments it sent them
(bench/pg_usage.py): how many messages a command costs the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pg import configured_url
from bench.pg_usage import Usage, usage
from bench.processes import REPO, Ours, Peer, Process, child_env

ACCOUNTS = 200
CLIENTS = 32
LOAD_TIMEOUT = 300.0


@dataclass(frozen=True)
class Plan:
    runs: int
    seconds: float  # timed seconds of each phase
    warmup: float
    latency: bool  # also the command → read phase (ours only: the peer reads its store)

    @classmethod
    def quick(cls) -> Plan:
        return cls(runs=2, seconds=5.0, warmup=1.0, latency=False)

    @classmethod
    def default(cls) -> Plan:
        return cls(runs=3, seconds=10.0, warmup=2.0, latency=True)


@dataclass
class Phase:
    """One load phase: the generator's answer, and what each process spent on it."""

    result: dict[str, Any]
    cpu: dict[str, float]  # process name -> CPU seconds during the phase ("load": generator)
    rss: dict[str, int]  # process name -> bytes after the phase
    wall: float
    segments: dict[str, int] = field(default_factory=dict)  # name -> data segments to PG

    @property
    def rate(self) -> float:
        return float(self.result["ops"]) / float(self.result["seconds"])

    def cpu_us_per_op(self) -> dict[str, float]:
        ops = max(int(self.result.get("all_ops", self.result["ops"])), 1)
        return {name: seconds * 1e6 / ops for name, seconds in self.cpu.items()}

    def segments_per_op(self) -> dict[str, float]:
        ops = max(int(self.result.get("all_ops", self.result["ops"])), 1)
        return {name: n / ops for name, n in self.segments.items()}

    def errors(self) -> list[str]:
        return list(self.result.get("errors", []))


@dataclass
class RunResult:
    system: str
    phases: dict[str, Phase] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    def rate(self, phase: str) -> float | None:
        p = self.phases.get(phase)
        return p.rate if p is not None and not p.errors() else None

    def failures(self) -> list[str]:
        out = [f"{self.system} {name}: {e}" for name, p in self.phases.items() for e in p.errors()]
        if self.gate and not self.gate.get("passed"):
            out.append(f"{self.system} correctness gate failed: {json.dumps(self.gate)[:600]}")
        return out


System = Ours | Peer


def urls(system: System) -> tuple[str, str, str]:
    """(commands URL, reads URL, stream URL)."""
    if isinstance(system, Ours):
        readers = system.readers
        return readers["transaction"].url, readers["accounting"].url, system.stream.url
    return system.process.url, system.process.url, ""


def run_phase(
    system: System,
    phase: str,
    state: Path,
    *,
    prefix: str,
    plan: Plan,
    clients: int = CLIENTS,
    accounts: int = ACCOUNTS,
    extra: Sequence[str] = (),
) -> Phase:
    """One generator process for `phase`; CPU and RSS of every service around it."""
    commands_url, reads_url, stream_url = urls(system)
    argv = [
        sys.executable,
        "-m",
        "bench.load",
        phase,
        "--commands-url",
        commands_url,
        "--reads-url",
        reads_url,
        "--stream-url",
        stream_url,
        "--state",
        str(state),
        "--token-file",
        str(system.token_file),
        "--prefix",
        prefix,
        "--accounts",
        str(accounts),
        "--clients",
        str(clients),
        "--seconds",
        str(plan.seconds),
        "--warmup",
        str(plan.warmup),
        *extra,
    ]
    processes = running_processes(system)
    pg_url = system.store if isinstance(system, Ours) else system.postgres
    pg_before = _pg_usage(pg_url, processes)
    before = {p.name: p.cpu_seconds() for p in processes}
    children_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, env=child_env(), cwd=REPO, timeout=LOAD_TIMEOUT, check=False
    )
    wall = time.perf_counter() - start
    cpu = {p.name: p.cpu_seconds() - before[p.name] for p in processes}
    cpu["load"] = _children_cpu() - children_before
    segments = {}
    for name, used in _pg_usage(pg_url, processes).items():
        if used.connections:
            cpu[f"pg:{name}"] = used.server_cpu - pg_before[name].server_cpu
            segments[name] = used.segments_out - pg_before[name].segments_out
    if done.returncode != 0:
        raise RuntimeError(f"load generator {phase} failed: {done.stderr.decode()[-2000:]}")
    result = json.loads(done.stdout)
    return Phase(result, cpu, {p.name: p.rss_bytes() for p in processes}, wall, segments)


def _pg_usage(url: str | None, processes: Sequence[Process]) -> dict[str, Usage]:
    return {p.name: usage(url, {p.pid}) for p in processes} if url else {}


def running_processes(system: System) -> list[Process]:
    return [p for p in system.services if p.process is not None and p.process.poll() is None]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_run(system: System, name: str, plan: Plan, workdir: Path) -> RunResult:
    """Fresh accounts, the timed phases, then the correctness gates."""
    prefix = f"b{uuid.uuid4().hex[:10]}"
    state = workdir / f"{name}-{prefix}.json"
    result = RunResult(name)
    opened = run_phase(system, "open", state, prefix=prefix, plan=plan)
    if opened.errors():
        result.phases["open"] = opened
        return result
    phases = [
        "commands",
        "reads",
        *(["latency"] if plan.latency and isinstance(system, Ours) else []),
    ]
    for phase in phases:
        result.phases[phase] = run_phase(system, phase, state, prefix=prefix, plan=plan)
    result.gate = run_phase(system, "verify", state, prefix=prefix, plan=plan).result
    return result


def interleaved(
    systems: dict[str, System], plan: Plan, workdir: Path, say: Callable[[str], None]
) -> dict[str, list[RunResult]]:
    """`plan.runs` runs of every system; the one that goes first alternates."""
    results: dict[str, list[RunResult]] = {name: [] for name in systems}
    order = list(systems)
    for run in range(plan.runs):
        for name in order if run % 2 == 0 else reversed(order):
            outcome = measure_run(systems[name], name, plan, workdir)
            results[name].append(outcome)
            say(f"[run {run + 1}/{plan.runs}] {name}: {brief(outcome)}")
    return results


def brief(result: RunResult) -> str:
    parts = []
    for phase, p in result.phases.items():
        if phase == "open":
            continue
        cpu = " ".join(f"{k}={v:,.0f}" for k, v in p.cpu_us_per_op().items())
        parts.append(f"{phase} {p.rate:,.0f}/s (CPU µs/op: {cpu})")
        if p.segments:
            sent = " ".join(f"{k}={v:.2f}" for k, v in p.segments_per_op().items())
            parts.append(f"{phase} segments to PostgreSQL per op: {sent}")
        if p.result.get("latencies"):
            lat = sorted(p.result["latencies"])
            p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
            parts.append(f"{phase} p50 {p50:.1f} ms p99 {p99:.1f} ms")
    gate = "gates passed" if result.gate.get("passed") else f"GATES FAILED {result.failures()[:3]}"
    return "; ".join([*parts, gate])


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def median_rate(results: Sequence[RunResult], phase: str) -> float | None:
    rates = [r for r in (x.rate(phase) for x in results) if r is not None]
    return statistics.median(rates) if rates else None


def ratios(ours: Sequence[RunResult], peer: Sequence[RunResult], phase: str) -> list[float]:
    out = []
    for a, b in zip(ours, peer, strict=False):
        ra, rb = a.rate(phase), b.rate(phase)
        if ra is not None and rb:
            out.append(ra / rb)
    return out


def table(ours: Sequence[RunResult], peer: Sequence[RunResult], backend: str) -> list[str]:
    """Markdown rows: measure | eventledger | peer | ratio (median of runs) | ratio per run."""
    rows = []
    for phase, what in (
        ("commands", "commands/s (deposits)"),
        ("reads", "reads/s GET /accounts/{id}"),
    ):
        a, b = median_rate(ours, phase), median_rate(peer, phase)
        per_run = ratios(ours, peer, phase)
        rows.append(
            f"| {what}, {backend} | {_num(a)} | {_num(b)} | "
            f"{f'{statistics.median(per_run):.2f}' if per_run else '—'} | "
            f"{' '.join(f'{r:.2f}' for r in per_run) or '—'} |"
        )
    return rows


def cpu_rows(results: Sequence[RunResult], phase: str, label: str) -> list[str]:
    """Median CPU µs per operation of each process in `phase`."""
    per_name: dict[str, list[float]] = {}
    for r in results:
        if phase in r.phases:
            for name, us in r.phases[phase].cpu_us_per_op().items():
                per_name.setdefault(name, []).append(us)
    return [f"| {label} | {name} | {statistics.median(v):,.0f} |" for name, v in per_name.items()]


def _num(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.default()
    if args.runs:
        plan = Plan(args.runs, plan.seconds, plan.warmup, plan.latency)
    if args.seconds:
        plan = Plan(plan.runs, args.seconds, plan.warmup, plan.latency)
    if args.latency:
        plan = Plan(plan.runs, plan.seconds, plan.warmup, latency=True)
    begin = time.perf_counter()
    backend = "PostgreSQL" if args.postgres else "SQLite"
    with (
        tempfile.TemporaryDirectory(prefix="eventledger-bench-http-") as directory,
        contextlib.ExitStack() as stack,
    ):
        root = Path(directory)
        if args.postgres:
            from bench.whole import fresh_database, fresh_schema  # bench.whole imports us

            store = stack.enter_context(fresh_database(args.postgres))
            schema = stack.enter_context(fresh_schema(args.postgres))
            ours = Ours(root / "ours", store=store)
            peer = Peer(root / "peer", postgres=args.postgres, schema=schema)
        else:
            ours, peer = Ours(root / "ours"), Peer(root / "peer")
        try:
            ours.start()
            peer.start()
            _say(f"started in {time.perf_counter() - begin:.1f} s; {_load()}")
            results = interleaved({"eventledger": ours, "peer": peer}, plan, root, _say)
        finally:
            peer.stop()
            ours.stop()
    lines = [
        f"{backend}, {ACCOUNTS} accounts, {CLIENTS} closed-loop clients, {plan.runs} runs of "
        f"{plan.seconds:.0f} s (+{plan.warmup:.0f} s warm-up), {_load()}",
        "",
        "| measure | eventledger | peer | ratio (median) | ratio per run |",
        "|---|---:|---:|---:|---:|",
        *table(results["eventledger"], results["peer"], backend),
        "",
        "| phase | process | CPU µs per operation (median) |",
        "|---|---|---:|",
        *cpu_rows(results["eventledger"], "commands", "commands, eventledger"),
        *cpu_rows(results["peer"], "commands", "commands, peer"),
        *cpu_rows(results["eventledger"], "reads", "reads, eventledger"),
        *cpu_rows(results["peer"], "reads", "reads, peer"),
    ]
    print("\n".join(lines))
    failures = [f for rs in results.values() for r in rs for f in r.failures()]
    for failure in failures:
        _say(f"FAILED: {failure}")
    _say(f"total {time.perf_counter() - begin:.0f} s")
    return 1 if failures else 0


def _load() -> str:
    import os

    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.http")
    p.add_argument("--quick", action="store_true", help="2 runs of 5 s per phase, ≤ 90 s")
    p.add_argument("--runs", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--latency", action="store_true", help="also command → read (on by default)")
    p.add_argument(
        "--postgres",
        nargs="?",
        const=configured_url() or "postgresql://postgres@127.0.0.1:5432/test",
        default=None,
        metavar="URL",
        help="on PostgreSQL (default URL: EVENTLEDGER_TEST_POSTGRES_URL)",
    )
    return p


if __name__ == "__main__":
    raise SystemExit(main())
