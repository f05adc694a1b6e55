"""The read models' database: a small synchronous adapter, one module per concern, two backends.

The async services call it through `asyncio.to_thread`. Statements use `?` placeholders and
SQL that SQLite (≥ 3.24) and PostgreSQL both accept, so a read model's SQL is written once.

* `ReadModelDB.transaction()` — a write transaction, committed when the block ends normally
  and rolled back when it raises. A projection writes its rows *and* its checkpoint in one
  such transaction, so a crash never applies an event twice nor skips one.
* `ReadModelDB.read()` — a read-only snapshot for queries.
* `ReadModelDB.migrate(migrations)` — versioned schema per namespace (`readmodel_migrations`).
* `open_readmodel_db(url, namespace=...)` picks the backend by URL scheme: `sqlite:///path`
  (tables of several namespaces may share one file) or `postgresql://…` (one schema per
  namespace, created when missing).

Errors (driver exceptions never leave this module):

ReadModelError
├── ReadModelUnavailable   the database cannot be reached, or failed a statement
└── CheckpointMoved        another writer moved the checkpoint under this one
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

Row = tuple[Any, ...]
Params = Sequence[Any]
Migration = Sequence[str]
"""One schema version: the statements that take the namespace from the previous version."""

NAMESPACE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ReadModelError(Exception):
    """Base class of every error the read model database raises."""


class ReadModelUnavailable(ReadModelError):
    """Raised when the read model database cannot be reached, times out or fails a statement.
    The transaction was rolled back: nothing of it was written. Safe to retry."""


class CheckpointMoved(ReadModelError):
    """Raised when a checkpoint is not where its writer expected it: another process applied
    events to (or reset) the same read model. The transaction is rolled back; reload it."""

    def __init__(self, name: str, expected: int) -> None:
        super().__init__(f"checkpoint {name!r} is no longer at position {expected}")
        self.name = name
        self.expected = expected


class Session(Protocol):
    """What a transaction or a read gives: statements with `?` placeholders, plain tuples."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


