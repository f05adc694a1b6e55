"""Snapshots of account state, so that loading an account does not grow with its history.

A snapshot is the folded `Account` at some version, kept by the transaction service in its
own store (a SQLite file under its data dir; a PostgreSQL URL lets several instances share
one), with what it takes to trust it again:

* `version` and `event_id`: the stream version it holds and the id of the event at that
  version. Loading reads the stream *from* that version: the first event read must be at that
  version with that id, or the snapshot is of another log (a store that was reset, another
  installation) and is discarded: the account is folded from its whole stream.
* `fingerprint`: of the code that folded it (`FOLD_CODE_VERSION`, bumped when `evolve` or an
  upcaster changes, plus every event type's schema version). A snapshot of other code is
  never used.
* A row that does not decode into a sound `Account` (corrupt, foreign, hand-edited) is
  ignored. Money is never taken from a snapshot without the event check above.

Writing is off the hot path: `Snapshots.note` only records that an account crossed a
multiple of `every` events (when a command wrote it or a load folded it); one background
task writes the latest noted state of each account, at most `MAX_PENDING` waiting (more are
dropped: a snapshot is an optimisation, the log is the truth). The store is bounded: past
`max_rows` accounts the oldest snapshots are deleted.

    SnapshotStore          get / put / close; SqliteSnapshotStore, PostgresSnapshotStore
    Snapshots              the loader (`load`) and the background writer (`note`, `run`)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from eventledger.domain.account import Account, initial_state
from eventledger.domain.events import stream_name
from eventledger.domain.pending import CREDIT, DEBIT, decode_holds, encode_holds
from eventledger.services.snapshot_file import SnapshotFile, code_fingerprint
from eventledger.services.transaction.accounts import fold_recorded
from eventledger.services.transaction.stream_client import StreamClient

log = logging.getLogger(__name__)

# Bump when `domain.account.evolve` or an upcaster changes what a history folds into.
# 2: an account's state holds its pending two-phase transfers.
FOLD_CODE_VERSION = 2
DEFAULT_EVERY = 1000
DEFAULT_MAX_ROWS = 100_000
MAX_PENDING = 10_000
# An account's state is ~200 bytes, plus ~150 a pending transfer; a state larger than this
# (an account with thousands of holds open) is not snapshotted, and a larger row not read.
MAX_STATE_BYTES = 1024 * 1024
MAX_HOLDS = 5000


def fold_fingerprint() -> str:
    """The code that folds accounts: its version, the event schemas and the upcasters."""
    return code_fingerprint("account-fold", FOLD_CODE_VERSION)


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: Account  # its `version` is the stream version the snapshot holds
    event_id: UUID  # the id of the event at that version
    fingerprint: str


def encode_state(state: Account) -> str:
    return json.dumps(
        {
            "account_id": state.account_id,
            "exists": state.exists,
            "currency": state.currency,
            "overdraft_limit": state.overdraft_limit,
            # Never personal data in a snapshot: a copy outside the log that a forget
            # (crypto-shredding, eventstore/pii.py) would not reach. No decision needs it.
            "owner": None,
            "balance": state.balance,
            "closed": state.closed,
            "version": state.version,
            "pending": encode_holds(state.pending),
        },
        separators=(",", ":"),
    )


def decode_snapshot(
    account_id: str, version: object, event_id: object, fingerprint: object, state: object
) -> Snapshot | None:
    """A snapshot from a stored row, or None when any part of it is not sound."""
    try:
        if not isinstance(state, str) or len(state) > MAX_STATE_BYTES:
            return None
        data = json.loads(state)
        fields = (
            data["account_id"],
            data["exists"],
            data["currency"],
            data["overdraft_limit"],
            data["owner"],
            data["balance"],
            data["closed"],
            data["version"],
        )
        pending = decode_holds(data["pending"])
        if pending is None:
            return None
        # The sums are derived from the holds, so that they cannot disagree with them.
        account = Account(
            *fields,
            pending=pending,
            pending_debits=sum(h.amount for h in pending.values() if h.side == DEBIT),
            pending_credits=sum(h.amount for h in pending.values() if h.side == CREDIT),
        )
        sound = (
            account.account_id == account_id
            and type(account.exists) is bool
            and account.exists
            and isinstance(account.currency, str)
            and type(account.overdraft_limit) is int
            and (account.owner is None or isinstance(account.owner, str))
            and type(account.balance) is int
            and type(account.closed) is bool
            and type(account.version) is int
            and account.version == version
            and account.version >= 1
            and isinstance(fingerprint, str)
        )
        if not sound:
            return None
        return Snapshot(account, UUID(str(event_id)), str(fingerprint))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class SnapshotStore(Protocol):
    async def get(self, account_id: str) -> Snapshot | None: ...

    async def put(self, snapshot: Snapshot) -> None: ...

    async def close(self) -> None: ...


class SqliteSnapshotStore:
    """Snapshots in a SQLite file (table `account_snapshots`)."""

    def __init__(self, path: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self._file = SnapshotFile(
            path, table="account_snapshots", payload="state", max_rows=max_rows
        )

    async def get(self, account_id: str) -> Snapshot | None:
        row = await self._file.get(account_id)
        return None if row is None else decode_snapshot(account_id, *row)

    async def put(self, snapshot: Snapshot) -> None:
        state = snapshot.state
        await self._file.put(
            state.account_id,
            (state.version, str(snapshot.event_id), snapshot.fingerprint, encode_state(state)),
        )

    async def close(self) -> None:
        await self._file.close()


class PostgresSnapshotStore:
    """Snapshots in a PostgreSQL table (schema `transaction_snapshots`), shared by instances."""

    def __init__(
        self, url: str, *, max_rows: int = DEFAULT_MAX_ROWS, schema: str = "transaction_snapshots"
    ) -> None:
        if not schema.replace("_", "").isalnum():
            raise ValueError(f"not a schema name: {schema!r}")
        self._schema = schema
        self._url = url
        self._max_rows = max_rows
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._schema}.accounts (account_id TEXT PRIMARY KEY,"
                " version BIGINT NOT NULL, event_id TEXT NOT NULL, fingerprint TEXT NOT NULL,"
                " state TEXT NOT NULL, written_at DOUBLE PRECISION NOT NULL)"
            )
            self._conn = conn
        return self._conn

    async def get(self, account_id: str) -> Snapshot | None:
        async with self._lock:
            conn = await self._connection()
            cursor = await conn.execute(
                f"SELECT version, event_id, fingerprint, state FROM {self._schema}.accounts"
                " WHERE account_id = %s",
                (account_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else decode_snapshot(account_id, *row)

    async def put(self, snapshot: Snapshot) -> None:
        state = snapshot.state
        async with self._lock:
            conn = await self._connection()
            await conn.execute(
                f"INSERT INTO {self._schema}.accounts VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version,"
                " event_id = EXCLUDED.event_id, fingerprint = EXCLUDED.fingerprint,"
                " state = EXCLUDED.state, written_at = EXCLUDED.written_at"
                f" WHERE {self._schema}.accounts.version <= EXCLUDED.version",
                (
                    state.account_id,
                    state.version,
                    str(snapshot.event_id),
                    snapshot.fingerprint,
                    encode_state(state),
                    time.time(),
                ),
            )
            await conn.execute(
                f"DELETE FROM {self._schema}.accounts WHERE account_id IN (SELECT account_id"
                f" FROM {self._schema}.accounts ORDER BY written_at DESC OFFSET %s)",
                (self._max_rows,),
            )

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def open_snapshot_store(url: str) -> SnapshotStore:
    """The snapshot store named by `url`: sqlite:///path or postgresql://…"""
    if url.startswith("sqlite:///"):
        return SqliteSnapshotStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSnapshotStore(url)
    raise ValueError(f"a snapshot store is sqlite:///path or postgresql://…, not {url!r}")


