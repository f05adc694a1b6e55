"""Read-model catch-up in one process, without HTTP: where a projection's time goes per event.

    python -m bench.catchup [--events N] [--backend sqlite|postgresql] \
        [--projection accounting|statistics] [--workload mixed|bulk] [--profile FILE] \
        [--repeats R]

A log of valid account events is encoded once as the stream service sends it (`id: P`
`event: T` `data: {envelope}` SSE messages) and cut into 64 KiB chunks, the size a subscriber
reads at once. `--workload mixed` (default): 1,000 accounts, opens, deposits, withdrawals,
transfers as pairs in one append, two-phase holds that are posted; `--workload bulk`: the log
bench/whole.py's bulk append writes and its catch-up row reads (appends of 1,000 events, each
a new account opened then 999 deposits). The timed part is what a read model does with the
chunks: the SSE parser, the envelope decoder (`subscription._decode`), then
`apply.apply_batch` for each page (`runner.BATCH_SIZE` events, cut at an append's end, as the
runner does catching up), each page in its own transaction with the checkpoint.

It prints events/s (wall) and CPU µs per event of this process (the database's own work, on
PostgreSQL, is in another process and shows only in the wall rate), by part: parse, decode,
apply, commit and other (the harness). `--profile` writes a cProfile of the apply part.
PostgreSQL: EVENTLEDGER_TEST_POSTGRES_URL or `--postgres-url`; a fresh schema namespace is used
and dropped.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from eventledger.eventstore.codec import to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.apply import Item, apply_batch, batch_end
from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB, open_readmodel_db
from eventledger.services.readside.envelopes import EnvelopeDecoder
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.runner import BATCH_SIZE
from eventledger.services.readside.subscription import SSEParser, _decode

CHUNK = 64 * 1024
BULK_BATCH = 1_000  # events per append of bench/whole.py's bulk append


@dataclass
class Result:
    events: int
    wall: float
    cpu: float
    parse_cpu: float  # SSEParser.feed
    decode_cpu: float  # the envelopes into RecordedEvents
    apply_cpu: float  # apply.apply_batch
    commit_cpu: float  # leaving the transaction: COMMIT

    @property
    def rate(self) -> float:
        return self.events / self.wall

    def line(self, label: str) -> str:
        per = 1e6 / self.events
        parts = self.parse_cpu + self.decode_cpu + self.apply_cpu + self.commit_cpu
        return (
            f"{label}: {self.rate:,.0f} events/s, CPU {self.cpu * per:.1f} µs/event "
            f"(parse {self.parse_cpu * per:.1f}, decode {self.decode_cpu * per:.1f}, "
            f"apply {self.apply_cpu * per:.1f}, commit {self.commit_cpu * per:.1f}, "
            f"other {(self.cpu - parts) * per:.1f})"
        )


def synthetic_log(count: int, *, accounts: int = 1000, seed: int = 7) -> list[RecordedEvent]:
    """`count` valid events (about) of `accounts` accounts, in appends as the command side
    writes them. Deterministic for a seed."""
    rng = random.Random(seed)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    events: list[RecordedEvent] = []
    versions: dict[str, int] = {}
    balances: dict[str, int] = {}
    ids = [f"acct-{n:05d}" for n in range(accounts)]

    def tx() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def append(batch: list[tuple[str, str, dict[str, Any], int]]) -> None:
        first = len(events) + 1
        end = first + len(batch) - 1
        at = start + timedelta(milliseconds=len(events) // 8)
        for offset, (account, type_, data, schema) in enumerate(batch):
            versions[account] = versions.get(account, 0) + 1
            position = first + offset
            events.append(
                RecordedEvent(
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    f"account-{account}",
                    type_,
                    schema,
                    data,
                    {"command": "bench"},
                    versions[account],
                    position,
                    at,
                    hashlib.sha256(str(position).encode()).hexdigest(),
                    end,
                )
            )

    for account in ids:
        data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
        append([(account, "AccountOpened", data, 2)])
        balances[account] = 0
    while len(events) < count:
        roll = rng.random()
        a, b = rng.sample(ids, 2)
        amount = rng.randrange(1, 500)
        if roll < 0.5 or balances[a] < amount:
            balances[a] += amount
            deposit = {"account_id": a, "transaction_id": tx(), "amount": amount}
            append([(a, "MoneyDeposited", {**deposit, "reference": "salary"}, 1)])
        elif roll < 0.65:
            balances[a] -= amount
            withdrawal = {"account_id": a, "transaction_id": tx(), "amount": amount}
            append([(a, "MoneyWithdrawn", {**withdrawal, "reference": None}, 1)])
        elif roll < 0.9:
            balances[a] -= amount
            balances[b] += amount
            t = tx()
            sent = {"account_id": a, "transaction_id": t, "to_account": b, "amount": amount}
            got = {"account_id": b, "transaction_id": t, "from_account": a, "amount": amount}
            append(
                [
                    (a, "TransferSent", {**sent, "reference": "rent"}, 1),
                    (b, "TransferReceived", {**got, "reference": "rent"}, 1),
                ]
            )
        else:
            balances[a] -= amount
            balances[b] += amount
            t = tx()
            hold = {"transaction_id": t, "amount": amount, "reference": None, "expires_at": None}
            append(
                [
                    (a, "PendingTransferSent", {**hold, "account_id": a, "to_account": b}, 1),
                    (b, "PendingTransferReceived", {**hold, "account_id": b, "from_account": a}, 1),
                ]
            )
            pair = {"transaction_id": t, "from_account": a, "to_account": b, "amount": amount}
            append(
                [
                    (a, "PendingTransferPosted", {**pair, "account_id": a}, 1),
                    (b, "PendingTransferPosted", {**pair, "account_id": b}, 1),
                ]
            )
    return events


def bulk_log(count: int) -> list[RecordedEvent]:
    """`count` events as `bench/whole.py`'s bulk append writes them (the log the issue's
    catch-up row is measured on): appends of `BULK_BATCH` events, each a new account opened
    then deposits of 100."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    events: list[RecordedEvent] = []
    rng = random.Random(7)
    for first in range(1, count + 1, BULK_BATCH):
        end = min(first + BULK_BATCH - 1, count)
        account = f"bulk-{first // BULK_BATCH:06d}"
        at = start + timedelta(milliseconds=first // 100)
        for position in range(first, end + 1):
            version = position - first + 1
            if version == 1:
                type_, schema = "AccountOpened", 2
                data: dict[str, Any] = {
                    "account_id": account,
                    "currency": "EUR",
                    "overdraft_limit": 0,
                    "owner": None,
                }
            else:
                type_, schema = "MoneyDeposited", 1
                tx = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                data = {"account_id": account, "transaction_id": tx, "amount": 100}
                data["reference"] = None
            events.append(
                RecordedEvent(
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    f"account-{account}",
                    type_,
                    schema,
                    data,
                    {},
                    version,
                    position,
                    at,
                    hashlib.sha256(str(position).encode()).hexdigest(),
                    end,
                )
            )
    return events


def sse_chunks(events: list[RecordedEvent]) -> list[bytes]:
    """The log as the stream service's subscription sends it, in reads of CHUNK bytes."""
    body = b"".join(
        b"id: %d\nevent: %s\ndata: %s\n\n"
        % (e.position, e.type.encode(), orjson.dumps(to_envelope(e)))
        for e in events
    )
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def _pages(chunks: list[bytes], clock: list[float]) -> Iterator[list[Item]]:
    """The runner's batches catching up: `BATCH_SIZE` decoded items or a little more, cut
    where an append ends. `clock` gets the CPU time of parsing [0] and decoding [1]."""
    parser = SSEParser()
    decoder = EnvelopeDecoder()
    held: list[Item] = []
    for chunk in chunks:
        before = time.process_time()
        messages = parser.feed(chunk)
        parsed = time.process_time()
        held += [_decode(message, decoder) for message in messages]
        clock[0] += parsed - before
        clock[1] += time.process_time() - parsed
        if len(held) < BATCH_SIZE:
            continue
        cut = boundary_cut(held)
        if cut:
            yield held[:cut]
            held = held[cut:]
    if held:
        yield held


def boundary_cut(items: list[Item]) -> int:
    """The longest prefix of `items` that ends where an atomic append ends (`apply.at_boundary`
    accepts it), in one pass: its length, 0 for none."""
    cut = reach = 0
    for index, item in enumerate(items):
        reach = max(reach, batch_end(item))
        if item.position is not None and reach <= item.position:
            cut = index + 1
    return cut


def run(
    db: ReadModelDB, projection: Projection, chunks: list[bytes], profile: str | None
) -> Result:
    db.migrate(projection.migrations)
    clock = [0.0, 0.0]
    commit_cpu = apply_cpu = 0.0
    checkpoint = 0
    count = 0
    profiler = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    for page in _pages(chunks, clock):
        if profiler:
            profiler.enable()
        with db.transaction() as session:
            begun = time.process_time()
            applied = apply_batch(session, projection, page, expected=checkpoint)
            applied_at = time.process_time()
        commit_cpu += time.process_time() - applied_at
        apply_cpu += applied_at - begun
        if profiler:
            profiler.disable()
        if applied.stop is not None:
            raise SystemExit(f"halted: {applied.stop}")
        checkpoint = applied.checkpoint.position
        count += len(page)
    result = Result(
        count, time.perf_counter() - wall, time.process_time() - cpu, *clock, apply_cpu, commit_cpu
    )
    if profiler and profile:
        profiler.dump_stats(profile)
    return result


def _projection(name: str) -> Projection:
    if name == "accounting":
        from eventledger.services.accounting.store import AccountingProjection

        return AccountingProjection()
    from eventledger.services.statistics.store import StatisticsProjection

    return StatisticsProjection()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--projection", choices=("accounting", "statistics"), default="accounting")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--workload",
        choices=("mixed", "bulk"),
        default="mixed",
        help="mixed: deposits, withdrawals, transfers, holds on 1,000 accounts; bulk: the log "
        "of bench/whole.py's bulk append (an account opened then 999 deposits per append)",
    )
    parser.add_argument("--profile", help="write a cProfile of the apply part here")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("EVENTLEDGER_TEST_POSTGRES_URL", "")
    )
    args = parser.parse_args()
    log = bulk_log(args.events) if args.workload == "bulk" else synthetic_log(args.events)
    chunks = sse_chunks(log)
    del log  # not kept alive: the collector would walk it at every pass, as no runner does
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            if args.backend == "sqlite":
                db: ReadModelDB = SqliteReadModelDB(Path(tmp) / "rm.db")
            else:
                if not args.postgres_url:
                    raise SystemExit("PostgreSQL: set EVENTLEDGER_TEST_POSTGRES_URL")
                namespace = f"bench_{uuid.uuid4().hex[:8]}"
                db = open_readmodel_db(args.postgres_url, namespace=namespace)
            try:
                result = run(db, _projection(args.projection), chunks, args.profile)
            finally:
                if args.backend == "postgresql":
                    with db.transaction() as session:
                        session.execute(f"DROP SCHEMA IF EXISTS {namespace} CASCADE")
                db.close()
        print(result.line(f"{args.backend} {args.projection} {args.workload}"), flush=True)


if __name__ == "__main__":
    main()
