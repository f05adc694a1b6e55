"""The whole system on one backend: bulk append, read-model catch-up, commands and reads
beside the peer, command → read latency, memory with idle subscribers. Real processes.

Per backend (SQLite; PostgreSQL on a fresh database for ours and a fresh schema for the peer,
both dropped after), in this order, on one eventledger installation:

1. the stream service alone; **bulk append**: 4 clients post 1,000 valid account events per
   request (an AccountOpened then deposits, one new stream each) up to the catch-up head;
   CPU µs per appended event in the stream service;
2. **catch-up**: the accounting service, then the statistics service, started on that full
   log; from its first healthy answer until its /health `position` reaches the head: events/s,
   CPU µs per event in the read model (projection apply) and in the stream (subscription);
   gates: every bulk account's balance at the accounting service, the statistics total;
3. the transaction service; then `plan.runs` runs, interleaved with the peer, of commands/s,
   reads/s and (ours) the command → read latency, each with its correctness gates;
4. **idle subscribers**: 1,000 SSE subscriptions held open on the stream service, its RSS.

Resident memory of every process is read after every step.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench import pg
from bench.http import Phase, Plan, RunResult, interleaved, run_phase
from bench.processes import REPO, Ours, Peer, Process, child_env

BULK_CLIENTS = 4
BULK_BATCH = 1_000
SUBSCRIBERS = 1_000
CATCH_UP_TIMEOUT = 600.0
MiB = 1024 * 1024


@dataclass(frozen=True)
class WholePlan:
    http: Plan
    head: int  # events in the log before the read models start (bulk append fills it)
    subscribers: int

    @classmethod
    def quick(cls) -> WholePlan:
        return cls(Plan(runs=1, seconds=3.0, warmup=1.0, latency=True), 20_000, SUBSCRIBERS)

    @classmethod
    def default(cls) -> WholePlan:
        return cls(Plan(runs=3, seconds=10.0, warmup=2.0, latency=True), 200_000, SUBSCRIBERS)


@dataclass
class CatchUp:
    service: str
    events: int
    seconds: float
    cpu_us_per_event: dict[str, float]  # read model, stream
    rss: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class BackendResult:
    backend: str
    bulk: Phase | None = None
    catch_up: list[CatchUp] = field(default_factory=list)
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> process -> bytes
    subscribers: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def latencies(self, system: str = "eventledger", phase: str = "latency") -> list[float]:
        """Every latency of `phase` over the runs of `system`, sorted (seconds)."""
        return sorted(
            latency
            for run in self.runs.get(system, [])
            if phase in run.phases
            for latency in run.phases[phase].result.get("latencies", [])
        )


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the server for our stream service; dropped (FORCE) afterwards."""
    import psycopg
    from psycopg import sql

    name = f"bench_whole_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    schema = pg.fresh_schema("peer")
    pg.create_schema(server_url, schema)
    try:
        yield schema
    finally:
        pg.drop_schema(server_url, schema)


def measure_backend(
    backend: str,
    plan: WholePlan,
    root: Path,
    say: Callable[[str], None],
    *,
    postgres: str | None = None,
) -> BackendResult:
    """Everything above on one backend; `postgres` is the server URL for PostgreSQL."""
    result = BackendResult(backend)
    if postgres is None:
        _measure(result, plan, root, say, ours_store=None, peer_url=None, peer_schema=None)
        return result
    with fresh_database(postgres) as store, fresh_schema(postgres) as schema:
        _measure(result, plan, root, say, ours_store=store, peer_url=postgres, peer_schema=schema)
    return result


