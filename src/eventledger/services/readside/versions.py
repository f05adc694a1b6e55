"""The versions of a read model, for blue/green rebuilds (bluegreen.py drives them).

A read model's *version* is a whole copy of its tables with its own checkpoint. Version 1 is
where the read model always was: the database file of its URL (SQLite) or the schema named
after its namespace (PostgreSQL). A blue/green rebuild builds version N+1 *beside* the live
one and then makes it live in one transaction; the old one is then dropped.

* SQLite (versions_sqlite.py): version N > 1 is a file next to the base file,
  `<stem>.<namespace>.vN<suffix>`; the control tables (`readmodel_live`, `readmodel_builds`)
  live in the base file.
* PostgreSQL (versions_postgres.py): version N > 1 is the schema `<namespace>__vN`; the
  control tables live in the schema `readmodel_control` (shared by the database's namespaces).

The control record names the live version and is the only truth: a process starting (or
restarted after a kill -9 anywhere) opens what it names, and versions it does not name are
leftovers, dropped. The switch writes it, the build's state and the old version's
`retired_to` (checkpoints.py) together, so a reader still on the old version learns the
switch from the checkpoint row it reads with every query.

Who may do what, across processes:

* one builder per namespace: a *lease* (an advisory lock on PostgreSQL, `flock` on SQLite),
  held by a connection (a file descriptor): a builder killed loses it at once, and another
  process (or the restarted one) resumes the build from the new version's own checkpoint;
* nobody drops a version another instance still serves from: on PostgreSQL every instance
  *holds* its live version with a shared advisory lock, and a drop takes the lock
  exclusively or waits for a later attempt. (A SQLite read model has one process.)
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from eventledger.services.readside.db import (
    ReadModelDB,
    ReadModelError,
    Session,
    SqliteReadModelDB,
)

BuildState = Literal["building", "switching", "done", "failed"]
ACTIVE: frozenset[str] = frozenset({"building", "switching"})
# The read side's own tables, in every version; the rest are the projection's.
CORE_TABLES = frozenset(
    {"readmodel_migrations", "readmodel_checkpoints", "readmodel_decisions", "readmodel_parked"}
)


class BuildInProgress(ReadModelError):
    """Raised when a blue/green rebuild is asked for while one is already going on."""

    def __init__(self, build: Build | None) -> None:
        where = "" if build is None else f" (version {build.version}: {build.state})"
        super().__init__(f"a blue/green rebuild is already in progress{where}")
        self.build = build


class SwitchRefused(ReadModelError):
    """Raised when a switch cannot be made now: the new version has not applied what the live
    one has (`behind`), or the live version is no longer the one the switch replaces."""

    def __init__(self, reason: str, *, behind: bool) -> None:
        super().__init__(reason)
        self.behind = behind


@dataclass(frozen=True, slots=True)
class Build:
    """A blue/green rebuild, as recorded: the version being built from the log beside the
    live one (`from_version`), how far it is, and how it ended."""

    version: int
    from_version: int
    state: BuildState
    started_at: str
    updated_at: str
    finished_at: str | None = None
    position: int = 0
    head: int = 0
    error: str | None = None
    requested_by: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "from_version": self.from_version,
            "state": self.state,
            "position": self.position,
            "head": self.head,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "requested_by": self.requested_by,
        }


_BUILD_COLUMNS = (
    "version, from_version, state, started_at, updated_at, finished_at, position, head, "
    "error, requested_by"
)


def _build_from_row(row: Sequence[Any]) -> Build:
    state: BuildState = (
        row[2] if row[2] in ("building", "switching", "done", "failed") else "failed"
    )
    return Build(
        int(row[0]), int(row[1]), state, row[3], row[4], row[5], int(row[6]), int(row[7]),
        row[8], row[9] or "",
    )  # fmt: skip


class Lease(ABC):
    """The right to build a namespace's next version, until `release` (or the process dies)."""

    @abstractmethod
    def release(self) -> None: ...


class Hold(ABC):
    """This process serves from a version: it is not dropped under it until `release`."""

    @abstractmethod
    def release(self) -> None: ...