_CORE = (
    """CREATE TABLE IF NOT EXISTS readmodel_migrations (
        namespace TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (namespace, version)
    )""",
    """CREATE TABLE IF NOT EXISTS readmodel_checkpoints (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
)


class ReadModelDB(ABC):
    """A read model's database. Thread-safe; every method blocks (call it in a thread)."""

    def __init__(self, namespace: str) -> None:
        if not NAMESPACE.match(namespace):
            raise ValueError(f"invalid read model namespace {namespace!r}")
        self.namespace = namespace

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Session]:
        """A write transaction: committed when the block ends, rolled back when it raises."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Session]:
        """A read-only, consistent snapshot for queries."""

    @abstractmethod
    def close(self) -> None:
        """Release every connection."""

    def _lock_migrations(self, session: Session) -> None:  # noqa: B027 - optional hook
        """Keep concurrent `migrate` calls of several processes apart."""

    def migrate(self, migrations: Sequence[Migration]) -> int:
        """Bring the namespace to version `len(migrations)`; returns that version.
        Each version is applied once, in its own transaction, in order."""
        for attempt in range(3):
            try:
                with self.transaction() as tx:
                    for statement in _CORE:
                        tx.execute(statement)
                break
            except ReadModelUnavailable:
                # On PostgreSQL, two processes creating the same table at the same moment:
                # one of them gets a unique violation; the table exists on the next attempt.
                if attempt == 2:
                    raise
        for version, statements in enumerate(migrations, start=1):
            with self.transaction() as tx:
                self._lock_migrations(tx)
                done = tx.fetchone(
                    "SELECT 1 FROM readmodel_migrations WHERE namespace = ? AND version = ?",
                    (self.namespace, version),
                )
                if done is not None:
                    continue
                for statement in statements:
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO readmodel_migrations (namespace, version) VALUES (?, ?)",
                    (self.namespace, version),
                )
        return len(migrations)


# -- checkpoints --------------------------------------------------------------------------


def read_checkpoint(session: Session, name: str) -> int:
    """The position up to which projection `name` has applied the log (0: nothing yet)."""
    row = session.fetchone("SELECT position FROM readmodel_checkpoints WHERE name = ?", (name,))
    return 0 if row is None else int(row[0])


def claim_checkpoint(session: Session, name: str, expected: int) -> None:
    """Check, at the start of a write transaction, that the checkpoint is still at `expected`,
    and hold it so that no other writer can move it before this transaction ends.

    Why first: on PostgreSQL the row lock taken here serialises two processes projecting into
    the same schema; the loser sees the moved position and raises instead of applying twice.
    """
    if expected == 0:
        session.execute(
            "INSERT INTO readmodel_checkpoints (name, position) VALUES (?, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (name,),
        )
    changed = session.execute(
        "UPDATE readmodel_checkpoints SET position = position WHERE name = ? AND position = ?",
        (name, expected),
    )
    if changed != 1:
        raise CheckpointMoved(name, expected)


def write_checkpoint(session: Session, name: str, position: int) -> None:
    """Set the checkpoint; call it in the transaction that applied the events up to it."""
    session.execute(
        "INSERT INTO readmodel_checkpoints (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


# -- SQLite -------------------------------------------------------------------------------


class _SqliteSession:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadModelUnavailable(f"SQLite: {exc}") from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadModelUnavailable(f"SQLite: {exc}") from exc

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadModelUnavailable(f"SQLite: {exc}") from exc
        return row

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadModelUnavailable(f"SQLite: {exc}") from exc


class SqliteReadModelDB(ReadModelDB):
    """SQLite in WAL mode with `synchronous=FULL`: a committed checkpoint survives a power cut.
    One write connection behind a lock (SQLite has one writer anyway), one read connection per
    thread, so reads never wait for a write transaction."""

    def __init__(self, path: str | Path, *, namespace: str = "main") -> None:
        super().__init__(namespace)
        self.path = Path(path)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise ReadModelUnavailable("the read model database is closed")
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise ReadModelUnavailable(f"SQLite: cannot open {self.path}: {exc}") from exc
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._write_lock:
            conn = self._writer
            _sqlite_begin(conn, "BEGIN IMMEDIATE")
            try:
                yield _SqliteSession(conn)
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except sqlite3.Error as exc:
                conn.rollback()
                raise ReadModelUnavailable(f"SQLite: commit failed: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[Session]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        _sqlite_begin(conn, "BEGIN")
        try:
            yield _SqliteSession(conn)
        finally:
            conn.rollback()

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _sqlite_begin(conn: sqlite3.Connection, statement: str) -> None:
    try:
        conn.execute(statement)
    except sqlite3.ProgrammingError as exc:  # closed connection
        raise ReadModelUnavailable(f"SQLite: {exc}") from exc
    except sqlite3.Error as exc:
        raise ReadModelUnavailable(f"SQLite: {exc}") from exc


# -- PostgreSQL ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (a literal `%` doubles). Our SQL has no `?` or `%`
    inside string literals, so a plain replacement is exact."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresSession:
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Params = ()) -> int:
        with _translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _translated():
            self._cur.executemany(_to_pyformat(sql), rows)

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with _translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.fetchone()

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with _translated():
            self._cur.execute(_to_pyformat(sql), params)
            return self._cur.fetchall()


@contextmanager
def _translated() -> Iterator[None]:
    import psycopg

    try:
        yield
    except psycopg.Error as exc:  # PoolTimeout is a psycopg.OperationalError too
        raise ReadModelUnavailable(f"PostgreSQL: {exc}") from exc


class PostgresReadModelDB(ReadModelDB):
    """PostgreSQL through a psycopg 3 connection pool; the namespace is the schema (created when
    missing), put first on each connection's `search_path`."""

    def __init__(
        self, url: str, *, schema: str, min_size: int = 1, max_size: int = 8, timeout: float = 10
    ) -> None:
        super().__init__(schema)
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        set_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(set_path)
            conn.commit()

        self._timeout = timeout
        with _translated():
            _create_schema(url, schema, timeout)
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
            _translated(),
            self._pool.connection(timeout=self._timeout) as conn,
            conn.transaction(),
        ):
            yield _PostgresSession(conn)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with (
            _translated(),
            self._pool.connection(timeout=self._timeout) as conn,
            conn.transaction(),
        ):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _PostgresSession(conn)

    def _lock_migrations(self, session: Session) -> None:
        session.execute("LOCK TABLE readmodel_migrations IN EXCLUSIVE MODE")

    def close(self) -> None:
        self._pool.close()


def _create_schema(url: str, schema: str, timeout: float) -> None:
    import psycopg
    from psycopg import sql

    statement = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
    with (
        psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn,
        # A concurrent process may create it at the same moment: then it exists, as wanted.
        suppress(psycopg.errors.UniqueViolation),
    ):
        conn.execute(statement)


# -- choosing by URL ----------------------------------------------------------------------


def open_readmodel_db(url: str, *, namespace: str) -> ReadModelDB:
    """The read model database named by `url`: `sqlite:///path/file.db` (the file and its folder
    are created) or `postgresql://user@host:port/db` (schema `namespace`)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ValueError(f"a SQLite URL is sqlite:///path/to/file.db, not {url!r}")
        # As for the event store: what follows `sqlite://` is the path, so sqlite:///data/x.db
        # is /data/x.db; sqlite:////data/x.db (the SQLAlchemy spelling) means the same.
        path = Path("/" + url.removeprefix("sqlite://").lstrip("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteReadModelDB(path, namespace=namespace)
    if scheme in ("postgresql", "postgres"):
        return PostgresReadModelDB(url, schema=namespace)
    raise ValueError(f"unsupported read model URL {url!r}: use sqlite:/// or postgresql://")
