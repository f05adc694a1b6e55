"""The checkpointed batch apply (readside/apply.py) without HTTP: a real read model database
(SQLite and PostgreSQL), the accounting projection, and events made here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventledger.domain.events import EVENT_TYPES
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.store import AccountingProjection
from eventledger.services.readside import apply
from eventledger.services.readside.checkpoints import (
    Decision,
    decision_summary,
    list_decisions,
    load_checkpoint,
)
from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB, open_readmodel_db

PROJECTION = AccountingProjection()
AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadModelDB]:
    if request.param == "sqlite":
        database: ReadModelDB = SqliteReadModelDB(tmp_path / "rm.db", namespace="accounting")
    else:
        url: str = request.getfixturevalue("postgres_url")
        database = open_readmodel_db(url, namespace=request.getfixturevalue("pg_schema"))
    database.migrate(PROJECTION.migrations)
    yield database
    database.close()


class Log:
    """Events with positions, stream versions and commit boundaries, as a store records them."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.versions: dict[str, int] = {}

    def _event(
        self, account: str, type: str, data: dict[str, Any], batch_end: int = 0
    ) -> RecordedEvent:
        stream = f"account-{account}"
        self.versions[stream] = self.versions.get(stream, 0) + 1
        position = len(self.events) + 1
        event = RecordedEvent(
            id=uuid.uuid4(),
            stream=stream,
            type=type,
            schema_version=EVENT_TYPES[type].SCHEMA_VERSION,
            data={"account_id": account, **data},
            metadata={},
            stream_version=self.versions[stream],
            position=position,
            recorded_at=AT,
            hash=f"{position:064x}",
            batch_end=batch_end or position,
        )
        self.events.append(event)
        return event

    def open(self, account: str) -> RecordedEvent:
        data = {"currency": "EUR", "overdraft_limit": 0, "owner": None}
        return self._event(account, "AccountOpened", data)

    def deposit(self, account: str, amount: int) -> RecordedEvent:
        data = {"transaction_id": str(uuid.uuid4()), "amount": amount, "reference": None}
        return self._event(account, "MoneyDeposited", data)

    def transfer(self, source: str, target: str, amount: int, *, to_stream: str = "") -> None:
        tx = str(uuid.uuid4())
        end = len(self.events) + 2
        sent = {"transaction_id": tx, "to_account": target, "amount": amount, "reference": None}
        self._event(source, "TransferSent", sent, end)
        received = {
            "transaction_id": tx,
            "from_account": source,
            "amount": amount,
            "reference": None,
        }
        self._event(to_stream or target, "TransferReceived", received, end)


def run(db: ReadModelDB, items: list[Any], expected: int) -> apply.Applied:
    with db.transaction() as tx:
        return apply.apply_batch(tx, PROJECTION, items, expected=expected)


def balances(db: ReadModelDB) -> dict[str, int]:
    with db.read() as r:
        return {
            row[0]: int(row[1]) for row in r.fetchall("SELECT account_id, balance FROM accounts")
        }


def test_a_batch_moves_the_checkpoint_with_the_hash_of_its_last_event(db: ReadModelDB) -> None:
    log = Log()
    log.open("a")
    log.deposit("a", 100)
    applied = run(db, log.events, 0)
    assert (applied.applied, applied.stop, applied.checkpoint.position) == (2, None, 2)
    with db.read() as r:
        stored = load_checkpoint(r, "accounting")
    assert (stored.position, stored.hash) == (2, log.events[-1].hash)
    assert balances(db) == {"a": 100}


def test_an_event_refused_inside_a_transfer_keeps_the_whole_transfer_out(db: ReadModelDB) -> None:
    log = Log()
    log.open("a")
    log.open("b")
    log.deposit("a", 100)
    # The receiving side names an account that was never opened: the projection refuses it.
    log.transfer("a", "b", 30, to_stream="ghost")
    applied = run(db, log.events, 0)
    assert applied.checkpoint.position == 3  # before the transfer, not inside it
    assert applied.stop is not None and applied.stop.position == 5
    assert [e.position for e in applied.rest] == [4, 5]
    assert balances(db) == {"a": 100, "b": 0}  # not 70: no half of the transfer is shown


def test_a_database_refusal_halts_at_the_event_instead_of_retrying(db: ReadModelDB) -> None:
    log = Log()
    log.open("a")
    log.deposit("a", 5)
    log.deposit("a", 7)
    with db.transaction() as tx:  # a row that should not be there: the third insert collides
        tx.execute(
            "INSERT INTO transactions (account_id, position, transaction_id, kind, amount, "
            "balance_after, counterparty, reference, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("a", 3, "x", "deposit", 1, 1, None, None, "2026-01-01T00:00:00.000000Z"),
        )
    applied = run(db, log.events, 0)
    assert applied.stop is not None
    assert applied.stop.position == 3
    assert "refused" in applied.stop.reason
    assert applied.checkpoint.position == 2
    assert balances(db) == {"a": 5}


def test_a_decision_passes_the_event_now_and_after_a_reset(db: ReadModelDB) -> None:
    log = Log()
    log.open("a")
    bad = log.deposit("ghost", 5)
    log.deposit("a", 9)
    halted = run(db, log.events, 0)
    assert halted.stop is not None and halted.stop.position == bad.position
    decision = Decision(
        "accounting", bad.position, "park", str(bad.id), bad.stream, bad.type,
        halted.stop.reason, "ghost account", "ops@test", "2026-11-27T10:00:00.000000Z", 1,
    )  # fmt: skip
    with db.transaction() as tx:
        decided = apply.decide(tx, PROJECTION, decision, envelope='{"id": 1}', held=halted.rest)
    assert (decided.stop, decided.checkpoint.position, decided.passed) == (None, 3, 1)
    assert balances(db) == {"a": 9}
    with db.transaction() as tx:
        reset = apply.reset(tx, PROJECTION, rebuild_until=3)
    assert (reset.position, reset.rebuild_until, reset.generation) == (0, 3, 1)
    replayed = run(db, log.events, 0)
    assert (replayed.stop, replayed.checkpoint.position) == (None, 3)
    assert not replayed.checkpoint.rebuilding  # back where it was: the rebuild is over
    assert balances(db) == {"a": 9}
    with db.read() as r:
        summary = decision_summary(r, "accounting")
        kept = list_decisions(r, "accounting")
        assert load_checkpoint(r, "accounting").rebuild_until is None
    assert (summary.skipped, summary.parked, summary.last) == (0, 1, decision)
    assert kept == [(decision, '{"id": 1}')]


def test_a_batch_that_ends_inside_an_atomic_append_is_not_at_a_boundary() -> None:
    log = Log()
    log.open("a")
    log.open("b")
    log.transfer("a", "b", 1)
    assert apply.at_boundary(log.events[:2])
    assert not apply.at_boundary(log.events[:3])
    assert apply.at_boundary(log.events)
