"""`Session.insert_many`, the bulk insert a catch-up writes its history with (COPY on
PostgreSQL): the same rows and the same errors as an INSERT per row, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventledger.services.readside.db import ReadModelDataError, ReadModelDB, SqliteReadModelDB
from eventledger.services.readside.postgres import PostgresReadModelDB

NOTES = ("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT, n BIGINT NOT NULL, extra BIGINT)",)
# Text COPY has its own escapes: tabs, newlines, backslashes and `\N` must come back as sent.
AWKWARD = ("tab\there", "line\nbreak\r\n", "back\\slash \\N", "\\.", "€ \U0001f600", "")


class InsertManyContract:
    @pytest.fixture
    def db(self) -> Iterator[ReadModelDB]:
        raise NotImplementedError

    @pytest.fixture
    def notes(self, db: ReadModelDB) -> ReadModelDB:
        db.migrate([NOTES])
        return db

    def test_rows_come_back_exactly_as_inserted(self, notes: ReadModelDB) -> None:
        rows: list[tuple[str, str | None, int, int | None]]
        rows = [(f"k{i}", body, i, None) for i, body in enumerate(AWKWARD)]
        rows += [("none", None, -(2**63), 2**63 - 1)]
        with notes.transaction() as tx:
            tx.insert_many("notes", ("id", "body", "n", "extra"), rows)
        with notes.read() as r:
            got = r.fetchall("SELECT id, body, n, extra FROM notes ORDER BY n")
        assert sorted(got, key=lambda row: row[2]) == sorted(rows, key=lambda row: row[2])

    def test_columns_in_any_order_and_nothing_to_insert(self, notes: ReadModelDB) -> None:
        with notes.transaction() as tx:
            tx.insert_many("notes", ("n", "id"), [(7, "a")])
            tx.insert_many("notes", ("id", "n"), [])
        with notes.read() as r:
            assert r.fetchall("SELECT id, body, n FROM notes") == [("a", None, 7)]

    def test_a_duplicate_key_is_a_data_error_undone_by_the_savepoint(
        self, notes: ReadModelDB
    ) -> None:
        with notes.transaction() as tx:
            tx.insert_many("notes", ("id", "n"), [("a", 1)])
            with pytest.raises(ReadModelDataError), tx.savepoint():
                tx.insert_many("notes", ("id", "n"), [("b", 2), ("a", 3)])
            tx.insert_many("notes", ("id", "n"), [("c", 4)])  # the transaction goes on
        with notes.read() as r:
            assert r.fetchall("SELECT id, n FROM notes ORDER BY id") == [("a", 1), ("c", 4)]

    def test_a_null_in_a_not_null_column_is_a_data_error(self, notes: ReadModelDB) -> None:
        with pytest.raises(ReadModelDataError), notes.transaction() as tx:
            tx.insert_many("notes", ("id", "n"), [("a", None)])
        with notes.read() as r:
            assert r.fetchall("SELECT id FROM notes") == []


class TestSqliteInsertMany(InsertManyContract):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[ReadModelDB]:
        db = SqliteReadModelDB(tmp_path / "rm.db", namespace="notes")
        yield db
        db.close()


class TestPostgresInsertMany(InsertManyContract):
    @pytest.fixture
    def db(self, postgres_url: str, pg_schema: str) -> Iterator[ReadModelDB]:
        db = PostgresReadModelDB(postgres_url, schema=pg_schema)
        yield db
        db.close()

    def test_nul_in_text_is_a_data_error(self, notes: ReadModelDB) -> None:
        with pytest.raises(ReadModelDataError), notes.transaction() as tx:
            tx.insert_many("notes", ("id", "body", "n"), [("a", "before\x00after", 1)])
