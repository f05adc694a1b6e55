"""Account snapshots: a cold load reads only what follows the latest trusted snapshot, and a
snapshot of another log, of other code or a corrupt row is never trusted."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from eventledger.domain.account import Account
from eventledger.domain.commands import Deposit
from eventledger.services.transaction.handlers import CommandHandler
from eventledger.services.transaction.snapshots import (
    PostgresSnapshotStore,
    Snapshot,
    Snapshots,
    SnapshotStore,
    SqliteSnapshotStore,
    decode_snapshot,
    encode_state,
    fold_fingerprint,
)
from tests.integration.test_transaction_api import Ledger, running_ledger
from tests.integration.test_transaction_follow import CountingClient, ids


async def history(ledger: Ledger, deposits: int) -> str:
    """An account with 1 + `deposits` events (each deposit 10)."""
    account_id = await ledger.open()
    for _ in range(deposits):
        await ledger.deposit(account_id, 10)
    return account_id


async def written_version(store: SnapshotStore, account_id: str) -> int:
    snapshot = await store.get(account_id)
    return 0 if snapshot is None else snapshot.state.version


async def cold_load(
    ledger: Ledger, store: SnapshotStore, account_id: str
) -> tuple[Account, list[tuple[str, int]]]:
    async with CountingClient(ledger.stream.url) as client:
        state = await Snapshots(store, every=5).load(client, account_id)
    return state, client.reads


async def test_commands_write_snapshots_and_a_cold_load_folds_only_what_follows(
    tmp_path: Path,
) -> None:
    store = SqliteSnapshotStore(tmp_path / "snapshots.db")
    async with running_ledger() as ledger:
        account_id = await ledger.open()
        outcomes: list[str] = []
        snapshots = Snapshots(store, every=5, on_outcome=outcomes.append)
        writer = asyncio.create_task(snapshots.run())
        try:
            async with CountingClient(ledger.stream.url) as client:
                handler = CommandHandler(client, snapshots=snapshots)
                for _ in range(11):  # versions 2..12: crosses 5 and 10
                    await handler.deposit(Deposit(account_id, str(uuid.uuid4()), 10, None), ids())
            async with asyncio.timeout(5):  # the writer runs in the background
                while await written_version(store, account_id) != 10:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert "written" in outcomes
        finally:
            writer.cancel()
        for _ in range(2):
            await ledger.deposit(account_id, 10)  # written behind the snapshot's back: 14
        snapshot = await store.get(account_id)
        assert snapshot is not None and snapshot.state.version == 10
        state, reads = await cold_load(ledger, store, account_id)
        assert (state.version, state.balance) == (14, 130)
        assert reads == [(f"account-{account_id}", snapshot.state.version)]


async def test_a_snapshot_of_another_log_is_discarded_and_the_stream_folded_whole(
    tmp_path: Path,
) -> None:
    store = SqliteSnapshotStore(tmp_path / "snapshots.db")
    async with running_ledger() as ledger:
        account_id = await history(ledger, 6)
        # Same account, same version, but the event there has another id: a reset store.
        lie = Account(account_id, True, "EUR", 0, None, 1_000_000, False, 5)
        await store.put(Snapshot(lie, uuid.uuid4(), fold_fingerprint()))
        state, reads = await cold_load(ledger, store, account_id)
        assert (state.version, state.balance) == (7, 60)
        assert reads == [(f"account-{account_id}", 5), (f"account-{account_id}", 1)]


async def test_a_snapshot_of_other_code_or_a_corrupt_row_is_never_trusted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snapshots.db"
    store = SqliteSnapshotStore(path)
    async with running_ledger() as ledger:
        account_id = await history(ledger, 6)
        events = await ledger.events(account_id)
        fifth = events[4]
        honest = Account(account_id, True, "EUR", 0, None, 40, False, 5)
        await store.put(Snapshot(honest, fifth.id, "account-fold-0;older code"))
        state, reads = await cold_load(ledger, store, account_id)
        assert state.balance == 60 and reads == [(f"account-{account_id}", 1)]

        await store.put(Snapshot(honest, fifth.id, fold_fingerprint()))
        state, reads = await cold_load(ledger, store, account_id)
        assert state.balance == 60 and reads == [(f"account-{account_id}", 5)]
        await store.close()
        with sqlite3.connect(path) as conn:  # somebody edits the row by hand
            conn.execute(
                "UPDATE account_snapshots SET state = replace(state, '\"balance\":40',"
                ' \'"balance":"40"\')'
            )
        state, reads = await cold_load(ledger, store, account_id)
        assert state.balance == 60 and reads == [(f"account-{account_id}", 1)]


def test_a_row_must_decode_into_a_sound_account_of_its_own_id() -> None:
    good = Account("a", True, "EUR", 0, None, 40, False, 5)
    event_id = str(uuid.uuid4())
    fingerprint = fold_fingerprint()
    assert decode_snapshot("a", 5, event_id, fingerprint, encode_state(good)) is not None
    for row in [
        ("b", 5, event_id, fingerprint, encode_state(good)),  # another account's row
        ("a", 6, event_id, fingerprint, encode_state(good)),  # version column disagrees
        ("a", 5, "not-a-uuid", fingerprint, encode_state(good)),
        ("a", 5, event_id, fingerprint, "{]"),
        ("a", 5, event_id, fingerprint, encode_state(good).replace("40", "40.5")),
        ("a", 5, event_id, fingerprint, encode_state(good).replace("true", "1", 1)),
        ("a", 5, event_id, fingerprint, "x" * 10_000),
        ("a", 5, event_id, None, encode_state(good)),
    ]:
        assert decode_snapshot(*row) is None, row


async def test_the_snapshot_file_is_bounded(tmp_path: Path) -> None:
    store = SqliteSnapshotStore(tmp_path / "snapshots.db", max_rows=3)
    for n in range(5):
        state = Account(f"acc-{n}", True, "EUR", 0, None, n, False, 1)
        await store.put(Snapshot(state, uuid.uuid4(), fold_fingerprint()))
    kept = [await store.get(f"acc-{n}") for n in range(5)]
    assert [k is not None for k in kept] == [False, False, True, True, True]
    await store.close()


async def test_snapshots_shared_in_postgresql_round_trip_and_only_move_forward(
    postgres_url: str, pg_schema: str
) -> None:
    store = PostgresSnapshotStore(postgres_url, schema=pg_schema)
    try:
        newer = Account("a", True, "EUR", 0, None, 90, False, 9)
        older = Account("a", True, "EUR", 0, None, 40, False, 5)
        event_id = uuid.uuid4()
        await store.put(Snapshot(newer, event_id, fold_fingerprint()))
        await store.put(Snapshot(older, uuid.uuid4(), fold_fingerprint()))  # a slower instance
        assert await store.get("a") == Snapshot(newer, event_id, fold_fingerprint())
        assert await store.get("b") is None
    finally:
        await store.close()
