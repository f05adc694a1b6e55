"""Snapshots of the stream guard's account facts (SQLite file, memory event store): a cold
guard reads only the events after a trusted snapshot; a snapshot of another log (id
mismatch), of other code (fingerprint) or a corrupt row is never used."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.domain.validity import AccountFacts
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, RecordedEvent, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from eventledger.services.stream.guard_snapshots import (
    FactsSnapshot,
    GuardSnapshots,
    GuardSnapshotStore,
)
from eventledger.services.stream.guards import AccountGuard

pytestmark = pytest.mark.asyncio

EVENTS = 3010  # an AccountOpened and 3009 deposits of 1: snapshot at 3000 every 1000


def deposit(account: str) -> NewEvent:
    data = {"account_id": account, "transaction_id": str(uuid.uuid4()), "amount": 1}
    return NewEvent(uuid.uuid4(), "MoneyDeposited", {**data, "reference": None})


async def fill(store: MemoryEventStore, account: str, count: int) -> None:
    """Bulk appends straight into the store (the guard is not asked)."""
    stream = f"account-{account}"
    version = await store.stream_version(stream)
    events: list[NewEvent] = []
    if version == 0:
        opened = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
        events.append(NewEvent(uuid.uuid4(), "AccountOpened", opened, schema_version=2))
    while version + len(events) < count:
        events.append(deposit(account))
        if len(events) == 1000 or version + len(events) == count:
            await store.append_batch([StreamAppend(stream, version, events)])
            version += len(events)
            events = []


async def one_deposit(guard: AccountGuard, store: MemoryEventStore, account: str) -> AccountFacts:
    """Check and write one deposit at the stream's version; the facts after it."""
    stream = f"account-{account}"
    append = StreamAppend(stream, await store.stream_version(stream), [deposit(account)])
    checked = await guard.check(store, [append])
    assert checked is not None
    guard.remember(checked, await store.append_batch([append]))
    return checked.facts[stream]


@pytest.fixture
async def snapshots(tmp_path: Path) -> AsyncIterator[GuardSnapshots]:
    work = GuardSnapshots(GuardSnapshotStore(tmp_path / "guard-snapshots.db"), every=1000)
    yield work
    await work.store.close()


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore(upcasters=build_upcasters())


async def snapshotted(store: MemoryEventStore, snapshots: GuardSnapshots) -> str:
    """An account of EVENTS events whose facts at 3000 are snapshotted (a cold guard's
    fold), then 10 more events written behind the guard's back."""
    account = f"gs-{uuid.uuid4().hex[:10]}"
    await fill(store, account, 3000)
    facts = await one_deposit(AccountGuard(snapshots=snapshots), store, account)
    assert facts.version == 3001
    await snapshots.flush()
    snapshot = await snapshots.store.get(account)
    assert snapshot is not None and snapshot.facts.version == 3000  # the fold crossed it
    await fill(store, account, EVENTS)
    return account


async def test_a_cold_guard_reads_only_the_events_after_the_snapshot(
    store: MemoryEventStore, snapshots: GuardSnapshots
) -> None:
    account = await snapshotted(store, snapshots)
    plain, with_snapshot = AccountGuard(), AccountGuard(snapshots=snapshots)
    expected = await one_deposit(plain, store, account)
    assert plain.events_read == EVENTS
    # A second cold guard, same history plus the first one's deposit.
    got = await one_deposit(with_snapshot, store, account)
    assert with_snapshot.events_read == EVENTS + 1 - 3000
    assert got.balance == expected.balance + 1 == EVENTS + 1
    assert got.version == expected.version + 1


async def test_an_append_that_crosses_a_multiple_of_every_writes_a_snapshot(
    store: MemoryEventStore, snapshots: GuardSnapshots
) -> None:
    account = f"gs-{uuid.uuid4().hex[:10]}"
    await fill(store, account, 999)
    guard = AccountGuard(snapshots=snapshots)
    await one_deposit(guard, store, account)  # folds 999 (no multiple crossed), writes 1000
    await snapshots.flush()
    snapshot = await snapshots.store.get(account)
    assert snapshot is not None
    assert snapshot.facts == AccountFacts(account, True, False, 1000, "EUR", 999)
    last = (await store.read_stream(f"account-{account}", from_version=1000))[0]
    assert snapshot.event_id == last.id