class _NoHold(Hold):
    def release(self) -> None:
        pass


class Versions(ABC):
    """The versions of one namespace's read model, reached through its base database."""

    def __init__(self, base: ReadModelDB, name: str) -> None:
        self.base = base
        self.namespace = base.namespace
        self.name = name  # the projection's checkpoint name

    # -- the control record --------------------------------------------------------------

    @property
    @abstractmethod
    def _live_table(self) -> str: ...

    @property
    @abstractmethod
    def _builds_table(self) -> str: ...

    @abstractmethod
    def ensure_control(self) -> None:
        """Create the control tables when missing."""

    def live(self, session: Session | None = None) -> int:
        """The live version (1 until a blue/green rebuild has switched)."""
        if session is None:
            with self.base.read() as read:
                return self.live(read)
        row = session.fetchone(
            f"SELECT version FROM {self._live_table} WHERE namespace = ?", (self.namespace,)
        )
        return 1 if row is None else int(row[0])

    def build(self, session: Session | None = None) -> Build | None:
        """The last blue/green rebuild of this namespace (None: there never was one)."""
        if session is None:
            with self.base.read() as read:
                return self.build(read)
        row = session.fetchone(
            f"SELECT {_BUILD_COLUMNS} FROM {self._builds_table} WHERE namespace = ?",
            (self.namespace,),
        )
        return None if row is None else _build_from_row(row)

    def begin_build(self, *, at: str, head: int, requested_by: str) -> Build:
        """Record a new build of the next version; BuildInProgress when one is going on."""
        with self.base.transaction() as tx:
            self._lock_control(tx)
            last = self.build(tx)
            if last is not None and last.active:
                raise BuildInProgress(last)
            live = self.live(tx)
            version = max(live, last.version if last else 1) + 1
            build = Build(version, live, "building", at, at, head=head, requested_by=requested_by)
            tx.execute(f"DELETE FROM {self._builds_table} WHERE namespace = ?", (self.namespace,))
            tx.execute(
                f"INSERT INTO {self._builds_table} (namespace, {_BUILD_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.namespace, *_build_row(build)),
            )
            return build

    def record(self, build: Build) -> bool:
        """Store the build's progress or end, while it is active; False when it is not any
        more (an operator cancelled it): its builder stops."""
        with self.base.transaction() as tx:
            changed = tx.execute(
                f"UPDATE {self._builds_table} SET state = ?, updated_at = ?, finished_at = ?, "
                "position = ?, head = ?, error = ? WHERE namespace = ? AND version = ? "
                "AND state IN ('building', 'switching')",
                (
                    build.state,
                    build.updated_at,
                    build.finished_at,
                    build.position,
                    build.head,
                    build.error,
                    self.namespace,
                    build.version,
                ),
            )
            return changed == 1

    def cancel(self, *, at: str, error: str) -> Build | None:
        """End the active build as `failed` with `error`; None when none is active. A switch
        not committed yet is refused from then on (`_switched` checks the state)."""
        with self.base.transaction() as tx:
            self._lock_control(tx)
            build = self.build(tx)
            if build is None or not build.active:
                return None
            tx.execute(
                f"UPDATE {self._builds_table} SET state = 'failed', updated_at = ?, "
                "finished_at = ?, error = ? WHERE namespace = ? AND version = ?",
                (at, at, error, self.namespace, build.version),
            )
            return self.build(tx)

    def _lock_control(self, session: Session) -> None:  # noqa: B027 - optional hook
        """Keep two processes' control transactions apart (SQLite's writer lock does)."""

    # -- versions ------------------------------------------------------------------------

    @abstractmethod
    def open(self, version: int) -> ReadModelDB:
        """The database of `version` (the base itself for version 1), created when missing."""

    @abstractmethod
    def present(self) -> list[int]:
        """The versions that have tables (or files) now, live or not."""

    def drop(self, version: int) -> bool:
        """Drop a version that is not live; False when an instance still serves from it (or
        it is live: never dropped, whoever asks)."""
        if version == self.live():
            return False
        return self._drop(version)

    @abstractmethod
    def _drop(self, version: int) -> bool: ...

    @abstractmethod
    def switch(
        self, *, old: ReadModelDB, old_version: int, new: ReadModelDB, new_version: int, at: str
    ) -> int:
        """Make `new_version` live in place of `old_version`, in one transaction with the
        build's end and the old checkpoint's `retired_to`; the new version's position.
        SwitchRefused when the new version is behind the old one, or the old one is no
        longer live. The callers stop their own writers to both first."""

    @abstractmethod
    def try_lease(self) -> Lease | None:
        """The build lease of this namespace, or None when another process holds it."""

    def hold(self, version: int) -> Hold:
        """Keep `version` from being dropped while this process serves from it."""
        return _NoHold()

    def _switched(self, tx: Session, *, new_version: int, position: int, at: str) -> None:
        self._lock_control(tx)
        row = tx.fetchone(
            f"SELECT state FROM {self._builds_table} WHERE namespace = ? AND version = ?",
            (self.namespace, new_version),
        )
        if row is None or row[0] not in ACTIVE:
            raise SwitchRefused(f"the build of version {new_version} was cancelled", behind=False)
        tx.execute(
            f"INSERT INTO {self._live_table} (namespace, version) VALUES (?, ?) "
            "ON CONFLICT (namespace) DO UPDATE SET version = excluded.version",
            (self.namespace, new_version),
        )
        tx.execute(
            f"UPDATE {self._builds_table} SET state = 'done', updated_at = ?, finished_at = ?, "
            "position = ?, error = NULL WHERE namespace = ? AND version = ?",
            (at, at, position, self.namespace, new_version),
        )