class Snapshots:
    """Loads accounts from their latest trusted snapshot; writes snapshots in the background."""

    def __init__(
        self,
        store: SnapshotStore,
        *,
        every: int = DEFAULT_EVERY,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.every = every
        self.fingerprint = fold_fingerprint()
        self._pending: dict[str, Snapshot] = {}
        self._wake = asyncio.Event()
        self._on_outcome = on_outcome

    async def load(self, client: StreamClient, account_id: str) -> Account:
        """The account, folded from its latest trusted snapshot and the events after it."""
        stream = stream_name(account_id)
        snapshot = await self._trusted(account_id)
        if snapshot is not None:
            page = await client.read_stream(stream, from_version=snapshot.state.version)
            first = page.events[0] if page.events else None
            if (
                first is not None
                and first.stream_version == snapshot.state.version
                and first.id == snapshot.event_id
            ):
                self._outcome("used")
                state = fold_recorded(snapshot.state, page.events[1:])
                if len(page.events) > 1:
                    self.note(state, page.events[-1].id, snapshot.state.version)
                return state
            self._outcome("discarded")  # another log at that version: fold it all
        page = await client.read_stream(stream)
        state = fold_recorded(initial_state(account_id), page.events)
        if page.events:
            self.note(state, page.events[-1].id, 0)
        return state

    async def _trusted(self, account_id: str) -> Snapshot | None:
        try:
            snapshot = await self.store.get(account_id)
        except Exception as exc:
            log.warning("snapshot store unavailable (%s): loading whole streams", exc)
            self._outcome("unavailable")
            return None
        if snapshot is None:
            return None
        if snapshot.fingerprint != self.fingerprint:
            self._outcome("stale")
            return None
        return snapshot

    def note(self, state: Account, event_id: UUID, since_version: int) -> None:
        """`state` (whose last event has `event_id`) was reached from `since_version`: keep it
        when that crossed a multiple of `every` events. Never waits."""
        if self.every <= 0 or not state.exists or len(state.pending) > MAX_HOLDS:
            return
        if state.version // self.every == since_version // self.every:
            return
        if state.account_id not in self._pending and len(self._pending) >= MAX_PENDING:
            return
        self._pending[state.account_id] = Snapshot(state, event_id, self.fingerprint)
        self._wake.set()

    async def run(self) -> None:
        """Write what `note` kept, for ever (until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                account_id = next(iter(self._pending))
                snapshot = self._pending.pop(account_id)
                try:
                    await self.store.put(snapshot)
                    self._outcome("written")
                except Exception as exc:
                    log.warning("could not write a snapshot of %s: %s", account_id, exc)
                    self._outcome("failed")

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
