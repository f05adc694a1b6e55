"""Snapshots of the guard's account facts, so that a cold guard does not fold whole streams.

The guard needs an account's `AccountFacts` before the first append to it; folded from the
whole stream that costs ~39 s at 1M events. A snapshot is the facts at some version, kept
in a SQLite file (`<data-dir>/guard-snapshots.db`), with what it takes to trust it again
(the design of `services.transaction.snapshots`):

* `version` and `event_id`: the stream version it holds and the id of the event there. The
  guard reads the stream *from* that version: the first event read must be at that version
  with that id, or the snapshot is of another log and is discarded (`AccountGuard`).
* `fingerprint`: of the code that folded it (`GUARD_CODE_VERSION`, bumped when the validity
  rule or an upcaster changes, plus every event type's schema version). Other code's
  snapshots are never used.
* A row that does not decode into sound facts (corrupt, foreign) is ignored.

Writing is off the hot path: `note` records that a stream crossed a multiple of `every`
events; one background task (`run`) writes the latest noted facts of each stream, at most
`MAX_PENDING` waiting (more are dropped: the log is the truth). Past `max_rows` streams the
least recently written snapshots are deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from eventledger.domain.pending import CREDIT, DEBIT, decode_holds, encode_holds
from eventledger.domain.validity import AccountFacts
from eventledger.services.snapshot_file import SnapshotFile, code_fingerprint

log = logging.getLogger(__name__)

# Bump when `domain.validity` or an upcaster changes what a history folds into.
# 2: the facts hold the account's pending two-phase transfers.
GUARD_CODE_VERSION = 2
DEFAULT_EVERY = 1000
DEFAULT_MAX_ROWS = 100_000
MAX_PENDING = 10_000
# Facts are ~120 bytes, plus ~150 a pending transfer: facts with more than MAX_HOLDS holds
# are not snapshotted (the stream is folded instead), and a larger row is not read.
MAX_FACTS_BYTES = 1024 * 1024
MAX_HOLDS = 5000


def guard_fingerprint() -> str:
    """The code that folds facts: its version, the event schemas and the upcasters."""
    return code_fingerprint("guard-facts", GUARD_CODE_VERSION)


@dataclass(frozen=True, slots=True)
class FactsSnapshot:
    facts: AccountFacts  # its `version` is the stream version the snapshot holds
    event_id: UUID  # the id of the event at that version
    fingerprint: str


def encode_facts(facts: AccountFacts) -> str:
    return json.dumps(
        [facts.account_id, facts.exists, facts.closed, facts.version, facts.currency,
         facts.balance, encode_holds(facts.pending)],
        separators=(",", ":"),
    )  # fmt: skip


def decode_row(
    account_id: str, version: object, event_id: object, fingerprint: object, text: object
) -> FactsSnapshot | None:
    """A snapshot from a stored row, or None when any part of it is not sound."""
    try:
        if not isinstance(text, str) or len(text) > MAX_FACTS_BYTES:
            return None
        data = json.loads(text)
        if not isinstance(data, list) or len(data) != 7:
            return None
        pending = decode_holds(data[6])
        if pending is None:
            return None
        # The sums are derived from the holds, so that they cannot disagree with them.
        account_id_, exists, closed, version_, currency, balance = data[:6]
        facts = AccountFacts(
            account_id_,
            exists,
            closed,
            version_,
            currency,
            balance,
            pending=pending,
            pending_debits=sum(h.amount for h in pending.values() if h.side == DEBIT),
            pending_credits=sum(h.amount for h in pending.values() if h.side == CREDIT),
        )
        sound = (
            facts.account_id == account_id
            and facts.exists is True
            and type(facts.closed) is bool
            and type(facts.version) is int
            and facts.version == version
            and facts.version >= 1
            and isinstance(facts.currency, str)
            and type(facts.balance) is int
            and isinstance(fingerprint, str)
        )
        if not sound:
            return None
        return FactsSnapshot(facts, UUID(str(event_id)), str(fingerprint))
    except (ValueError, TypeError):
        return None


class GuardSnapshotStore:
    """Facts snapshots in a SQLite file (table `guard_snapshots`)."""

    def __init__(self, path: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self._file = SnapshotFile(path, table="guard_snapshots", payload="facts", max_rows=max_rows)

    async def get(self, account_id: str) -> FactsSnapshot | None:
        row = await self._file.get(account_id)
        return None if row is None else decode_row(account_id, *row)

    async def put(self, snapshot: FactsSnapshot) -> None:
        facts = snapshot.facts
        await self._file.put(
            facts.account_id,
            (facts.version, str(snapshot.event_id), snapshot.fingerprint, encode_facts(facts)),
        )

    async def close(self) -> None:
        await self._file.close()


class GuardSnapshots:
    """The guard's trusted snapshots (`trusted`) and their background writer (`note`, `run`)."""

    def __init__(self, store: GuardSnapshotStore, *, every: int = DEFAULT_EVERY) -> None:
        self.store = store
        self.every = every
        self.fingerprint = guard_fingerprint()
        self._pending: dict[str, FactsSnapshot] = {}
        self._wake = asyncio.Event()

    async def trusted(self, account_id: str) -> FactsSnapshot | None:
        """The stored snapshot of the account when it is of this code (still to be checked
        against the log by the caller); None when there is none or the store fails."""
        try:
            snapshot = await self.store.get(account_id)
        except Exception as exc:  # an optimisation: never fail an append for it
            log.warning("guard snapshot store unavailable (%s): folding whole streams", exc)
            return None
        if snapshot is None or snapshot.fingerprint != self.fingerprint:
            return None
        return snapshot

    def note(self, facts: AccountFacts, event_id: UUID, since_version: int) -> None:
        """`facts` (whose last event has `event_id`) were reached from `since_version`: keep
        them when that crossed a multiple of `every` events. Never waits."""
        if self.every <= 0 or not facts.exists or len(facts.pending) > MAX_HOLDS:
            return
        if facts.version // self.every == since_version // self.every:
            return
        if facts.account_id not in self._pending and len(self._pending) >= MAX_PENDING:
            return
        self._pending[facts.account_id] = FactsSnapshot(facts, event_id, self.fingerprint)
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
                except Exception as exc:
                    log.warning("could not write a guard snapshot of %s: %s", account_id, exc)

    async def flush(self) -> None:
        """Write what is pending now (tests, shutdown)."""
        while self._pending:
            account_id = next(iter(self._pending))
            await self.store.put(self._pending.pop(account_id))
