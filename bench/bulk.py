"""Bulk append over HTTP alone, A/B: the stream service of one or more source trees, in turn.

    python -m bench.bulk [--events N] [--runs R] [--postgres URL] [--side NAME=SRC ...]

The bulk phase of `make bench` (bench/whole.py, step 1: `BULK_CLIENTS` clients post
`BULK_BATCH` valid account events per request, one new account stream each), without the
rest of the run, so that a change to the append path can be compared with the code before
it: each `--side` names a source tree (a `src` directory, e.g. of a `git worktree` of the base
commit) that the stream service is started from; the sides run interleaved (A, B, A, B …, the
first side alternating between runs), each on a fresh store (SQLite, or a fresh PostgreSQL
database). Prints, per side, events/s and the stream's CPU µs per appended event for every
run and their median; with PostgreSQL also the CPU of the server processes connected to the
stream's database per event (the server shares the cores; its WAL writer and checkpointer,
shared with other databases, are not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.http import Phase, Plan, run_phase
from bench.processes import CLOCK_TICKS, REPO, Ours
from bench.whole import BULK_BATCH, BULK_CLIENTS, fresh_database


def backend_cpu_seconds(database_url: str) -> dict[int, float]:
    """CPU time so far (user + system) of each server process connected to the database of
    `database_url` (the stream service's pool: the server's own share of an append)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    found: dict[int, float] = {}
    for (pid,) in rows:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or the server is on another machine
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def measure(src: Path, root: Path, events: int, postgres: str | None) -> Phase:
    """One bulk phase against a fresh stream service started from `src`."""
    os.environ["PYTHONPATH"] = str(src)  # child_env passes it on to the stream service
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(fresh_database(postgres)) if postgres else None
        ours = Ours(root, store=store)
        try:
            ours.start(names=())
            server = backend_cpu_seconds(store) if store else {}
            phase = run_phase(
                ours,
                "bulk",
                root / "bulk.json",
                prefix=f"bulk{uuid.uuid4().hex[:8]}",
                plan=Plan(runs=1, seconds=1.0, warmup=0.0, latency=False),
                clients=BULK_CLIENTS,
                extra=["--events", str(events), "--batch", str(BULK_BATCH)],
            )
            if store:
                after = backend_cpu_seconds(store)
                phase.cpu["postgres"] = sum(t - server.get(p, 0.0) for p, t in after.items())
        finally:
            ours.stop()
    if phase.errors():
        raise RuntimeError(f"bulk append failed: {phase.errors()[:3]}")
    return phase


def _sides(given: list[str]) -> dict[str, Path]:
    sides: dict[str, Path] = {}
    for item in given or [f"this={REPO / 'src'}"]:
        name, _, src = item.partition("=")
        sides[name] = Path(src)
    return sides


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    before = os.environ.get("PYTHONPATH")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bulk")
    p.add_argument("--events", type=int, default=100_000, help="events per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--postgres", default=None, help="server URL: the stream on PostgreSQL")
    p.add_argument("--side", action="append", default=[], help="NAME=SRC (repeatable)")
    args = p.parse_args(argv)
    sides = _sides(args.side)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    names = list(sides)
    with tempfile.TemporaryDirectory(prefix="eventledger-bulk-") as directory, _environment():
        for run in range(args.runs):
            order = names if run % 2 == 0 else names[::-1]
            for name in order:
                root = Path(directory) / f"{name}-{run}"
                phase = measure(sides[name], root, args.events, args.postgres)
                cpu = phase.cpu_us_per_op()
                results[name].append((phase.rate, cpu["stream"], cpu.get("postgres", 0.0)))
                server = f", postgres {cpu['postgres']:.1f}" if "postgres" in cpu else ""
                print(
                    f"run {run} {name}: {phase.rate:,.0f} ev/s, stream {cpu['stream']:.1f} "
                    f"µs/event, load {cpu.get('load', 0.0):.1f}{server}",
                    file=sys.stderr,
                    flush=True,
                )
    for name, rows in results.items():
        rates = ", ".join(f"{r:,.0f}" for r, _, _ in rows)
        cpus = ", ".join(f"{c:.1f}" for _, c, _ in rows)
        line = (
            f"{name}: median {statistics.median(r for r, _, _ in rows):,.0f} ev/s ({rates}); "
            f"stream median {statistics.median(c for _, c, _ in rows):.1f} µs/event ({cpus})"
        )
        if args.postgres:
            line += f"; postgres median {statistics.median(p for _, _, p in rows):.1f} µs/event"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
