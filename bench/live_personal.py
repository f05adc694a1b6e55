"""The stream service's cost per append with live SSE subscribers, when events carry personal
data (a deposit's `reference`, sealed on append and opened for every reader) or not.

    python -m bench.live_personal [--src DIR] [--seconds S] [--subscribers N] [--rounds R]
    python -m bench.live_personal --ab BEFORE_SRC AFTER_SRC   # interleaved A/B, same period

Starts the stream service alone (uvicorn, open: no tokens) on a fresh SQLite file (or, with
`--postgres URL`, a fresh schema, dropped after) in a process
of its own whose code comes from `--src` (a `src` folder: a git worktree of another commit for
an A/B), opens `--subscribers` SSE subscriptions (curl), each with other filters (what accounting,
statistics, the transaction service's follower and hold expirer and a console hold), and
appends one deposit per request from 16 concurrent clients to 200 accounts. It reports
appends/s and the stream process's CPU µs per append (user + system, from /proc, around the
timed phase only), once with a reference on every deposit and once without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ACCOUNTS = 200
CLIENTS = 16
REPO = Path(__file__).resolve().parent.parent
FILTERS = (
    "",
    "&stream_prefix=account-",
    "&type=MoneyDeposited",
    "&type=MoneyDeposited&type=AccountOpened",
    "&stream_prefix=acc",
)

SERVE = """
import asyncio, sys, uvicorn
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.services.stream.app import create_app
path, port, schema = sys.argv[1], int(sys.argv[2]), sys.argv[3]
async def open_store():
    if path.startswith("postgresql://"):
        return await PostgresEventStore.open(path, schema=schema)
    return SqliteEventStore(path)
app = create_app(open_store=open_store, heartbeat_seconds=5)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(url: str, pid: int, seconds: float, subscribers: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        accounts = [f"acc-{uuid.uuid4().hex[:10]}" for _ in range(ACCOUNTS)]
        for account in accounts:
            opened = {
                "type": "AccountOpened",
                "schema_version": 2,
                "data": {"account_id": account, "currency": "EUR", "overdraft_limit": 0},
            }
            body = {"expected_version": 0, "events": [opened]}
            answer = await http.post(f"/streams/account-{account}", json=body)
            assert answer.status_code == 201, answer.text
        versions = dict.fromkeys(accounts, 1)
        # Subscribers in processes of their own (curl), reading as fast as the service sends.
        # Each with its own filters, as the services have: pages are shared only between
        # subscribers asking for the same ones.
        readers = [
            await asyncio.create_subprocess_exec(
                "curl", "-sN", f"{url}/events/subscribe?after=0{FILTERS[i % len(FILTERS)]}",
                stdout=subprocess.DEVNULL,
            )
            for i in range(subscribers)
        ]  # fmt: skip
        await asyncio.sleep(0.5)
        results: dict[str, Any] = {}
        for label, reference in (("reference", True), ("none", False)):
            count = 0

            async def client(mine: list[str], deadline: float, reference: bool = reference) -> None:
                nonlocal count
                rng = random.Random(len(mine))
                while time.monotonic() < deadline:
                    account = rng.choice(mine)  # a client's own accounts: no conflicts
                    data: dict[str, Any] = {
                        "account_id": account,
                        "transaction_id": str(uuid.uuid4()),
                        "amount": rng.randint(1, 1000),
                    }
                    if reference:
                        data["reference"] = f"invoice {rng.randint(1, 99999)} for {account}"
                    event = {"type": "MoneyDeposited", "data": data}
                    body = {"expected_version": versions[account], "events": [event]}
                    answer = await http.post(f"/streams/account-{account}", json=body)
                    assert answer.status_code == 201, answer.text
                    versions[account] += 1
                    count += 1

            warm = time.monotonic() + 1.0
            await asyncio.gather(*(client(accounts[i::CLIENTS], warm) for i in range(CLIENTS)))
            count = 0
            cpu, start = _cpu_seconds(pid), time.monotonic()
            await asyncio.gather(
                *(client(accounts[i::CLIENTS], start + seconds) for i in range(CLIENTS))
            )
            elapsed, used = time.monotonic() - start, _cpu_seconds(pid) - cpu
            results[label] = {
                "appends_per_s": round(count / elapsed, 1),
                "stream_cpu_us_per_append": round(used / count * 1e6, 1),
                "appends": count,
            }
        for reader in readers:
            reader.terminate()
            await reader.wait()
        return results


def run_once(src: Path, seconds: float, subscribers: int, postgres: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="live-personal-") as tmp:
        port = _free_port()
        schema = f"live_personal_{uuid.uuid4().hex[:12]}"
        env = {**os.environ, "PYTHONPATH": str(src)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVE,
                postgres or str(Path(tmp) / "events.db"),
                str(port),
                schema,
            ],
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the stream service did not start")
                time.sleep(0.1)
            return asyncio.run(_measure(url, server.pid, seconds, subscribers))
        finally:
            server.terminate()
            server.wait(10)
            if postgres:
                with psycopg.connect(postgres, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=REPO / "src")
    p.add_argument("--ab", nargs=2, type=Path, metavar=("BEFORE_SRC", "AFTER_SRC"))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--subscribers", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--postgres", default="", help="a PostgreSQL URL: the store there (a new schema)"
    )
    args = p.parse_args()
    sources = {"before": args.ab[0], "after": args.ab[1]} if args.ab else {"this": args.src}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, src in sources.items():  # interleaved: both see the same machine
            result = run_once(src, args.seconds, args.subscribers, args.postgres)
            runs[name].append(result)
            print(name, json.dumps(result), flush=True)
    for name, results in runs.items():
        for label in ("reference", "none"):
            rates = [r[label]["appends_per_s"] for r in results]
            cpus = [r[label]["stream_cpu_us_per_append"] for r in results]
            print(
                f"{name:7} {label:9} appends/s median {statistics.median(rates):7.1f} "
                f"(range {min(rates)}-{max(rates)}); stream CPU us/append median "
                f"{statistics.median(cpus):6.1f} (range {min(cpus)}-{max(cpus)})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
