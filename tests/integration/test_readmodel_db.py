"""The read-model database adapter: one contract, run against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventledger.services.readside.checkpoints import (
    claim_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from eventledger.services.readside.db import (
    CheckpointMoved,
    ReadModelDataError,
    ReadModelDB,
    ReadModelUnavailable,
    SqliteReadModelDB,
    open_readmodel_db,
)
from eventledger.services.readside.postgres import PostgresReadModelDB

NOTES_V1 = ("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL, n BIGINT NOT NULL)",)
NOTES_V2 = ("CREATE INDEX notes_by_n ON notes (n)", "ALTER TABLE notes ADD COLUMN tag TEXT")


class ReadModelDBContract:
    """What every backend guarantees. Subclasses provide the `db` fixture (a fresh one)."""

    @pytest.fixture
    def db(self) -> Iterator[ReadModelDB]:
        raise NotImplementedError

    @pytest.fixture
    def notes(self, db: ReadModelDB) -> ReadModelDB:
        db.migrate([NOTES_V1])
        return db

    def test_migrate_applies_each_version_once_in_order(self, db: ReadModelDB) -> None:
        assert db.migrate([NOTES_V1]) == 1
        assert db.migrate([NOTES_V1]) == 1  # nothing runs twice: CREATE TABLE would fail
        assert db.migrate([NOTES_V1, NOTES_V2]) == 2
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO notes (id, body, n, tag) VALUES (?, ?, ?, ?)", ("a", "x", 1, "t")
            )
        with db.read() as r:
            versions = r.fetchall(
                "SELECT version FROM readmodel_migrations WHERE namespace = ? ORDER BY version",
                (db.namespace,),
            )
        assert versions == [(1,), (2,)]

    def test_a_transaction_commits_when_its_block_ends(self, notes: ReadModelDB) -> None:
        with notes.transaction() as tx:
            assert tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "first", 1)) == 1
            tx.executemany("INSERT INTO notes VALUES (?, ?, ?)", [("b", "x", 2), ("c", "y", 3)])
        with notes.read() as r:
            assert r.fetchall("SELECT id, n FROM notes ORDER BY id") == [
                ("a", 1),
                ("b", 2),
                ("c", 3),
            ]
            assert r.fetchone("SELECT body FROM notes WHERE id = ?", ("a",)) == ("first",)
            assert r.fetchone("SELECT body FROM notes WHERE id = ?", ("zz",)) is None

    def test_a_transaction_that_raises_writes_nothing(self, notes: ReadModelDB) -> None:
        with pytest.raises(RuntimeError), notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "gone", 1))
            raise RuntimeError("boom")
        with notes.read() as r:
            assert r.fetchall("SELECT id FROM notes") == []
        with notes.transaction() as tx:  # and the database is usable afterwards
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "kept", 1))

    def test_reads_do_not_see_an_uncommitted_transaction(self, notes: ReadModelDB) -> None:
        inside = threading.Event()
        release = threading.Event()

        def writer() -> None:
            with notes.transaction() as tx:
                tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "pending", 1))
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert inside.wait(10)
            with notes.read() as r:
                assert r.fetchall("SELECT id FROM notes") == []
        finally:
            release.set()
            thread.join()
        with notes.read() as r:
            assert r.fetchall("SELECT id FROM notes") == [("a",)]

    def test_placeholders_and_literal_percent_signs(self, notes: ReadModelDB) -> None:
        with notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "100%", 1))
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("b", "?", 2))
        with notes.read() as r:
            assert r.fetchall("SELECT id FROM notes WHERE body LIKE '%\\%%' ESCAPE '\\'") == [
                ("a",)
            ]
            assert r.fetchall("SELECT id FROM notes WHERE body = ?", ("?",)) == [("b",)]

    def test_signed_64_bit_integers_round_trip(self, notes: ReadModelDB) -> None:
        with notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("max", "", 2**63 - 1))
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("min", "", -(2**63)))
        with notes.read() as r:
            assert r.fetchall("SELECT n FROM notes ORDER BY n") == [(-(2**63),), (2**63 - 1,)]

    def test_a_value_beyond_64_bits_is_refused_not_rounded(self, notes: ReadModelDB) -> None:
        with pytest.raises(ReadModelDataError), notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("big", "", 2**63))

    @pytest.mark.parametrize(
        ("statement", "params"),
        [
            ("INSERT INTO no_such_table VALUES (?)", (1,)),
            ("INSERT INTO notes VALUES (?, ?, ?)", ("a", "duplicate", 2)),
            ("INSERT INTO notes VALUES (?, ?, ?)", ("b", None, 2)),
            ("INSERT INTO notes VALUES (?, ?, ?)", ("c", "lone \ud800 surrogate", 2)),
            ("INSERT INTO notes VALUES (?, ?, ?)", ("d", "x", -(2**63) - 1)),
            ("SELECT nothing FROM notes", ()),
        ],
    )
    def test_errors_that_would_repeat_are_data_errors_not_unavailability(
        self, notes: ReadModelDB, statement: str, params: tuple[object, ...]
    ) -> None:
        with notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "", 1))
        with pytest.raises(ReadModelDataError), notes.transaction() as tx:
            tx.execute(statement, params)
        with notes.read() as r:  # rolled back, and the database is usable afterwards
            assert r.fetchall("SELECT id FROM notes") == [("a",)]

    def test_a_savepoint_undoes_only_its_own_writes_even_after_a_refused_statement(
        self, notes: ReadModelDB
    ) -> None:
        with notes.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "kept", 1))
            with pytest.raises(ReadModelDataError), tx.savepoint():
                tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("b", "undone", 2))
                tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "duplicate", 3))
            with tx.savepoint():
                tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("c", "kept too", 4))
        with notes.read() as r:
            assert r.fetchall("SELECT id FROM notes ORDER BY id") == [("a",), ("c",)]

    def test_upserts_with_on_conflict(self, notes: ReadModelDB) -> None:
        upsert = (
            "INSERT INTO notes (id, body, n) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body, n = excluded.n"
        )
        with notes.transaction() as tx:
            tx.executemany(upsert, [("a", "one", 1), ("a", "two", 2)])
        with notes.read() as r:
            assert r.fetchall("SELECT body, n FROM notes") == [("two", 2)]

    def test_a_checkpoint_starts_at_zero_and_moves_with_its_transaction(
        self, db: ReadModelDB
    ) -> None:
        db.migrate([])
        with db.read() as r:
            assert read_checkpoint(r, "p") == 0
        with db.transaction() as tx:
            claim_checkpoint(tx, "p", 0)
            write_checkpoint(tx, "p", 42)
        with pytest.raises(RuntimeError), db.transaction() as tx:
            claim_checkpoint(tx, "p", 42)
            write_checkpoint(tx, "p", 50)
            raise RuntimeError("crash before commit")
        with db.read() as r:
            assert read_checkpoint(r, "p") == 42
            assert read_checkpoint(r, "other") == 0

    def test_claiming_a_checkpoint_that_moved_fails(self, db: ReadModelDB) -> None:
        db.migrate([])
        with db.transaction() as tx:
            claim_checkpoint(tx, "p", 0)
            write_checkpoint(tx, "p", 7)
        with pytest.raises(CheckpointMoved), db.transaction() as tx:
            claim_checkpoint(tx, "p", 3)
        with pytest.raises(CheckpointMoved), db.transaction() as tx:
            claim_checkpoint(tx, "p", 0)

    def test_reads_from_many_threads_at_once(self, notes: ReadModelDB) -> None:
        with notes.transaction() as tx:
            tx.executemany(
                "INSERT INTO notes VALUES (?, ?, ?)", [(str(i), "", i) for i in range(100)]
            )
        sums: list[int] = []

        def reader() -> None:
            for _ in range(20):
                with notes.read() as r:
                    row = r.fetchone("SELECT SUM(n) FROM notes")
                    assert row is not None
                    sums.append(int(row[0]))

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sums == [4950] * 160


class TestSqliteReadModelDB(ReadModelDBContract):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[ReadModelDB]:
        db = SqliteReadModelDB(tmp_path / "rm.db", namespace="notes")
        yield db
        db.close()

    def test_it_runs_in_wal_mode_without_an_fsync_per_commit(self, db: ReadModelDB) -> None:
        # A read model is derived from the durable log: its commits are atomic (WAL), and a
        # power cut only takes back commits that are applied again (see SqliteReadModelDB).
        with db.read() as r:
            assert r.fetchone("PRAGMA journal_mode") == ("wal",)
            assert r.fetchone("PRAGMA synchronous") == (1,)  # NORMAL

    def test_namespaces_may_share_one_file(self, tmp_path: Path) -> None:
        first = SqliteReadModelDB(tmp_path / "shared.db", namespace="one")
        second = SqliteReadModelDB(tmp_path / "shared.db", namespace="two")
        try:
            first.migrate([NOTES_V1])
            second.migrate([("CREATE TABLE others (id TEXT PRIMARY KEY)",)])
            assert first.migrate([NOTES_V1]) == 1
        finally:
            first.close()
            second.close()

    def test_open_readmodel_db_creates_the_folder(self, tmp_path: Path) -> None:
        db = open_readmodel_db(f"sqlite:///{tmp_path}/deep/er/rm.db", namespace="accounting")
        try:
            assert isinstance(db, SqliteReadModelDB)
            assert db.path == tmp_path / "deep" / "er" / "rm.db"
            assert db.path.parent.is_dir()
        finally:
            db.close()

    def test_a_closed_database_is_unavailable(self, db: ReadModelDB) -> None:
        db.close()
        with pytest.raises(ReadModelUnavailable), db.transaction() as tx:
            tx.execute("SELECT 1")


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://relative.db", "file.db"])
def test_open_readmodel_db_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_readmodel_db(url, namespace="accounting")


def test_a_namespace_must_be_a_plain_identifier(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteReadModelDB(tmp_path / "x.db", namespace='bad"; DROP')


class TestPostgresReadModelDB(ReadModelDBContract):
    @pytest.fixture
    def db(self, postgres_url: str, pg_schema: str) -> Iterator[ReadModelDB]:
        db = open_readmodel_db(postgres_url, namespace=pg_schema)
        assert isinstance(db, PostgresReadModelDB)
        yield db
        db.close()

    def test_its_commits_do_not_wait_for_the_wal_flush(self, db: ReadModelDB) -> None:
        # As on SQLite: derived from the durable log, rows and checkpoint commit together.
        with db.transaction() as tx:
            assert tx.fetchone("SHOW synchronous_commit") == ("off",)

    def test_each_namespace_is_a_schema_of_its_own(
        self, postgres_url: str, pg_schema: str, db: ReadModelDB
    ) -> None:
        other = PostgresReadModelDB(postgres_url, schema=f"{pg_schema}_b")
        try:
            db.migrate([NOTES_V1])
            other.migrate([NOTES_V1])  # the same table name, another schema
            with db.transaction() as tx:
                tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "", 1))
            with other.read() as r:
                assert r.fetchall("SELECT id FROM notes") == []
        finally:
            other.close()
            import psycopg

            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}_b" CASCADE')

    def test_an_unreachable_server_is_unavailable(self) -> None:
        with pytest.raises(ReadModelUnavailable):
            PostgresReadModelDB(
                "postgresql://postgres@127.0.0.1:1/test", schema="nowhere", timeout=1
            )


def test_nul_in_text_is_a_data_error_on_postgresql(postgres_url: str, pg_schema: str) -> None:
    db = PostgresReadModelDB(postgres_url, schema=pg_schema)
    try:
        db.migrate([NOTES_V1])
        with pytest.raises(ReadModelDataError, match="NUL"), db.transaction() as tx:
            tx.execute("INSERT INTO notes VALUES (?, ?, ?)", ("a", "before\x00after", 1))
    finally:
        db.close()
