"""The read models' database on PostgreSQL (see db.py for the contract): a psycopg 3 pool, one
schema per namespace, errors translated here and nowhere else.

Which errors repeat: psycopg's `DataError` (a value out of range, NUL in text),
`IntegrityError` (a constraint), `ProgrammingError` (an unknown table or column, a value it
cannot adapt) and a string it cannot encode are `ReadModelDataError`; every other error
(connection refused or lost, a pool timeout, the server shutting down) is
`ReadModelUnavailable`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from eventledger.services.readside.db import (
    Params,
    ReadModelDataError,
    ReadModelDB,
    ReadModelUnavailable,
    Row,
    Session,
)

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (a literal `%` doubles). Our SQL has no `?` or `%`
    inside string literals, so a plain replacement is exact."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresSession:
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Params = ()) -> int:
        with translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with translated():
            self._cur.executemany(_to_pyformat(sql), rows)

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> None:
        # COPY, not executemany: a catch-up inserts thousands of rows a transaction, and COPY
        # costs this process ~1 us a row against 12-16 (and the server half the time).
        with (
            translated(),
            self._cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.fetchone()

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.fetchall()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with translated(), self._conn.transaction():
            yield


@contextmanager
def translated() -> Iterator[None]:
    """psycopg's exceptions as read-model errors."""
    import psycopg

    try:
        yield
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
        raise ReadModelDataError(f"PostgreSQL: {exc}") from exc
    except psycopg.Error as exc:  # PoolTimeout is a psycopg.OperationalError too
        raise ReadModelUnavailable(f"PostgreSQL: {exc}") from exc
    except UnicodeError as exc:
        raise ReadModelDataError(f"PostgreSQL: {exc}") from exc


class PostgresReadModelDB(ReadModelDB):
    """PostgreSQL through a psycopg 3 connection pool; the namespace is the schema (created when
    missing), put first on each connection's `search_path`."""

    def __init__(
        self, url: str, *, schema: str, min_size: int = 1, max_size: int = 8, timeout: float = 10
    ) -> None:
        super().__init__(schema)
        self.url = url  # versions.py opens the read model's other versions beside this one
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        set_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(set_path)
            # As on SQLite (db.py): the read model is derived from the durable log, and rows
            # and checkpoint commit together, so a commit need not wait for its WAL flush; a
            # server crash takes back the last commits whole, and they are applied again.
            conn.execute("SET synchronous_commit TO off")
            conn.commit()

        self._timeout = timeout
        with translated():
            create_schema(url, schema, timeout)
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                configure=configure,
                timeout=timeout,
                open=False,
                name=f"readmodel-{schema}",
            )
            try:
                self._pool.open(wait=True, timeout=timeout)
            except BaseException:
                self._pool.close()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with (
            translated(),
            self._pool.connection(timeout=self._timeout) as conn,
            conn.transaction(),
        ):
            yield _PostgresSession(conn)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with (
            translated(),
            self._pool.connection(timeout=self._timeout) as conn,
            conn.transaction(),
        ):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _PostgresSession(conn)

    def ping(self) -> None:
        # A short wait for a connection: when the server is gone, the pool has none to give.
        with (
            translated(),
            self._pool.connection(timeout=min(self._timeout, 2.0)) as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT 1")

    def _lock_migrations(self, session: Session) -> None:
        session.execute("LOCK TABLE readmodel_migrations IN EXCLUSIVE MODE")

    def close(self) -> None:
        self._pool.close()


def create_schema(url: str, schema: str, timeout: float) -> None:
    """Create `schema` unless it exists."""
    import psycopg
    from psycopg import sql

    statement = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
    with (
        psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn,
        # A concurrent process may create it at the same moment: then it exists, as wanted.
        suppress(psycopg.errors.UniqueViolation),
    ):
        conn.execute(statement)
