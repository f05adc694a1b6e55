"""`python -m bench [--quick] [--no-postgres] [--skip PART,...] [--output PATH] [--no-readme]`

What `make bench` runs, in one run (issue 9): the whole system over HTTP beside the HTTP
peer on SQLite and on PostgreSQL (bench/whole.py: bulk append, read-model catch-up,
commands/s, reads/s, command → read latency, CPU per command and per event, memory, idle
subscribers, correctness gates), the scale-out of the command side (bench/scale.py,
PostgreSQL), snapshots (bench/snapshots.py, when it exists), cost against the size of the
log (bench/store_size.py), and the in-process event store beside eventsourcing's recorders.
PostgreSQL when EVENTLEDGER_BENCH_POSTGRES_URL or EVENTLEDGER_TEST_POSTGRES_URL names a
server. Writes bench/results.md and the README block between its markers. `--quick` fits in
about four minutes. Exits 1 when a measurement or a correctness gate failed.

Parts (for --skip): whole, scale, snapshots, size, store.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import ours, peer, pg, report, service, system_report
from bench.runner import Comparison, Side, run
from bench.whole import BackendResult, WholePlan, measure_backend
from bench.workloads import (
    DEFAULT,
    QUICK,
    Kind,
    PostgresTarget,
    Sizes,
    SqliteTarget,
    Target,
    Workload,
)

PEER_HEADERS = ("workload", "eventledger ops/s", "eventsourcing ops/s", "ratio", "ratio per run")
HTTP_HEADERS = ("workload", "over HTTP ops/s", "in-process ops/s", "ratio", "ratio per run")
PARTS = ("whole", "scale", "snapshots", "size", "store")
QUICK_STORE_EVENTS, QUICK_FILL_BUDGET = 1_000_000, 20.0  # quick: at most 20 s of filling
QUICK_STORE_REPEATS = 2  # the store part's runs per contender in quick mode (time budget)
DEFAULT_STORE_EVENTS = 10_000_000


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    if unknown := skip - set(PARTS):
        _parser().error(f"unknown part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
    began = time.perf_counter()
    load_before = report.load_average()
    postgres_target, postgres = _postgres(skip=args.no_postgres)
    _say(f"PostgreSQL: {postgres}")
    body: list[str] = []
    readme: list[str] = []
    failures: list[str] = []
    timings: list[str] = []
    mark = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal mark
        timings.append(f"{part} {time.perf_counter() - mark:,.0f} s")
        mark = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="eventledger-bench-") as directory:
        root = Path(directory)
        if "whole" not in skip:
            plan = WholePlan.quick() if args.quick else WholePlan.default()
            backends = [measure_backend("SQLite", plan, root / "sqlite", _say)]
            if postgres_target is not None:
                backends.append(
                    measure_backend(
                        "PostgreSQL", plan, root / "pg", _say, postgres=postgres_target.url
                    )
                )
            failures += [f"{b.backend}: {f}" for b in backends for f in b.failures]
            body += _whole_sections(backends, plan)
            readme += _readme_rows(backends, plan)
            lap("whole")
        if "scale" not in skip:
            body += _part("Scale-out of the command side (PostgreSQL)", failures,
                          lambda: _scale(postgres_target, quick=args.quick))  # fmt: skip
            lap("scale")
        if "snapshots" not in skip:
            body += _part("Snapshots: first command on an account with a long history", failures,
                          lambda: _snapshots(quick=args.quick))  # fmt: skip
            lap("snapshots")
        if "size" not in skip:
            size = functools.partial(_store_size, root, quick=args.quick, events=args.store_events)
            body += _part("Cost against the size of the log (SQLite, in-process)", failures, size)
            lap("size")
        store_env: report.Environment | None = None
        store_lines: list[str] = []
        if "store" not in skip:
            store_env, store_lines, store_failed = _store(root, args, postgres_target, postgres)
            failures += store_failed
            lap("store")

    load_after = report.load_average()
    head = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (`make bench`). Ratios are eventledger / peer, each "
        "measured in the same run on the same machine, alternating which goes first; "
        "absolute rates are only meaningful beside each other.",
        "",
        *(f"- {line}" for line in (store_env.lines() if store_env else [])),
        f"- this run: {'quick' if args.quick else 'default'} mode, "
        f"{time.perf_counter() - began:,.0f} s in all ({', '.join(timings)}); "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after",
        f"- postgresql: {postgres}",
    ]
    if failures:
        body += ["", "## Failures", "", *(f"- {f}" for f in failures)]
    text = "\n".join([*head, *body, *store_lines]) + "\n"
    args.output.write_text(text, encoding="utf-8")
    _say(text)
    _say(f"written to {args.output}")
    if readme and not args.no_readme:
        block = [
            f"Latest `make bench` ({'quick' if args.quick else 'default'} mode, 2 cores, load "
            f"average {load_before:.1f}–{load_after:.1f}); every figure and the rest in "
            "[bench/results.md](bench/results.md):",
            "",
            *readme,
            "",
        ]
        if system_report.replace_readme_block(block):
            _say("README.md: benchmark block replaced")
        else:
            _say("README.md: no bench markers, left alone")
    return 1 if failures else 0


def _whole_sections(backends: list[BackendResult], plan: WholePlan) -> list[str]:
    p = plan.http
    return [
        "",
        "## The whole system over HTTP, beside the HTTP peer",
        "",
        f"eventledger: four `eventledger serve` processes with tokens; peer: FastAPI + "
        f"eventsourcing 9.5.6 `Application`, one uvicorn worker, the same account rules "
        f"(bench/peer_app.py). 200 accounts, 32 closed-loop aiohttp clients in a separate "
        f"process; {p.runs} run(s) of {p.seconds:g} s per phase after {p.warmup:g} s warm-up; "
        f"log of {plan.head:,} events (bulk append) before the read models start. The ratio "
        "is the median of the per-run ratios (listed).",
        "",
        "Not equal: ours is four processes (a command crosses the transaction and stream "
        "services, and a read is served by a separate read model that follows the log); the "
        "peer is one process that reads its aggregates from its own store through a cache. "
        "Ours also keeps idempotency in the log, a hash chain and the account rules' checks "
        "in the stream service. Both check a bearer token on every request and commit "
        "durably before answering. The latency row exists only for ours: the peer's reads "
        "are its writes' store, with nothing to wait for.",
        "",
        *system_report.goals(backends),
        "",
        "## CPU budget",
        "",
        "utime + stime of each process from /proc/<pid>/stat around each phase, divided by the "
        "operations of the phase (warm-up included); `load` is the load generator.",
        "",
        *system_report.cpu_budget(backends),
        "",
        "## Resident memory",
        "",
        *system_report.memory(backends),
        "",
        "## Correctness gates",
        "",
        *system_report.gates(backends),
    ]


def _readme_rows(backends: list[BackendResult], plan: WholePlan) -> list[str]:
    return [*system_report.goals(backends), "", *system_report.cpu_budget(backends)]


def _part(title: str, failures: list[str], measure: Callable[[], list[str] | None]) -> list[str]:
    """A section from `measure`; its failure costs the section, not the run."""
    _say(f"--- {title}")
    try:
        lines = measure()
    except Exception as exc:
        failures.append(f"{title}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return ["", f"## {title}", "", f"failed: {type(exc).__name__}: {exc}"]
    if lines is None:
        return []
    return ["", f"## {title}", "", *lines]


def _scale(postgres_target: PostgresTarget | None, *, quick: bool) -> list[str] | None:
    if postgres_target is None:
        return ["not run: needs PostgreSQL"]
    from bench import scale

    instances = (1, 2) if quick else (1, 2, 4)
    seconds = 3.0 if quick else 20.0
    # Cold (1,000 accounts: commands rarely meet) and, in a full run, hot (30 accounts: they
    # meet often), round-robin over the instances as the issue measured; then the cold load
    # with each account sent to one instance, as a load balancer hashing the account id would.
    # The stream instances elect one writer ("lease"); in a full run the cold load also with
    # each stream instance appending itself ("each"), as before the lease, for comparison.
    runs = [(1_000, "round-robin", n, "lease") for n in instances]
    if not quick:
        runs += [(30, "round-robin", n, "lease") for n in instances]
        runs += [(1_000, "account", n, "lease") for n in instances if n > 1]
        runs += [(1_000, "round-robin", n, "each") for n in instances if n > 1]
    rows = []
    one: dict[int, float] = {}  # commands/s of one instance, by accounts
    for accounts, route, n, writer in runs:
        r = scale.measure(
            instances=n,
            accounts=accounts,
            seconds=seconds,
            server_url=postgres_target.url,
            route=route,
            writer=writer,
        )
        _say(f"scale: {accounts} accounts, {route}, {writer}, {n} transaction instance(s): {r}")
        retries = f"{100 * r.pop('retries_per_command'):.2f}%"  # of commands (goal: < 1%)
        if n == 1:
            one[accounts] = r["commands_per_s"]
        # Throughput against one instance on the same accounts (goal: >= 95% at 2 and 4).
        of_one = f"{100 * r['commands_per_s'] / one[accounts]:.0f}%" if one.get(accounts) else "—"
        rows.append(
            {"accounts": accounts, "routing": route, "stream writer": writer}
            | {"transaction instances": n}
            | {"of one instance": of_one, **r, "retries": retries}
        )
    note = (
        f"`bench/scale.py`: 16 clients, {seconds:g} s per run, 2 stream instances, deposits "
        "round-robin over the transaction instances or by account (`routing`); the stream "
        "instances elect one writer (`lease`, --advertise-url) or each appends itself "
        "(`each`); money checked after each run."
    )
    return [note, "", *system_report.generic(rows)]


def _snapshots(*, quick: bool) -> list[str] | None:
    try:
        module = importlib.import_module("bench.snapshots")
    except ModuleNotFoundError:
        return ["not run: bench/snapshots.py does not exist yet"]
    measure: Callable[..., Any] = module.measure
    quick_sizes = getattr(module, "QUICK_SIZES", None)
    result = measure(sizes=quick_sizes) if quick and quick_sizes else measure()
    doc = (module.__doc__ or "").strip().splitlines()
    return [f"`bench/snapshots.py`: {doc[0]}" if doc else "", "", *system_report.generic(result)]


def _store_size(root: Path, *, quick: bool, events: int | None) -> list[str]:
    from bench import store_size

    target = events or (QUICK_STORE_EVENTS if quick else DEFAULT_STORE_EVENTS)
    budget = QUICK_FILL_BUDGET if quick else None
    r = store_size.measure(events=target, budget=budget, repeats=1 if quick else 3, directory=root)
    _say(f"store size: {r}")
    reached = "" if r.big.events >= target else f" (target {target:,}: the fill budget ended it)"
    return [
        f"One SQLite store, filled by `eventledger.eventstore.bulkload` at {r.fill_rate:,.0f} "
        f"events/s to {r.big.events:,} events{reached}, {r.disk_bytes / 1e9:.2f} GB on disk.",
        "",
        f"| measure | empty ({r.empty.events:,} events) | {r.big.events:,} events | ratio |",
        "|---|---:|---:|---:|",
        *store_size.lines(r),
    ]


def _store(
    root: Path, args: argparse.Namespace, postgres_target: PostgresTarget | None, postgres: str
) -> tuple[report.Environment, list[str], list[str]]:
    """The in-process event store beside eventsourcing's recorders (the earlier bench)."""
    sizes = dataclasses.replace(QUICK, repeats=QUICK_STORE_REPEATS) if args.quick else DEFAULT
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    targets: list[Target] = [SqliteTarget(root)]
    if postgres_target:
        targets.append(postgres_target)
    durability = [
        (f"{contender.NAME} on {target.backend}", contender.durability(target))
        for target in targets
        for contender in (ours, peer)
    ]
    comparisons = [_peer_comparison(Workload(kind, t), sizes) for t in targets for kind in Kind]
    http = _http_comparison(targets[0], sizes) if args.http else None
    load_before = report.load_average()
    outcomes = run([*comparisons, *([http] if http else [])], sizes, _say)
    load_after = report.load_average()
    split = len(comparisons)
    title = "Event store in-process: eventledger vs eventsourcing's recorders"
    sections = [report.Section(title, PEER_HEADERS, outcomes[:split])]
    if outcomes[split:]:
        sections.append(report.Section("HTTP end to end", HTTP_HEADERS, outcomes[split:]))
    env = report.environment(
        mode="quick (smoke run)" if args.quick else "default",
        sizes=sizes,
        postgres=postgres,
        durability=durability,
        load=(load_before, load_after),
    )
    print(report.console(env, sections))
    failed = [f"{o.comparison.title}: {e}" for o in outcomes for e in o.errors()]
    return env, report.markdown_sections(sections), failed


