"""Both read models with the plain fold (readside/plain.py) write exactly the rows they write
without it, on SQLite and PostgreSQL: a log of opens, deposits, withdrawals, transfers and
holds (bench/catchup.py's), an erasure between plain deposits of one page, a close."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bench.catchup import boundary_cut, synthetic_log

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.store import AccountingProjection
from eventledger.services.readside import apply, plain
from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB, open_readmodel_db
from eventledger.services.readside.projection import Projection
from eventledger.services.statistics.store import StatisticsProjection

TABLES = {
    "accounting": ("accounts", "transactions", "pending_transfers"),
    "statistics": ("stats_accounts", "stats_currencies", "stats_daily", "stats_pending"),
}


def _log() -> list[RecordedEvent]:
    events = synthetic_log(3000, accounts=60)
    versions: dict[str, int] = {}
    for event in events:
        versions[event.stream] = event.stream_version

    def add(account: str, type_: str, data: dict[str, Any], schema_version: int = 1) -> None:
        stream = f"account-{account}"
        versions[stream] = versions.get(stream, 0) + 1
        position = len(events) + 1
        last = events[-1]
        events.append(
            RecordedEvent(
                uuid.uuid4(),
                stream,
                type_,
                schema_version,
                {"account_id": account, **data},
                {},
                versions[stream],
                position,
                last.recorded_at + timedelta(days=1),
                hashlib.sha256(str(position).encode()).hexdigest(),
                position,
            )
        )

    def deposit(account: str) -> None:
        tx = str(uuid.uuid4())
        add(account, "MoneyDeposited", {"transaction_id": tx, "amount": 5, "reference": "pay"})

    deposit("acct-00001")
    add("acct-00001", "PersonalDataErased", {})
    deposit("acct-00001")
    add("fresh", "AccountOpened", {"currency": "EUR", "overdraft_limit": 0, "owner": "Ada"}, 2)
    add("fresh", "AccountClosed", {})
    deposit("acct-00002")
    return events


def _apply(db: ReadModelDB, projection: Projection, events: list[RecordedEvent]) -> None:
    db.migrate(projection.migrations)
    checkpoint, held = 0, list(events)
    while held:
        cut = boundary_cut(held[:700]) or boundary_cut(held)
        with db.transaction() as session:
            applied = apply.apply_batch(session, projection, held[:cut], expected=checkpoint)
        assert applied.stop is None, applied.stop
        checkpoint, held = applied.checkpoint.position, held[cut:]


def _rows(db: ReadModelDB, name: str) -> dict[str, list[tuple[Any, ...]]]:
    with db.read() as session:
        return {
            table: sorted(tuple(row) for row in session.fetchall(f"SELECT * FROM {table}"))
            for table in TABLES[name]
        }


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadModelDB]:
    if request.param == "sqlite":
        database: ReadModelDB = SqliteReadModelDB(tmp_path / "rm.db", namespace="rm")
    else:
        url: str = request.getfixturevalue("postgres_url")
        database = open_readmodel_db(url, namespace=request.getfixturevalue("pg_schema"))
    yield database
    database.close()


@pytest.mark.parametrize("name", ["accounting", "statistics"])
def test_a_read_model_folds_plain_appends_to_the_rows_the_full_rule_writes(
    db: ReadModelDB, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _log()
    projection = AccountingProjection() if name == "accounting" else StatisticsProjection()
    with monkeypatch.context() as patched:
        patched.setattr(plain, "fold_plain", lambda group, live: None)
        _apply(db, projection, events)
    full = _rows(db, name)
    with db.transaction() as session:
        apply.reset(session, projection, rebuild_until=None)
    _apply(db, projection, events)
    rows = _rows(db, name)
    assert rows == full
    if name == "accounting":  # the erasure blanked the page's plain item before it
        references = [r[7] for r in rows["transactions"] if r[0] == "acct-00001"]
        assert references[-2:] == [None, "pay"]
