"""The statistics read model's schema version 2 (each account's balance): a model made by
version 1 is emptied and replayed from the log, since its rows do not know the balances."""

from __future__ import annotations

from pathlib import Path

from eventledger.services.readside.db import SqliteReadModelDB
from eventledger.services.statistics.store import MIGRATIONS, NAME


def test_a_version_1_statistics_model_is_emptied_and_replayed_from_the_start(
    tmp_path: Path,
) -> None:
    db = SqliteReadModelDB(tmp_path / "statistics.db", namespace=NAME)
    try:
        db.migrate(MIGRATIONS[:1])
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO stats_accounts (account_id, currency, status, version) "
                "VALUES ('a', 'EUR', 'open', 3)"
            )
            tx.execute("INSERT INTO readmodel_checkpoints (name, position) VALUES (?, 42)", (NAME,))
            tx.execute(
                "INSERT INTO readmodel_checkpoints (name, position) VALUES ('accounting', 42)"
            )
        assert db.migrate(MIGRATIONS) == len(MIGRATIONS)
        with db.read() as r:
            assert r.fetchall("SELECT * FROM stats_accounts") == []
            assert r.fetchall("SELECT name, position FROM readmodel_checkpoints") == [
                ("accounting", 42)
            ]
            r.fetchall("SELECT balance FROM stats_accounts")  # the new column exists
    finally:
        db.close()