async def test_a_snapshot_of_another_log_is_discarded(
    store: MemoryEventStore, snapshots: GuardSnapshots
) -> None:
    account = await snapshotted(store, snapshots)
    real = await snapshots.store.get(account)
    assert real is not None
    # Same version and fingerprint, a forged balance, another event's id: never trusted.
    forged = AccountFacts(account, True, False, real.facts.version, "EUR", 10**12)
    await snapshots.store.put(FactsSnapshot(forged, uuid.uuid4(), snapshots.fingerprint))
    guard = AccountGuard(snapshots=snapshots)
    facts = await one_deposit(guard, store, account)
    assert facts.balance == EVENTS  # 3009 deposits before, this one
    assert guard.events_read == EVENTS


async def test_a_snapshot_of_other_code_is_ignored(
    store: MemoryEventStore, snapshots: GuardSnapshots
) -> None:
    account = await snapshotted(store, snapshots)
    real = await snapshots.store.get(account)
    assert real is not None
    forged = AccountFacts(account, True, False, real.facts.version, "EUR", 10**12)
    await snapshots.store.put(FactsSnapshot(forged, real.event_id, "guard-facts-0;old"))
    guard = AccountGuard(snapshots=snapshots)
    facts = await one_deposit(guard, store, account)
    assert facts.balance == EVENTS
    assert guard.events_read == EVENTS


@pytest.mark.parametrize(
    "facts",
    [
        "not json",
        "[]",
        '["x", true, false, 3001, "EUR", 1]',  # another account's
        '["{a}", true, false, 3001, "EUR", 1.5]',  # money is integers
        '["{a}", true, false, 17, "EUR", 1]',  # not the row's version
        '["{a}", 1, false, 3001, "EUR", 1]',
        "[" + "1," * 600 + "1]",  # too large to be ours
    ],
)
async def test_a_corrupt_row_is_ignored(
    store: MemoryEventStore, snapshots: GuardSnapshots, tmp_path: Path, facts: str
) -> None:
    account = await snapshotted(store, snapshots)
    await snapshots.store.close()
    with sqlite3.connect(tmp_path / "guard-snapshots.db") as conn:
        conn.execute(
            "UPDATE guard_snapshots SET facts = ? WHERE account_id = ?",
            (facts.replace("{a}", account), account),
        )
    assert await snapshots.store.get(account) is None
    guard = AccountGuard(snapshots=snapshots)
    assert (await one_deposit(guard, store, account)).balance == EVENTS
    assert guard.events_read == EVENTS


async def test_an_unavailable_snapshot_store_folds_the_whole_stream(
    store: MemoryEventStore, tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    broken = GuardSnapshots(GuardSnapshotStore(tmp_path / "dir"))  # a directory: no SQLite
    account = f"gs-{uuid.uuid4().hex[:10]}"
    await fill(store, account, 1500)
    guard = AccountGuard(snapshots=broken)
    assert (await one_deposit(guard, store, account)).balance == 1500
    assert guard.events_read == 1500


class ReadCountingStore(MemoryEventStore):
    """A memory store that records every stream read's start version."""

    def __init__(self) -> None:
        super().__init__(upcasters=build_upcasters())
        self.reads_from: list[int] = []

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        self.reads_from.append(from_version)
        return await super()._read_stream(stream, from_version, limit)


async def test_the_stream_service_snapshots_facts_and_a_cold_one_starts_from_them(
    tmp_path: Path,
) -> None:
    store = ReadCountingStore()
    account = f"gs-{uuid.uuid4().hex[:10]}"
    stream = f"account-{account}"

    async def open_store() -> EventStore:
        return store

    async def post(events: list[dict[str, Any]]) -> None:
        app = create_app(
            open_store=open_store,
            guard_snapshot_store=GuardSnapshotStore(tmp_path / "guard-snapshots.db"),
            guard_snapshot_every=1000,
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s") as c,
        ):
            body = {"expected_version": await store.stream_version(stream), "events": events}
            r = await c.post(f"/streams/{stream}", json=body)
            assert r.status_code == 201, r.text

    opened = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    money = {"account_id": account, "amount": 1, "reference": None}
    await post([{"type": "AccountOpened", "schema_version": 2, "data": opened}])
    deposits = [
        {"type": "MoneyDeposited", "data": {**money, "transaction_id": str(uuid.uuid4())}}
        for _ in range(1000)
    ]
    await post(deposits[:999])  # a cold service: folds 1, appends up to 1000
    await fill(store, account, 1005)  # behind the service's back
    store.reads_from.clear()
    await post(deposits[999:])  # cold again: reads from the snapshot at 1000 only
    assert store.reads_from == [1000]
    assert await store.stream_version(stream) == 1006
