"""What is measured: the workloads, their sizes, the event payload, and where data lives.

Both contenders get the same payload (a ~200-byte JSON object), the same number of events,
a fresh database file or schema for every measurement, and an untimed warm-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Kind(StrEnum):
    """The shape of a workload, whatever the backend."""

    APPEND_ONE = "append-1"  # one writer, single-event appends with the expected version
    APPEND_MANY = "append-many"  # concurrent writers, each to its own stream
    READ_LOG = "read-log"  # the whole global log in pages, after filling it


FILL_BATCH = 100  # events per (untimed) append while filling the log for READ_LOG


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does. `repeats` measurements per contender."""

    appends_one: int  # timed single-event appends of the one writer
    appends_many: int  # timed single-event appends of all concurrent writers together
    writers: int  # concurrent writers (asyncio tasks for us, threads for the peer)
    log_events: int  # events in the log before it is read
    page: int  # events per page of the global log
    read_passes: int  # timed passes over the whole log (one more untimed pass warms up)
    warmup: int  # untimed appends before the timed ones
    repeats: int

    def __post_init__(self) -> None:
        if self.appends_many % self.writers:
            raise ValueError("appends_many must be a multiple of writers")
        if self.log_events % FILL_BATCH:
            raise ValueError(f"log_events must be a multiple of {FILL_BATCH}")


QUICK = Sizes(
    appends_one=200,
    appends_many=960,
    writers=16,
    log_events=5_000,
    page=1_000,
    read_passes=1,
    warmup=20,
    repeats=3,
)
DEFAULT = Sizes(
    appends_one=1_500,
    appends_many=6_400,
    writers=16,
    log_events=20_000,
    page=1_000,
    read_passes=3,
    warmup=100,
    repeats=3,
)


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    """Fresh database files are created in `directory`, one per measurement."""

    directory: Path
    backend: str = "SQLite"


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """Fresh schemas are created on this server, one per measurement, dropped afterwards."""

    url: str
    backend: str = "PostgreSQL"


Target = SqliteTarget | PostgresTarget


@dataclass(frozen=True, slots=True)
class Workload:
    kind: Kind
    target: Target

    def title(self, sizes: Sizes) -> str:
        match self.kind:
            case Kind.APPEND_ONE:
                what = "append, 1 writer"
            case Kind.APPEND_MANY:
                what = f"append, {sizes.writers} concurrent writers"
            case Kind.READ_LOG:
                what = f"read global log ({sizes.log_events:,} events, pages of {sizes.page})"
        return f"{self.target.backend}: {what}"

    def ops(self, sizes: Sizes) -> int:
        """Operations in one timed section: appends, or events read."""
        match self.kind:
            case Kind.APPEND_ONE:
                return sizes.appends_one
            case Kind.APPEND_MANY:
                return sizes.appends_many
            case Kind.READ_LOG:
                return sizes.log_events * sizes.read_passes


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed section: `ops` operations in `seconds`."""

    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


class BenchError(RuntimeError):
    """Raised when a measurement did not do the work it claims (a broken benchmark)."""


# -- the payload ---------------------------------------------------------------------------

EVENT_TYPE = "MoneyDeposited"
PEER_TOPIC = "bench.events:MoneyDeposited"  # the peer's equivalent of an event type


def payload(n: int) -> dict[str, Any]:
    """The data of event `n`: a deposit-like object, about 200 bytes as compact JSON."""
    return {
        "account_id": f"acc-{n % 1000:06d}",
        "transaction_id": f"txn-{n:012d}",
        "amount": f"{(n % 100_000) / 100:.2f}",
        "currency": "EUR",
        "balance_after": "1000.00",
        "description": "fixed-size deposit",
        "occurred_at": "2025-01-01T00:00:00.000000Z",
    }


def encode(data: dict[str, Any]) -> bytes:
    """Compact JSON, as our SQLite store writes it: what the peer is given to store."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


PAYLOAD_BYTES = len(encode(payload(0)))
