"""Fill a store quickly with valid account events, through the normal append path: what the
scale bench builds its 10,000,000-event store with, and what a test uses for a big log.

    report = await bulkload(store, events=10_000_000)

Every event is one the stream service's guard and both read models accept: each account of
the load is opened first (`AccountOpened`, EUR, no overdraft), then takes deposits
(`MoneyDeposited` of 1..1000 cents with a fresh transaction id), round robin. Appends go
through `EventStore.append_batch` in batches of about `batch` events over `streams_per_batch`
account streams, each with its numeric expected version, so every guarantee of the store
holds (hash chain, idempotent ids, gapless positions) and a reader sees ordinary history.

`concurrency` batches are in flight at once, so that the caller encodes the next batch while
the store writes the last; batches in flight never share a stream, so their expected
versions never depend on each other. Memory stays bounded by `concurrency` batches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from eventledger.domain.events import AccountOpened, MoneyDeposited, stream_name
from eventledger.eventstore.ids import uuid7
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.eventstore.store import EventStore


@dataclass(frozen=True, slots=True)
class BulkloadReport:
    """What `bulkload` wrote: `events` events on `accounts` account streams (named
    `account-<prefix>-<n>`), the head position after it, and how long it took."""

    events: int
    accounts: int
    prefix: str
    head_position: int
    seconds: float

    @property
    def rate(self) -> float:
        """Events written per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def bulkload(
    store: EventStore,
    *,
    events: int,
    accounts: int = 1_000,
    batch: int = 1_000,
    streams_per_batch: int = 100,
    concurrency: int = 2,
    prefix: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> BulkloadReport:
    """Append `events` valid account events (see the module docstring); `progress(written)`
    is called after each batch. The accounts are new (`prefix` defaults to a random one), so
    the store may already hold events."""
    if events < 0 or accounts < 1 or batch < 1 or streams_per_batch < 1 or concurrency < 1:
        raise ValueError("bulkload needs events >= 0 and positive sizes")
    prefix = prefix or uuid.uuid4().hex[:8]
    accounts = min(accounts, max(events, 1))
    names = [f"{prefix}-{n}" for n in range(accounts)]
    versions = [0] * accounts
    streams_per_batch = min(streams_per_batch, accounts)
    # Batches in flight take consecutive chunks of the accounts: with at least `concurrency`
    # chunks, no two of them share a stream.
    chunks = max(accounts // streams_per_batch, 1)
    concurrency = min(concurrency, chunks)
    per_stream = max(batch // streams_per_batch, 1)
    started = time.perf_counter()
    in_flight: deque[asyncio.Task[object]] = deque()
    written = 0
    chunk = 0

    def next_batch(remaining: int) -> tuple[list[StreamAppend], int]:
        nonlocal chunk
        first = (chunk % chunks) * streams_per_batch
        last = accounts if chunk % chunks == chunks - 1 else first + streams_per_batch
        chunk += 1
        appends: list[StreamAppend] = []
        count = 0
        for n in range(first, last):
            if count >= remaining:
                break
            take = min(per_stream, remaining - count)
            appends.append(
                StreamAppend(stream_name(names[n]), versions[n] or StreamState.NO_STREAM,
                             _events(names[n], versions[n], take))
            )  # fmt: skip
            versions[n] += take
            count += take
        return appends, count

    try:
        while written < events:
            appends, count = next_batch(events - written)
            in_flight.append(asyncio.ensure_future(store.append_batch(appends)))
            written += count
            if len(in_flight) >= concurrency:
                await in_flight.popleft()
                if progress is not None:
                    progress(written)
        while in_flight:
            await in_flight.popleft()
    finally:
        for task in in_flight:
            task.cancel()
    if progress is not None:
        progress(written)
    return BulkloadReport(
        events=written,
        accounts=sum(1 for v in versions if v),
        prefix=prefix,
        head_position=await store.head_position(),
        seconds=time.perf_counter() - started,
    )


def _events(account_id: str, version: int, count: int) -> list[NewEvent]:
    """`count` events of the account after `version`: the opening first, then deposits."""
    events: list[NewEvent] = []
    new_id = uuid7
    if version == 0 and count > 0:
        opened = AccountOpened(account_id, "EUR", 0, None)
        events.append(
            NewEvent(new_id(), opened.TYPE, opened.to_data(), schema_version=opened.SCHEMA_VERSION)
        )
    for n in range(len(events), count):
        deposit = {
            "account_id": account_id,
            "amount": (version + n) % 1000 + 1,
            "reference": None,
            "transaction_id": str(new_id()),
        }
        events.append(NewEvent(new_id(), MoneyDeposited.TYPE, deposit))
    return events
