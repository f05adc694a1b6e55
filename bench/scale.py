"""Scale-out of the command side: 1, 2, 4 transaction instances on 2 stream instances.

`python -m bench.scale [--quick] [--instances 1,2,4] [--accounts 30,1000] [--repeats N]
[--src DIR ...]` starts real processes (`python -m eventledger serve`) on a fresh PostgreSQL
database (EVENTLEDGER_BENCH_POSTGRES_URL or EVENTLEDGER_TEST_POSTGRES_URL), opens the
accounts, and runs 16 closed-loop aiohttp clients posting keyed deposits round-robin over
the transaction instances (a 503 is sent again with the same key) for 20 s (`--quick`: 5 s)
after an untimed warm-up that primes every instance's cache with every account
(`--route account`: each account's commands to one instance, as a load balancer hashing the
account id; `--streams N`: stream instances). Reported per run:
commands/s, p50/p99 latency, retries per command (the instances'
`eventledger_transaction_retries_total`), CPU ms per command of the eventledger processes
(steadier than commands/s when others load the machine) and their context switches per
command (how often each process was woken: what more instances multiply). Money is checked
after every run: each account's deposits in the log sum to the amounts acknowledged, one
event per key, every 201 in the log; a run that fails the check raises.

`--src DIR` runs the services from another source tree (PYTHONPATH=DIR, e.g. a `git worktree`
of an older commit); with several, the trees are measured interleaved, repeat by repeat, so a
noisy machine weighs on all of them alike. `measure(...)` is what `make bench` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import aiohttp
import psycopg
from psycopg import sql

from bench.pg_usage import usage

HOST = "127.0.0.1"
CLIENTS = 16
STREAM_INSTANCES = 2
SECONDS, QUICK_SECONDS = 20.0, 5.0
WARMUP_SECONDS = 2.0
START_TIMEOUT = 30.0
URL_VARIABLES = ("EVENTLEDGER_BENCH_POSTGRES_URL", "EVENTLEDGER_TEST_POSTGRES_URL")


class ScaleBenchError(Exception):
    """Raised when a run cannot start or fails its money check."""


def postgres_url() -> str | None:
    for name in URL_VARIABLES:
        if url := os.environ.get(name, "").strip():
            return url
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def _fresh_database(server_url: str) -> Iterator[str]:
    name = f"bench_scale_{secrets.token_hex(4)}"
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
def _service(
    name: str,
    args: Sequence[str],
    root: Path,
    env: dict[str, str],
    pids: list[int] | None = None,
) -> Iterator[str]:
    """One `eventledger serve` process; its URL once /health answers 200 (its pid added to
    `pids`)."""
    port = _free_port()
    data = root / f"{name}-{port}"
    data.mkdir(parents=True)
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "eventledger", "serve", name, "--host", HOST]
    argv += ["--port", str(port), "--data-dir", str(data)]
    argv += [arg.replace("{url}", url) for arg in args]  # "{url}": this process's own URL
    with (root / f"{name}-{port}.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    if pids is not None:
        pids.append(process.pid)
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScaleBenchError(f"{url}: the service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise ScaleBenchError(f"{url}: no healthy answer within {START_TIMEOUT:.0f} s")


def _env(src: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    env["EVENTLEDGER_IDEMPOTENCY_SECRET"] = secrets.token_hex(32)  # shared by the instances
    if src:
        env["PYTHONPATH"] = src
    return env


def measure(
    *,
    instances: int,
    accounts: int,
    seconds: float = SECONDS,
    clients: int = CLIENTS,
    stream_instances: int = STREAM_INSTANCES,
    server_url: str | None = None,
    src: str | None = None,
    route: str = "round-robin",
    writer: str = "lease",
) -> dict[str, float]:
    """One run; plain numbers: commands_per_s, p50_ms, p99_ms, retries_per_command,
    commands, resent (503s sent again)."""
    server = server_url or postgres_url()
    if not server:
        raise ScaleBenchError(f"no PostgreSQL server: set one of {', '.join(URL_VARIABLES)}")
    with ExitStack() as stack:
        store = stack.enter_context(_fresh_database(server))
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        env = _env(src)
        pids: list[int] = []
        # The stream instances elect one writer, and the others hand it their appends
        # (--advertise-url; `writer="each"`: every instance appends itself, as before).
        stream_args = ["--store", store]
        if writer == "lease":
            stream_args += ["--advertise-url", "{url}"]
        streams = [
            stack.enter_context(_service("stream", stream_args, root, env, pids))
            for _ in range(stream_instances)
        ]
        transactions = [
            stack.enter_context(
                _service(
                    "transaction", ["--stream-url", streams[i % len(streams)]], root, env, pids
                )
            )
            for i in range(instances)
        ]
        return asyncio.run(
            _run(
                transactions,
                streams[0],
                accounts,
                seconds,
                clients,
                pids,
                route,
                len(streams),
                server_url=store,
            )
        )


def wakeups(pids: Sequence[int]) -> int:
    """Context switches of the processes so far (Linux /proc/PID/status: voluntary, each a
    wait for input ended, and involuntary): how often the work was cut up. Every instance
    that follows the log is woken for every commit, and smaller batches mean more requests."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if "ctxt_switches:" in line:
                    total += int(line.split()[-1])
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


