"""Accounting migration 4: `transactions_by_reverses` holds only the items that reverse
something (a catch-up no longer pays an index insert for every other item). A model of
version 3 is upgraded in place and still shows which item was reversed, on SQLite and on
PostgreSQL, and the history query still seeks that index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventledger.services.accounting import queries
from eventledger.services.accounting import store as accounting
from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import OpenDB

open_db = support.open_db_fixture("reverses")
AT = "2026-12-03T10:00:00.000000Z"
ITEM = (
    "INSERT INTO transactions (account_id, position, transaction_id, kind, amount, "
    "balance_after, counterparty, reference, recorded_at, reverses) "
    "VALUES ('a', ?, ?, ?, ?, ?, NULL, NULL, ?, ?)"
)


@pytest.fixture
def db(open_db: OpenDB) -> Iterator[ReadModelDB]:
    database = open_db()
    try:
        yield database
    finally:
        database.close()


def _index_definition(db: ReadModelDB) -> str:
    with db.read() as r:
        if isinstance(db, SqliteReadModelDB):
            row = r.fetchone(
                "SELECT sql FROM sqlite_master WHERE name = 'transactions_by_reverses'"
            )
        else:
            row = r.fetchone(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'transactions_by_reverses' "
                "AND schemaname = current_schema()"
            )
    assert row is not None
    return str(row[0])


def test_a_model_of_version_3_is_upgraded_and_still_links_reversals(db: ReadModelDB) -> None:
    db.migrate(accounting.MIGRATIONS[:3])
    assert "WHERE" not in _index_definition(db).upper()
    with db.transaction() as tx:
        tx.execute(ITEM, (1, "t-deposit", "deposit", 500, 500, AT, None))
        tx.execute(ITEM, (2, "t-other", "deposit", 100, 600, AT, None))
        tx.execute(ITEM, (3, "t-undo", "reversal", -500, 100, AT, "t-deposit"))
    assert db.migrate(accounting.MIGRATIONS) == len(accounting.MIGRATIONS) == 4
    assert "reverses IS NOT NULL" in _index_definition(db)
    with db.read() as r:
        items = queries.history(r, "a", before=None, limit=10)
    assert [(i.transaction_id, i.reverses, i.reversed_by) for i in items] == [
        ("t-undo", "t-deposit", None),
        ("t-other", None, None),
        ("t-deposit", None, "t-undo"),
    ]
    with db.transaction() as tx:  # an item reversing something applied after the upgrade
        tx.execute(ITEM, (4, "t-undo-2", "reversal", -100, 0, AT, "t-other"))
    with db.read() as r:
        items = queries.history(r, "a", before=None, limit=10)
    assert {i.transaction_id: i.reversed_by for i in items}["t-other"] == "t-undo-2"


def test_the_history_query_seeks_the_partial_index_on_sqlite(tmp_path: Path) -> None:
    db = SqliteReadModelDB(tmp_path / "rm.db")
    try:
        db.migrate(accounting.MIGRATIONS)
        with db.read() as r:
            plan = r.fetchall(
                f"EXPLAIN QUERY PLAN SELECT {accounting.ITEM_COLUMNS}, {queries._REVERSED_BY} "
                "FROM transactions t WHERE account_id = ? AND position < ? "
                "ORDER BY position DESC LIMIT ?",
                ("a", 10, 10),
            )
    finally:
        db.close()
    assert any("transactions_by_reverses" in str(step[-1]) for step in plan)
