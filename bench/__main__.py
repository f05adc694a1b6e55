"""`python -m bench [--quick] [--http] [--repeats N] [--no-postgres] [--output PATH]`

Runs every workload on SQLite, on PostgreSQL when EVENTLEDGER_BENCH_POSTGRES_URL or
EVENTLEDGER_TEST_POSTGRES_URL names a server, and over HTTP with `--http`; prints the table
and writes it to bench/results.md. Exits 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
from pathlib import Path

import psycopg

from bench import ours, peer, pg, report, service
from bench.runner import Comparison, Side, run
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)

    with tempfile.TemporaryDirectory(prefix="eventledger-bench-") as directory:
        targets: list[Target] = [SqliteTarget(Path(directory))]
        postgres_target, postgres = _postgres(skip=args.no_postgres)
        if postgres_target:
            targets.append(postgres_target)
        _say(f"PostgreSQL: {postgres}")

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
    sections = [report.Section("eventledger vs eventsourcing", PEER_HEADERS, outcomes[:split])]
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
    args.output.write_text(report.markdown(env, sections), encoding="utf-8")
    _say(f"\nwritten to {args.output}")
    return 1 if any(o.errors() for o in outcomes) else 0


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
        description="eventledger's event store beside eventsourcing's, as ratios.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 30 s)")
    parser.add_argument(
        "--http", action="store_true", help="also append through the running stream service"
    )
    parser.add_argument("--repeats", type=int, default=0, help="runs per contender (median)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--output", type=Path, default=report.RESULTS, help="Markdown report (bench/results.md)"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
