"""The read models' database: a small synchronous adapter, two backends.

The async services call it through worker threads. Statements use `?` placeholders and SQL
that SQLite (≥ 3.24) and PostgreSQL both accept, so a read model's SQL is written once.

* `ReadModelDB.transaction()` — a write transaction, committed when the block ends normally
  and rolled back when it raises. A projection writes its rows *and* its checkpoint in one
  such transaction, so a crash never applies an event twice nor skips one.
* `Session.savepoint()` — a nested block that is undone alone when it raises.
* `ReadModelDB.read()` — a read-only snapshot for queries.
* `ReadModelDB.ping()` — a cheap check that the database can serve right now.
* `ReadModelDB.migrate(migrations)` — versioned schema per namespace (`readmodel_migrations`),
  after the read side's own tables (checkpoints.py).
* `open_readmodel_db(url, namespace=...)` picks the backend by URL scheme: `sqlite:///path`
  (tables of several namespaces may share one file) or `postgresql://…` (postgres.py: one
  schema per namespace, created when missing).

Errors (driver exceptions never leave this package):

ReadModelError
├── ReadModelUnavailable   the database cannot be reached or timed out: retrying may help
├── ReadModelDataError     a statement was refused for what it wrote (a constraint, a value
│                          out of range, text the database cannot hold): it will fail again
└── CheckpointMoved        another writer moved the checkpoint under this one
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

Row = tuple[Any, ...]
Params = Sequence[Any]
Migration = Sequence[str]
"""One schema version: the statements that take the namespace from the previous version."""

NAMESPACE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The read side's own tables are versioned under a name no namespace can have (a hyphen).
CORE_NAMESPACE = "readmodel-core"


class ReadModelError(Exception):
    """Base class of every error the read model database raises."""


class ReadModelUnavailable(ReadModelError):
    """Raised when the read model database cannot be reached, times out, or fails for a reason
    of its own (locked, disk full, I/O). The transaction was rolled back: nothing of it was
    written. Safe to retry."""


class ReadModelDataError(ReadModelError):
    """Raised when the database refuses a statement for what it writes or asks: a constraint,
    a number out of range, text it cannot store (NUL on PostgreSQL, lone surrogates), an
    unknown table. The transaction (or savepoint) was rolled back. Retrying fails the same."""


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

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> None:
        """Insert `rows` (values in the order of `columns`) into `table`, as fast as the
        database allows: an INSERT per row on SQLite, COPY on PostgreSQL. The same errors as
        `executemany`: a row that breaks a constraint is a `ReadModelDataError`."""
        ...

    def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested block: when it raises, what it wrote is undone and the transaction goes on
        (on PostgreSQL, even after a failed statement)."""
        ...


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

    def ping(self) -> None:
        """Raise ReadModelUnavailable unless the database answers a query now."""
        with self.read() as session:
            session.fetchone("SELECT 1")

    @abstractmethod
    def close(self) -> None:
        """Release every connection."""

    def _lock_migrations(self, session: Session) -> None:  # noqa: B027 - optional hook
        """Keep concurrent `migrate` calls of several processes apart."""

    def migrate(self, migrations: Sequence[Migration]) -> int:
        """Bring the read side's own tables and then the namespace to version
        `len(migrations)`; returns that version. Each version is applied once, in its own
        transaction, in order."""
        from eventledger.services.readside.checkpoints import CORE_MIGRATIONS, MIGRATIONS_TABLE

        for attempt in range(3):
            try:
                with self.transaction() as tx:
                    tx.execute(MIGRATIONS_TABLE)
                break
            except ReadModelError:
                # On PostgreSQL, two processes creating the same table at the same moment:
                # one of them gets a unique violation; the table exists on the next attempt.
                if attempt == 2:
                    raise
        self._apply_versions(CORE_NAMESPACE, CORE_MIGRATIONS)
        return self._apply_versions(self.namespace, migrations)

    def _apply_versions(self, namespace: str, migrations: Sequence[Migration]) -> int:
        for version, statements in enumerate(migrations, start=1):
            with self.transaction() as tx:
                self._lock_migrations(tx)
                done = tx.fetchone(
                    "SELECT 1 FROM readmodel_migrations WHERE namespace = ? AND version = ?",
                    (namespace, version),
                )
                if done is not None:
                    continue
                for statement in statements:
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO readmodel_migrations (namespace, version) VALUES (?, ?)",
                    (namespace, version),
                )
        return len(migrations)