def _measure(
    result: BackendResult,
    plan: WholePlan,
    root: Path,
    say: Callable[[str], None],
    *,
    ours_store: str | None,
    peer_url: str | None,
    peer_schema: str | None,
) -> None:
    tag = result.backend.lower()
    limits = [str(plan.subscribers + 100)] * 2
    ours = Ours(
        root / f"ours-{tag}",
        store=ours_store,
        stream_args=["--max-subscribers", limits[0], "--max-subscribers-per-caller", limits[1]],
    )
    peer = Peer(root / f"peer-{tag}", postgres=peer_url, schema=peer_schema)
    state = root / f"bulk-{tag}.json"
    try:
        ours.start(names=())
        result.bulk = run_phase(
            ours,
            "bulk",
            state,
            prefix=f"bulk{uuid.uuid4().hex[:8]}",
            plan=plan.http,
            clients=BULK_CLIENTS,
            extra=["--events", str(plan.head), "--batch", str(BULK_BATCH)],
        )
        result.failures += [f"bulk append: {e}" for e in result.bulk.errors()]
        say(f"{result.backend}: bulk append {result.bulk.rate:,.0f} events/s")
        result.rss["after bulk append"] = result.bulk.rss
        head = int(_health(ours.stream)["head_position"])

        for name in ("accounting", "statistics"):
            catch_up = _catch_up(ours, name, head)
            result.catch_up.append(catch_up)
            say(f"{result.backend}: {name} catch-up {catch_up.rate:,.0f} events/s")
        result.failures += _catch_up_gates(ours, state, plan)
        result.rss["after catch-up"] = _rss(ours)

        ours.readers["transaction"].start().wait_healthy()
        peer.start()
        runs = interleaved({"eventledger": ours, "peer": peer}, plan.http, root, say)
        result.runs = runs
        result.failures += [f for rs in runs.values() for r in rs for f in r.failures()]
        result.rss["after commands and reads"] = {**_rss(ours), **_rss(peer)}

        result.subscribers = _idle_subscribers(ours, plan.subscribers, head)
        say(f"{result.backend}: {result.subscribers}")
        if result.subscribers.get("ready") != plan.subscribers:
            result.failures.append(f"idle subscribers: {result.subscribers}")
    except Exception as exc:  # a failing step costs its rows, not the run
        result.failures.append(f"{type(exc).__name__}: {exc}")
        for process in [*ours.services, *peer.services]:
            if process.process is not None:
                result.failures.append(process.log_tail(15))
    finally:
        peer.stop()
        ours.stop()


def _health(process: Process) -> dict[str, Any]:
    body = process.health()
    if body is None:
        raise RuntimeError(f"{process.name}: /health did not answer 200")
    return body


def _catch_up(ours: Ours, name: str, head: int) -> CatchUp:
    """Start the read model on the full log; time from its first healthy answer to the head."""
    process = ours.readers[name].start()
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while (body := process.health()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: never healthy")
        time.sleep(0.02)
    start, first = time.perf_counter(), int(body.get("position") or 0)
    cpu = (process.cpu_seconds(), ours.stream.cpu_seconds())
    while int(body.get("position") or 0) < head:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: at {body.get('position')} of {head} after the timeout")
        time.sleep(0.02)
        body = process.health() or body
    seconds = time.perf_counter() - start
    events = max(head - first, 1)
    used = (process.cpu_seconds() - cpu[0], ours.stream.cpu_seconds() - cpu[1])
    return CatchUp(
        name,
        events,
        seconds,
        {name: used[0] * 1e6 / events, "stream": used[1] * 1e6 / events},
        process.rss_bytes(),
    )


def _catch_up_gates(ours: Ours, state: Path, plan: WholePlan) -> list[str]:
    """Every bulk account's balance at the accounting service; the statistics' total."""
    failures: list[str] = []
    verified = run_phase(ours, "verify", state, prefix="bulk", plan=plan.http).result
    if not verified.get("passed"):
        failures.append(f"catch-up gate (accounting balances): {verified}")
    token = ours.token_file.read_text().strip()
    response = httpx.get(
        f"{ours.readers['statistics'].url}/stats",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    total = response.json().get("currencies", {}).get("EUR", {}).get("total_balance")
    if total != verified.get("accepted_total"):
        failures.append(
            f"catch-up gate (statistics): total_balance {total}, "
            f"accepted {verified.get('accepted_total')}"
        )
    return failures


def _rss(system: Ours | Peer) -> dict[str, int]:
    return {
        p.name: p.rss_bytes()
        for p in system.services
        if p.process is not None and p.process.poll() is None
    }


def _idle_subscribers(ours: Ours, count: int, after: int) -> dict[str, Any]:
    """Hold `count` SSE subscriptions open on the stream service; its RSS before and with."""
    before = ours.stream.rss_bytes()
    argv = [
        sys.executable,
        "-m",
        "bench.load",
        "subscribers",
        "--state",
        "/dev/null",
        "--stream-url",
        ours.stream.url,
        "--token-file",
        str(ours.token_file),
        "--clients",
        str(count),
        "--after",
        str(after),
    ]
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=REPO,
        text=True,
    ) as load:
        assert load.stdin is not None and load.stdout is not None
        ready = load.stdout.readline()
        time.sleep(1.0)  # let the service settle its buffers before reading its memory
        with_them = ours.stream.rss_bytes()
        load.stdin.close()
        load.wait(timeout=60)
    import json

    opened = json.loads(ready) if ready.strip() else {"ready": 0, "errors": ["no answer"]}
    return {
        "ready": opened.get("ready", 0),
        "errors": opened.get("errors", []),
        "rss_before": before,
        "rss_with": with_them,
    }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
