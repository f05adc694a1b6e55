"""Read models made before two-phase transfers keep working after the upgrade, on SQLite and
on PostgreSQL: the accounting model's schema version 2 and the statistics model's version 3
add columns and tables without replaying the log (the log those models applied held no
pending transfer, so every row is already right), and the upgraded model applies holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import queries
from eventledger.services.accounting import store as accounting
from eventledger.services.readside.checkpoints import read_checkpoint
from eventledger.services.readside.db import ReadModelDB
from eventledger.services.statistics import queries as stats_queries
from eventledger.services.statistics import store as statistics
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import OpenDB

open_db = support.open_db_fixture("upgrade")
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TX = str(uuid.UUID(int=7))


@pytest.fixture
def db(open_db: OpenDB) -> Iterator[ReadModelDB]:
    database = open_db()
    try:
        yield database
    finally:
        database.close()


def hold(position: int, versions: tuple[int, int]) -> list[RecordedEvent]:
    """A hold of 400 from `a` to `b` (one atomic append at `position`, `position + 1`)."""
    common = {"transaction_id": TX, "amount": 400, "reference": None, "expires_at": None}
    parts = [
        ("a", "PendingTransferSent", {"account_id": "a", **common, "to_account": "b"}),
        ("b", "PendingTransferReceived", {"account_id": "b", **common, "from_account": "a"}),
    ]
    return [
        RecordedEvent(
            uuid.uuid4(),
            f"account-{account}",
            type,
            1,
            data,
            {},
            versions[i],
            position + i,
            T0,
            batch_end=position + 1,
        )
        for i, (account, type, data) in enumerate(parts)
    ]


def posted(position: int, versions: tuple[int, int], amount: int) -> list[RecordedEvent]:
    """The post of that hold, for `amount`, in a later append."""
    data = {"transaction_id": TX, "from_account": "a", "to_account": "b", "amount": amount}
    return [
        RecordedEvent(
            uuid.uuid4(),
            f"account-{account}",
            "PendingTransferPosted",
            1,
            {"account_id": account, **data},
            {},
            versions[i],
            position + i,
            T0,
            batch_end=position + 1,
        )
        for i, account in enumerate(("a", "b"))
    ]


def test_an_accounting_model_of_version_1_is_upgraded_in_place(db: ReadModelDB) -> None:
    db.migrate(accounting.MIGRATIONS[:1])
    with db.transaction() as tx:
        for name, balance, version in (("a", 1000, 2), ("b", 0, 1)):
            tx.execute(
                "INSERT INTO accounts (account_id, currency, balance, overdraft_limit, owner, "
                "status, version, opened_at, opened_position, updated_at, position) "
                "VALUES (?, 'EUR', ?, 0, NULL, 'open', ?, '2026-11-27T10:00:00.000000Z', 1, "
                "'2026-11-27T10:00:00.000000Z', 3)",
                (name, balance, version),
            )
        tx.execute(
            "INSERT INTO transactions (account_id, position, transaction_id, kind, amount, "
            "balance_after, counterparty, reference, recorded_at) VALUES ('a', 3, ?, "
            "'deposit', 1000, 1000, NULL, 'salary', '2026-11-27T10:00:00.000000Z')",
            (str(uuid.uuid4()),),
        )
        tx.execute("INSERT INTO readmodel_checkpoints (name, position) VALUES ('accounting', 3)")
    assert db.migrate(accounting.MIGRATIONS) == len(accounting.MIGRATIONS)
    with db.read() as r:
        account = queries.get_account(r, "a")
        assert account is not None
        assert (account.balance, account.available, account.pending_debits) == (1000, 1000, 0)
        (item,) = queries.history(r, "a", before=None, limit=10)
        assert (item.kind, item.amount, item.held, item.available_after) == (
            "deposit",
            1000,
            None,
            1000,
        )
        assert read_checkpoint(r, "accounting") == 3  # nothing to replay
    with db.transaction() as tx:
        assert accounting.AccountingProjection().apply(tx, hold(4, (3, 2))) is None
    with db.read() as r:
        a, b = queries.get_account(r, "a"), queries.get_account(r, "b")
        assert a is not None and b is not None
        assert (a.balance, a.available, b.pending_credits) == (1000, 600, 400)
        assert [
            h.transaction_id for h in queries.pending_transfers(r, "a", after=None, limit=5)
        ] == [TX]
        then = queries.balance_at_position(r, a, 3)
        assert (then.balance, then.available) == (1000, 1000)
    assert db.migrate(accounting.MIGRATIONS) == len(accounting.MIGRATIONS)  # nothing to do
    # A later page finds the hold in the table (the rule needs it to accept the post).
    with db.transaction() as tx:
        assert accounting.AccountingProjection().apply(tx, posted(6, (4, 3), 300)) is None
    with db.read() as r:
        a, b = queries.get_account(r, "a"), queries.get_account(r, "b")
        assert a is not None and b is not None
        assert (a.balance, a.available, b.balance, b.pending_credits) == (700, 700, 300, 0)
        assert queries.pending_transfers(r, "b", after=None, limit=5) == []


def test_a_statistics_model_of_version_2_keeps_its_counters_after_the_upgrade(
    db: ReadModelDB,
) -> None:
    db.migrate(statistics.MIGRATIONS[:2])
    with db.transaction() as tx:
        for name, balance in (("a", 1000), ("b", 0)):
            tx.execute(
                "INSERT INTO stats_accounts (account_id, currency, status, version, balance) "
                "VALUES (?, 'EUR', 'open', ?, ?)",
                (name, 2 if balance else 1, balance),
            )
        tx.execute(
            "INSERT INTO stats_currencies (currency, opened, closed, balance, deposits_count, "
            "deposits_volume, withdrawals_count, withdrawals_volume, transfers_count, "
            "transfers_volume) VALUES ('EUR', 2, 0, '1000', 1, '1000', 0, '0', 0, '0')"
        )
        tx.execute("INSERT INTO readmodel_checkpoints (name, position) VALUES ('statistics', 3)")
    assert db.migrate(statistics.MIGRATIONS) == len(statistics.MIGRATIONS)
    with db.read() as r:
        eur = stats_queries.currency_totals(r)["EUR"]
        assert (eur.opened, eur.balance, eur.deposits_volume, eur.holds_count) == (2, 1000, 1000, 0)
        assert stats_queries.applied_position(r) == 3  # kept: not replayed
    with db.transaction() as tx:
        assert statistics.StatisticsProjection().apply(tx, hold(4, (3, 2))) is None
    with db.read() as r:
        eur = stats_queries.currency_totals(r)["EUR"]
        assert (eur.holds_count, eur.pending_count, eur.pending_volume, eur.balance) == (
            1,
            1,
            400,
            1000,
        )
    with db.transaction() as tx:
        assert statistics.StatisticsProjection().apply(tx, posted(6, (4, 3), 300)) is None
    with db.read() as r:
        eur = stats_queries.currency_totals(r)["EUR"]
        assert (eur.pending_count, eur.pending_volume, eur.posted_volume, eur.balance) == (
            0,
            0,
            300,
            1000,
        )
        assert r.fetchall("SELECT * FROM stats_pending") == []