async def _run(
    transactions: list[str],
    stream: str,
    accounts: int,
    seconds: float,
    clients: int,
    pids: Sequence[int] = (),
    route: str = "round-robin",
    stream_count: int = 0,
    *,
    server_url: str | None = None,
) -> dict[str, float]:
    # Idle connections are dropped before the services' 5 s keep-alive ends: a connection
    # the server closed meanwhile and the pool reused was a ServerDisconnectedError (priming
    # 4 instances leaves the first one's connections idle that long).
    connector = aiohttp.TCPConnector(limit=clients * 2, keepalive_timeout=3.0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ids = [f"scale-{uuid4().hex[:12]}" for _ in range(accounts)]
        load = _Load(session, transactions, ids, by_account=route == "account")
        await load.open_accounts(clients)
        await load.prime(clients)
        await load.run(clients, WARMUP_SECONDS)
        retries_before = await _retries(session, transactions)
        load.latencies.clear()
        # The stream instances' pids come first.
        stream_pids, transaction_pids = pids[:stream_count], pids[stream_count:]
        stream_before, transaction_before = cpu_seconds(stream_pids), cpu_seconds(transaction_pids)
        calls_before = wakeups(stream_pids), wakeups(transaction_pids)
        database_before = usage(server_url, set(pids)) if server_url else None
        started = time.perf_counter()
        commands = await load.run(clients, seconds)
        elapsed = time.perf_counter() - started
        stream_cpu = cpu_seconds(stream_pids) - stream_before
        transaction_cpu = cpu_seconds(transaction_pids) - transaction_before
        stream_calls = wakeups(stream_pids) - calls_before[0]
        transaction_calls = wakeups(transaction_pids) - calls_before[1]
        database = (
            usage(server_url, set(pids)).minus(database_before)
            if server_url and database_before
            else None
        )
        retries = await _retries(session, transactions) - retries_before
        await _check_money(session, stream, load)
    latencies = sorted(load.latencies)
    return {
        "commands_per_s": commands / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "retries_per_command": retries / commands,
        # CPU of the eventledger processes per command: steadier than commands/s on a
        # machine others load too (PostgreSQL and the load generator not counted).
        "cpu_ms_per_command": 1000 * (stream_cpu + transaction_cpu) / commands,
        "stream_cpu_ms_per_command": 1000 * stream_cpu / commands,
        "transaction_cpu_ms_per_command": 1000 * transaction_cpu / commands,
        "stream_wakeups_per_command": stream_calls / commands,
        "transaction_wakeups_per_command": transaction_calls / commands,
        # The PostgreSQL server processes serving the services' connections: what stays
        # single however many instances run (the primary's commit order).
        "postgres_cpu_ms_per_command": 1000 * database.server_cpu / commands if database else 0.0,
        "commands": float(commands),
        "resent": float(load.resent),
    }


class _Load:
    """Closed-loop clients: each sends its next deposit when the last one is answered."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        targets: list[str],
        ids: list[str],
        *,
        by_account: bool = False,
    ):
        self.session = session
        # Like a load balancer hashing the account id of the path: one instance per account.
        self.by_account = by_account
        self.targets = targets
        self.ids = ids
        self.accepted: dict[str, int] = dict.fromkeys(ids, 0)
        self.keys: dict[str, int] = {}  # idempotency key -> amount, for every 201
        self.latencies: list[float] = []
        self.resent = 0
        self.primed = 0  # deposits without a key entry (priming), counted in `accepted`
        self._turn = 0

    def _target(self, path: str) -> str:
        self._turn += 1
        if self.by_account and path.startswith("/accounts/"):
            owner = zlib.crc32(path.split("/")[2].encode())
            return self.targets[owner % len(self.targets)]
        return self.targets[self._turn % len(self.targets)]

    async def open_accounts(self, clients: int) -> None:
        queue = list(self.ids)

        async def opener() -> None:
            while queue:
                account = queue.pop()
                body = {"account_id": account, "currency": "EUR"}
                await self._post("/accounts", body, uuid4().hex, expect=201)

        await asyncio.gather(*(opener() for _ in range(clients)))

    async def prime(self, clients: int) -> None:
        """One deposit of 1 on every account through every instance: each instance's cache
        then holds every account, as in a deployment that has run for a while. (Without it,
        N instances load each account N times during the run, a cost of starting up.)"""
        queue = [(t, a) for t in self.targets for a in self.ids]

        async def primer() -> None:
            while queue:
                target, account = queue.pop()
                path = f"/accounts/{account}/deposits"
                await self._post(path, {"amount": 1}, uuid4().hex, target=target)
                self.accepted[account] += 1

        await asyncio.gather(*(primer() for _ in range(clients)))
        self.primed = len(self.targets) * len(self.ids)

    async def run(self, clients: int, seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        done = 0
        rng = random.Random()

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                account, amount, key = rng.choice(self.ids), rng.randint(1, 100), uuid4().hex
                start = time.perf_counter()
                await self._post(f"/accounts/{account}/deposits", {"amount": amount}, key)
                self.latencies.append(time.perf_counter() - start)
                self.accepted[account] += amount
                self.keys[key] = amount
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return done

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        key: str,
        expect: int = 201,
        target: str | None = None,
    ) -> None:
        for _ in range(50):
            url = (target or self._target(path)) + path
            async with self.session.post(url, json=body, headers={"Idempotency-Key": key}) as r:
                text = await r.text()
                if r.status in (expect, 200):
                    return
                if r.status != 503:
                    raise ScaleBenchError(f"POST {url}: {r.status} {text[:300]}")
            self.resent += 1  # contention or a stream hiccup: the same key again
        raise ScaleBenchError(f"POST {path}: 503 fifty times")


async def _retries(session: aiohttp.ClientSession, targets: list[str]) -> float:
    total = 0.0
    for url in targets:
        async with session.get(f"{url}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("eventledger_transaction_retries_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def _check_money(session: aiohttp.ClientSession, stream: str, load: _Load) -> None:
    """Each account's deposits in the log sum to what was acknowledged, one per key."""
    transactions: list[str] = []
    for account in load.ids:
        deposits: list[dict[str, Any]] = []
        start = 1
        while True:
            params = {"from_version": str(start), "limit": "1000"}
            async with session.get(f"{stream}/streams/account-{account}", params=params) as r:
                page = await r.json()
            events = page["events"]
            deposits += [e for e in events if e["type"] == "MoneyDeposited"]
            if not events or events[-1]["stream_version"] >= page["version"]:
                break
            start = events[-1]["stream_version"] + 1
        total = sum(int(e["data"]["amount"]) for e in deposits)
        if total != load.accepted[account]:
            raise ScaleBenchError(
                f"{account}: the log holds {total} in deposits, {load.accepted[account]} "
                "were acknowledged"
            )
        transactions += [str(e["data"]["transaction_id"]) for e in deposits]
    if not len(transactions) == len(set(transactions)) == len(load.keys) + load.primed:
        raise ScaleBenchError(
            f"{len(transactions)} deposits in the log ({len(set(transactions))} transaction "
            f"ids), {len(load.keys)} keys acknowledged"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f} s per run")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--instances", default="1,2,4")
    parser.add_argument("--accounts", default="30,1000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--streams", type=int, default=STREAM_INSTANCES, help="stream instances")
    parser.add_argument(
        "--route",
        choices=("round-robin", "account"),
        default="round-robin",
        help="which transaction instance a command goes to: the next one, or the account's",
    )
    parser.add_argument(
        "--writer",
        choices=("lease", "each"),
        default="lease",
        help="stream instances elect one writer (--advertise-url), or each appends itself",
    )
    parser.add_argument("--src", action="append", help="run the services from this tree")
    args = parser.parse_args(argv)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    sources: list[str | None] = list(args.src) if args.src else [None]
    rows: dict[tuple[str | None, int, int], list[dict[str, float]]] = {}
    load = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for accounts in (int(a) for a in args.accounts.split(",")):
            for instances in (int(i) for i in args.instances.split(",")):
                order = sources if repeat % 2 == 0 else sources[::-1]
                for src in order:
                    result = measure(
                        instances=instances,
                        accounts=accounts,
                        seconds=seconds,
                        src=src,
                        stream_instances=args.streams,
                        route=args.route,
                        writer=args.writer,
                    )
                    rows.setdefault((src, accounts, instances), []).append(result)
                    print(_line(src, accounts, instances, result), flush=True)
    print(f"\nload average 1 min: {load:.2f} before, {os.getloadavg()[0]:.2f} after; medians:")
    for (src, accounts, instances), results in rows.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(_line(src, accounts, instances, median))
    return 0


def _line(src: str | None, accounts: int, instances: int, r: dict[str, float]) -> str:
    return (
        f"{src or 'this tree'} | {accounts} accounts | {instances} tx | "
        f"{r['commands_per_s']:.0f} cmd/s | p50 {r['p50_ms']:.1f} ms | p99 {r['p99_ms']:.1f} ms"
        f" | retries/cmd {r['retries_per_command']:.4f} | resent {r['resent']:.0f}"
        f" | CPU {r['cpu_ms_per_command']:.2f} ms/cmd (stream"
        f" {r['stream_cpu_ms_per_command']:.2f}, transaction"
        f" {r['transaction_cpu_ms_per_command']:.2f}) | wakeups/cmd stream"
        f" {r['stream_wakeups_per_command']:.1f}, transaction"
        f" {r['transaction_wakeups_per_command']:.1f}"
        f" | PostgreSQL CPU {r.get('postgres_cpu_ms_per_command', 0.0):.2f} ms/cmd"
    )


if __name__ == "__main__":
    sys.exit(main())