def _postgres(*, skip: bool) -> tuple[PostgresTarget | None, str]:
    """The PostgreSQL target, if there is one, and what to say about the server."""
    if skip:
        return None, "not run (--no-postgres)"
    url = pg.configured_url()
    if not url:
        return None, f"not run (set {' or '.join(pg.URL_VARIABLES)})"
    try:
        return PostgresTarget(url), pg.server_facts(url).describe()
    except psycopg.Error as exc:
        return None, f"not run: cannot connect ({type(exc).__name__}: {exc})"


def _peer_comparison(workload: Workload, sizes: Sizes) -> Comparison:
    target = workload.target
    return Comparison(
        title=workload.title(sizes),
        kind=workload.kind,
        subject=Side(ours.NAME, functools.partial(ours.measure, target=target)),
        baseline=Side(peer.NAME, functools.partial(peer.measure, target=target)),
    )


def _http_comparison(sqlite: Target, sizes: Sizes) -> Comparison | None:
    url = service.stream_url()
    if reason := service.unavailable(url):
        _say(f"HTTP: skipped, {reason}")
        return None
    return Comparison(
        title=f"append, {sizes.writers} concurrent writers: {url} vs in-process SQLite",
        kind=Kind.APPEND_MANY,
        subject=Side(service.NAME, functools.partial(service.measure, url=url)),
        baseline=Side(f"{ours.NAME} in-process", functools.partial(ours.measure, target=sqlite)),
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="eventledger beside its peers, as ratios (see bench/__main__.py).",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: about four minutes")
    parser.add_argument(
        "--http", action="store_true", help="also append through a running stream service"
    )
    parser.add_argument("--repeats", type=int, default=0, help="store part: runs per contender")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip", default="", help=f"parts to leave out: {', '.join(PARTS)}")
    parser.add_argument(
        "--store-events", type=int, default=0, help="size part: events in the big store"
    )
    parser.add_argument(
        "--output", type=Path, default=report.RESULTS, help="Markdown report (bench/results.md)"
    )
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
