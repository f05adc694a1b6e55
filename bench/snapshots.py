"""First-command latency on a cold transaction service, with and without account snapshots.

`python -m bench.snapshots [--quick] [--sizes 1000,100000,1000000]` writes one account per
size with that many events (an AccountOpened, then deposits of 1) straight into a SQLite
event store in big batched appends, starts a stream service on it, then for each account:

* without snapshots: a fresh transaction service (`--snapshot-every 0`) answers one deposit:
  the account is folded from its whole stream;
* with snapshots: a transaction service answers one deposit and writes the snapshot in the
  background (waited for on its /metrics), is stopped, started again cold on the same data
  dir, and answers one deposit: it reads the snapshot and the events after it.

Reported: the latency of that first deposit in ms (median of `repeats`), per size and mode,
and, apart, the stream service's first append to each account (its guard folds the whole
stream once: warmed before the transaction side is measured).
`--quick`: 1k, 10k, 100k events. `measure(...)` is what `make bench` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from uuid import uuid4

from bench.scale import _env, _service
from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.records import NewEvent
from eventledger.eventstore.sqlite import SqliteEventStore

SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 100_000)
BATCH = 1_000  # events per append while filling


async def _fill(path: Path, sizes: Sequence[int]) -> list[str]:
    """One account per size, with that many events; their ids."""
    store = SqliteEventStore(path, upcasters=build_upcasters())
    accounts = []
    try:
        for size in sizes:
            account = f"snap-{size}-{uuid4().hex[:8]}"
            opened = {"account_id": account, "currency": "EUR", "overdraft_limit": 0}
            first = [
                NewEvent(uuid4(), "AccountOpened", {**opened, "owner": None}, schema_version=2)
            ]
            version = 0
            while version < size:
                events = first if version == 0 else []
                count = min(BATCH, size - version) - len(events)
                events = events + [
                    NewEvent(
                        uuid4(),
                        "MoneyDeposited",
                        {
                            "account_id": account,
                            "transaction_id": str(uuid4()),
                            "amount": 1,
                            "reference": None,
                        },
                    )
                    for _ in range(count)
                ]
                await store.append(f"account-{account}", expected_version=version, events=events)
                version += len(events)
            accounts.append(account)
    finally:
        await store.close()
    return accounts


def _post_deposit(url: str, account: str) -> float:
    """Seconds until the deposit is answered 201."""
    request = urllib.request.Request(
        f"{url}/accounts/{account}/deposits",
        data=b'{"amount": 1}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
        if response.status != 201:
            raise RuntimeError(f"deposit answered {response.status}")
    return time.perf_counter() - start


def _snapshots_written(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('eventledger_transaction_snapshots_total{outcome="written"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextmanager
def _transaction(stream: str, root: Path, data_dir: Path, *extra: str) -> Iterator[str]:
    # A cold fold of a long history may take longer than the default 10 s request timeout
    # (which answers 503): the bench wants the latency itself.
    args = ["--stream-url", stream, "--data-dir", str(data_dir), "--request-timeout", "3600"]
    args += extra
    with _service("transaction", args, root, _env(None)) as url:
        yield url


def measure(*, sizes: Sequence[int] = SIZES, repeats: int = 1) -> dict[int, dict[str, float]]:
    """Per size: first-deposit latency in ms without and with a snapshot (medians)."""
    results: dict[int, dict[str, list[float]]] = {s: {"without": [], "with": []} for s in sizes}
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-snap-")))
        events = root / "events.db"
        accounts = asyncio.run(_fill(events, sizes))
        store = f"sqlite:///{events}"
        stream = stack.enter_context(_service("stream", ["--store", store], root, _env(None)))
        guard: dict[int, float] = {}
        for size, account in zip(sizes, accounts, strict=True):
            # The stream service checks an append to an account stream against the account's
            # facts (services/stream/guards.py), folded from the whole stream the first time:
            # warmed here, and timed, so that what follows measures the transaction side.
            guard[size] = _append_one(stream, account, size)
        for _ in range(repeats):
            for size, account in zip(sizes, accounts, strict=True):
                cold = root / f"cold-{uuid4().hex[:6]}"
                with _transaction(stream, root, cold, "--snapshot-every", "0") as url:
                    results[size]["without"].append(_post_deposit(url, account))
                warm = root / f"snap-{uuid4().hex[:6]}"
                with _transaction(stream, root, warm) as url:
                    _post_deposit(url, account)  # folds it all, writes the snapshot
                    deadline = time.monotonic() + 60
                    while _snapshots_written(url) < 1 and time.monotonic() < deadline:
                        time.sleep(0.02)
                with _transaction(stream, root, warm) as url:
                    results[size]["with"].append(_post_deposit(url, account))
                print(
                    f"{size:,} events: {1000 * results[size]['without'][-1]:.1f} ms without, "
                    f"{1000 * results[size]['with'][-1]:.1f} ms with a snapshot",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        size: {
            **{f"{mode}_ms": 1000 * statistics.median(v) for mode, v in modes.items()},
            "stream_first_append_ms": 1000 * guard[size],
        }
        for size, modes in results.items()
    }


def _append_one(stream: str, account: str, version: int) -> float:
    """Seconds for one deposit event appended straight to the stream service."""
    event = {
        "id": str(uuid4()),
        "type": "MoneyDeposited",
        "data": {"account_id": account, "transaction_id": str(uuid4()), "amount": 1},
    }
    body = json.dumps({"expected_version": version, "events": [event]}).encode()
    request = urllib.request.Request(
        f"{stream}/streams/account-{account}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshots", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k, 10k and 100k events")
    parser.add_argument("--sizes", help="comma-separated event counts")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    sizes: tuple[int, ...] = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    load = os.getloadavg()[0]
    results = measure(sizes=sizes, repeats=args.repeats)
    print(
        "| events in the account | first command, no snapshot | with a snapshot "
        "| stream service's first append (its guard folds the stream) |"
    )
    print("|---:|---:|---:|---:|")
    for size, row in results.items():
        print(
            f"| {size:,} | {row['without_ms']:.1f} ms | {row['with_ms']:.1f} ms "
            f"| {row['stream_first_append_ms']:.1f} ms |"
        )
    print(f"load average 1 min: {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