def _build_row(b: Build) -> tuple[Any, ...]:
    return (
        b.version, b.from_version, b.state, b.started_at, b.updated_at, b.finished_at,
        b.position, b.head, b.error, b.requested_by,
    )  # fmt: skip


def control_ddl(live: str, builds: str) -> tuple[str, str]:
    return (
        f"CREATE TABLE IF NOT EXISTS {live} (namespace TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {builds} (
            namespace TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            from_version BIGINT NOT NULL,
            state TEXT NOT NULL,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT,
            position BIGINT NOT NULL,
            head BIGINT NOT NULL,
            error TEXT,
            requested_by TEXT NOT NULL
        )""",
    )


def checkpoint_position(session: Session, table: str, name: str, *, lock: str = "") -> int:
    row = session.fetchone(f"SELECT position FROM {table} WHERE name = ?{lock}", (name,))
    return 0 if row is None else int(row[0])


def retire(tx: Session, table: str, name: str, to: int) -> None:
    """Mark the checkpoint in `table` retired: version `to` is live in its place."""
    tx.execute(f"UPDATE {table} SET retired_to = ? WHERE name = ?", (to, name))


T = TypeVar("T")
_LEASES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readmodel-lease")


async def owned(
    call: Callable[[], T], release: Callable[[T], None], executor: Executor | None = None
) -> T:
    """`call()` in a worker thread, for something that must be released (a lease, a hold, an
    open database): when the caller is cancelled before it gets it, it is released as soon
    as it exists, instead of leaking with its connection."""
    future = (executor or _LEASES).submit(call)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:

        def abandon(done: Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                release(done.result())

        future.add_done_callback(abandon)
        raise


def versions_of(db: ReadModelDB, *, name: str) -> Versions:
    """The versions reached through `db`, the read model's base database."""
    if isinstance(db, SqliteReadModelDB):
        from eventledger.services.readside.versions_sqlite import SqliteVersions

        return SqliteVersions(db, name)
    from eventledger.services.readside.postgres import PostgresReadModelDB

    if isinstance(db, PostgresReadModelDB):
        from eventledger.services.readside.versions_postgres import PostgresVersions

        return PostgresVersions(db, name)
    raise TypeError(f"no blue/green versions for {type(db).__name__}")


__all__ = [
    "ACTIVE",
    "Build",
    "BuildInProgress",
    "Hold",
    "Lease",
    "SwitchRefused",
    "Versions",
    "owned",
    "versions_of",
]
