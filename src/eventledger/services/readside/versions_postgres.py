"""A PostgreSQL read model's versions (see versions.py): version 1 is the schema named after
the namespace, version N > 1 the schema `<namespace>__vN`; the control tables live in the
schema `readmodel_control`. Locks are session advisory locks held by a connection of their
own, so they go with the process: the build lease, and each instance's shared hold on the
version it serves from (a drop takes it exclusively)."""

from __future__ import annotations

import contextlib
import zlib
from typing import TYPE_CHECKING, Any

from eventledger.services.readside.db import ReadModelDB, ReadModelError, Session
from eventledger.services.readside.versions import (
    Hold,
    Lease,
    SwitchRefused,
    Versions,
    checkpoint_position,
    control_ddl,
    retire,
)

if TYPE_CHECKING:
    import psycopg

    from eventledger.services.readside.postgres import PostgresReadModelDB

CONTROL_SCHEMA = "readmodel_control"
# Two-key advisory locks (a space of their own, apart from the event store's 64-bit keys).
_BUILD_LOCK = 0x454C4201
_VERSION_LOCK = 0x454C4202
_SWITCH_LOCK = 0x454C4203


def _key(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - 2**32 if value >= 2**31 else value


class _ConnectionLock(Lease, Hold):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()  # the session's advisory locks go with it


class PostgresVersions(Versions):
    base: PostgresReadModelDB
    _live_table = f"{CONTROL_SCHEMA}.readmodel_live"
    _builds_table = f"{CONTROL_SCHEMA}.readmodel_builds"

    def __init__(self, base: PostgresReadModelDB, name: str) -> None:
        super().__init__(base, name)
        self._url = base.url

    def schema(self, version: int) -> str:
        # Schema names are at most 63 bytes: a long namespace is cut, the version kept.
        return self.namespace if version == 1 else f"{self.namespace[:50]}__v{version}"

    def ensure_control(self) -> None:
        from eventledger.services.readside.postgres import create_schema

        create_schema(self._url, CONTROL_SCHEMA, 10)
        for attempt in range(3):
            try:
                with self.base.transaction() as tx:
                    for statement in control_ddl(self._live_table, self._builds_table):
                        tx.execute(statement)
                return
            except ReadModelError:
                # Two processes creating the same table at once: it exists on the next try.
                if attempt == 2:
                    raise

    def _lock_control(self, session: Session) -> None:
        session.execute(f"LOCK TABLE {self._builds_table} IN EXCLUSIVE MODE")

    def open(self, version: int) -> ReadModelDB:
        if version == 1:
            return self.base
        from eventledger.services.readside.postgres import PostgresReadModelDB

        return PostgresReadModelDB(self._url, schema=self.schema(version))

    def present(self) -> list[int]:
        prefix = f"{self.namespace[:50]}__v"
        with self.base.read() as session:
            rows = session.fetchall(
                "SELECT nspname FROM pg_namespace WHERE left(nspname, ?) = ?",
                (len(prefix), prefix),
            )
            v1 = session.fetchone(
                "SELECT 1 FROM pg_tables WHERE schemaname = ? LIMIT 1", (self.namespace,)
            )
        found = [1] if v1 is not None else []
        for (schema,) in rows:
            rest = str(schema)[len(prefix) :]
            if rest.isdigit() and len(rest) < 10:
                found.append(int(rest))
        return sorted(found)

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        from eventledger.services.readside.postgres import translated

        with translated():
            return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    def _try_lock(self, klass: int, key: str) -> _ConnectionLock | None:
        from eventledger.services.readside.postgres import translated

        conn = self._connect()
        try:
            with translated():
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (klass, _key(key))
                ).fetchone()
        except BaseException:
            conn.close()
            raise
        if row is None or not row[0]:
            conn.close()
            return None
        return _ConnectionLock(conn)

    def _drop(self, version: int) -> bool:
        from psycopg import sql

        from eventledger.services.readside.postgres import translated

        schema = self.schema(version)
        # Exclusive against every instance's shared hold: nobody serves from it any more.
        lock = self._try_lock(_VERSION_LOCK, schema)
        if lock is None:
            return False
        try:
            with translated():
                conn = lock._conn
                conn.execute("SET lock_timeout = '10s'")
                with conn.transaction():
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
                    if version == 1:  # the namespace's home stays (empty), as it was created
                        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        finally:
            lock.release()
        return True

    def switch(
        self, *, old: ReadModelDB, old_version: int, new: ReadModelDB, new_version: int, at: str
    ) -> int:
        blue_table = f'"{self.schema(old_version)}".readmodel_checkpoints'
        green_table = f'"{self.schema(new_version)}".readmodel_checkpoints'
        # One transaction over the three schemas of one database: the control record, the
        # new version's checkpoint and the old one's, rows locked so that no writer of another
        # instance moves the old checkpoint past the new one before the switch commits.
        with self.base.transaction() as tx:
            tx.execute(f"SELECT pg_advisory_xact_lock({_SWITCH_LOCK}, ?)", (_key(self.namespace),))
            live = self.live(tx)
            if live != old_version:
                raise SwitchRefused(f"version {live} is live, not {old_version}", behind=False)
            blue = checkpoint_position(tx, blue_table, self.name, lock=" FOR UPDATE")
            green = checkpoint_position(tx, green_table, self.name, lock=" FOR UPDATE")
            if green < blue:
                raise SwitchRefused(
                    f"version {new_version} is at {green}, behind {blue}", behind=True
                )
            self._switched(tx, new_version=new_version, position=green, at=at)
            retire(tx, blue_table, self.name, new_version)
        return green

    def try_lease(self) -> Lease | None:
        return self._try_lock(_BUILD_LOCK, self.namespace)

    def hold(self, version: int) -> Hold:
        from eventledger.services.readside.postgres import translated

        conn = self._connect()
        try:
            with translated():
                conn.execute(
                    "SELECT pg_advisory_lock_shared(%s, %s)",
                    (_VERSION_LOCK, _key(self.schema(version))),
                )
        except BaseException:
            conn.close()
            raise
        return _ConnectionLock(conn)
