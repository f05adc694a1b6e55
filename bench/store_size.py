"""Cost flat in the size of the log: append and read rates on an empty store and on a big one.

    python -m bench.store_size [--events 10000000] [--budget SECONDS]

In-process, on one SQLite store (WAL, synchronous=FULL, as the stream service opens it):

1. on the empty store (20,000 events loaded first, so that there is a tail to read):
   **append**, 16 concurrent writers of single-event appends to new streams; **read**, the
   last 20,000 events of the global log in pages of 1,000 (how a read model follows);
2. the store is filled with valid account events by `eventledger.eventstore.bulkload`
   (the normal append path: hash chain, ids, versions) up to `--events`, or until `--budget`
   seconds have passed (the size reached is reported);
3. the same two measurements again. The ratios big / empty should be ≈ 1.

Each measurement is the median of `repeats`, the empty and the big one on the same machine
minutes apart (not interleaved: filling takes minutes), so the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ours import _writers
from eventledger.eventstore.sqlite import SqliteEventStore

APPENDS = 3_200
WRITERS = 16
TAIL = 20_000
PAGE = 1_000
CHUNK = 100_000  # bulkload calls between looks at the clock


@dataclass(frozen=True)
class SizeSample:
    events: int  # in the store when measured
    append_rate: float  # appends/s
    read_rate: float  # events/s


@dataclass(frozen=True)
class StoreSizeResult:
    empty: SizeSample
    big: SizeSample
    fill_rate: float  # events/s of the bulk load
    target: int
    disk_bytes: int

    @property
    def append_ratio(self) -> float:
        return self.big.append_rate / self.empty.append_rate

    @property
    def read_ratio(self) -> float:
        return self.big.read_rate / self.empty.read_rate


def measure(
    *, events: int, budget: float | None = None, repeats: int = 3, directory: Path | None = None
) -> StoreSizeResult:
    """Fill a fresh store to `events` (or for `budget` seconds) between two measurements."""
    with tempfile.TemporaryDirectory(prefix="bench-store-size-", dir=directory) as tmp:
        path = Path(tmp) / "events.db"
        return asyncio.run(_measure(path, events, budget, repeats))


async def _measure(path: Path, target: int, budget: float | None, repeats: int) -> StoreSizeResult:
    from eventledger.eventstore.bulkload import bulkload

    store = SqliteEventStore(path)
    try:
        await bulkload(store, events=TAIL)
        empty = await _sample(store, repeats)
        started = time.perf_counter()
        filled = 0
        while (head := await store.head_position()) < target:
            if budget is not None and time.perf_counter() - started > budget:
                break
            report = await bulkload(store, events=min(CHUNK, target - head))
            filled += report.events
        fill_rate = filled / max(time.perf_counter() - started, 1e-9)
        big = await _sample(store, repeats)
    finally:
        await store.close()
    disk = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
    return StoreSizeResult(empty, big, fill_rate, target, disk)


async def _sample(store: SqliteEventStore, repeats: int) -> SizeSample:
    appends, reads = [], []
    for _ in range(repeats):
        seconds = await _writers(store, WRITERS, APPENDS // WRITERS)
        appends.append(APPENDS / seconds)
        reads.append(await _read_tail(store))
    return SizeSample(
        await store.head_position(), statistics.median(appends), statistics.median(reads)
    )


async def _read_tail(store: SqliteEventStore) -> float:
    after = max(await store.head_position() - TAIL, 0)
    start, read = time.perf_counter(), 0
    while read < TAIL and (events := await store.read_all(after=after, limit=PAGE)):
        read += len(events)
        after = events[-1].position
    return read / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_size")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--budget", type=float, default=None, help="seconds of filling at most")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(events=args.events, budget=args.budget, repeats=args.repeats)
    for line in lines(result):
        print(line)
    print(f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


def lines(r: StoreSizeResult) -> list[str]:
    return [
        f"| append, {WRITERS} writers (appends/s) | {r.empty.append_rate:,.0f} "
        f"| {r.big.append_rate:,.0f} | {r.append_ratio:.2f} |",
        f"| read the log's last {TAIL:,} events (events/s) | {r.empty.read_rate:,.0f} "
        f"| {r.big.read_rate:,.0f} | {r.read_ratio:.2f} |",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