# -- SQLite -------------------------------------------------------------------------------

# Primary result codes that say "this statement": SQL or schema error, too big, constraint,
# datatype mismatch, bind index out of range. Every other code is the database's condition.
_SQLITE_REPEATS = frozenset({1, 18, 19, 20, 25})


def sqlite_error(exc: BaseException) -> ReadModelError:
    """The read-model error for an exception of the sqlite3 module (or of binding a value)."""
    if isinstance(exc, (OverflowError, UnicodeError, sqlite3.DataError, sqlite3.IntegrityError)):
        return ReadModelDataError(f"SQLite: {exc}")
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        repeats = code & 0xFF in _SQLITE_REPEATS
        return (ReadModelDataError if repeats else ReadModelUnavailable)(f"SQLite: {exc}")
    if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)) and (
        "closed" not in str(exc)
    ):
        return ReadModelDataError(f"SQLite: {exc}")  # a value it cannot bind
    return ReadModelUnavailable(f"SQLite: {exc}")


_SQLITE_ERRORS = (sqlite3.Error, OverflowError, UnicodeError)


class _SqliteSession:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._depth = 0

    def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except _SQLITE_ERRORS as exc:
            raise sqlite_error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except _SQLITE_ERRORS as exc:
            raise sqlite_error(exc) from exc

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> None:
        marks = ", ".join("?" * len(columns))
        self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except _SQLITE_ERRORS as exc:
            raise sqlite_error(exc) from exc
        return row

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except _SQLITE_ERRORS as exc:
            raise sqlite_error(exc) from exc

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        finally:
            self._depth -= 1
        self.execute(f"RELEASE SAVEPOINT {name}")


class SqliteReadModelDB(ReadModelDB):
    """SQLite in WAL mode with `synchronous=NORMAL`: a commit is atomic and survives a crash of
    the process; a power cut may take back the last few commits, rows and checkpoint together,
    and the runner then applies those events again from the log. One write connection behind
    a lock (SQLite has one writer anyway), one read connection per thread, so reads never wait
    for a write transaction.

    Connections after the first never create the file: were it removed (or replaced) under a
    running service, a new connection would otherwise read an empty database and answer 404
    for every account; `ping` says so instead."""

    def __init__(self, path: str | Path, *, namespace: str = "main") -> None:
        super().__init__(namespace)
        self.path = Path(path)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect(create=True)
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int]:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ReadModelUnavailable(f"SQLite: {self.path}: {exc.strerror}") from exc
        return stat.st_dev, stat.st_ino

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        if self._closed:
            raise ReadModelUnavailable("the read model database is closed")
        target = str(self.path) if create else f"file:{quote(str(self.path))}?mode=rw"
        try:
            conn = sqlite3.connect(
                target, timeout=30.0, isolation_level=None, check_same_thread=False, uri=not create
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: a read model is derived from the log, which is durable, and
            # its rows and checkpoint commit together, so losing the last commits to a power
            # cut loses nothing (they are applied again) and never applies an event twice.
            # FULL makes every commit wait for an fsync (here 2-6 ms, p99 13-18 ms), which is
            # most of what a command takes to become visible to a read with X-Min-Position.
            conn.execute("PRAGMA synchronous=NORMAL")
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

    def ping(self) -> None:
        if self._closed:
            raise ReadModelUnavailable("the read model database is closed")
        if self._file_identity() != self._identity:
            raise ReadModelUnavailable(f"SQLite: {self.path} was replaced since it was opened")
        super().ping()

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _sqlite_begin(conn: sqlite3.Connection, statement: str) -> None:
    try:
        conn.execute(statement)
    except sqlite3.Error as exc:  # a closed connection, a locked or missing file
        raise ReadModelUnavailable(f"SQLite: {exc}") from exc


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
        from eventledger.services.readside.postgres import PostgresReadModelDB

        return PostgresReadModelDB(url, schema=namespace)
    raise ValueError(f"unsupported read model URL {url!r}: use sqlite:/// or postgresql://")
