"""A SQLite read model's versions (see versions.py): version 1 is the read model's own file,
version N > 1 the file `<stem>.<namespace>.vN<suffix>` beside it; the control tables live in
the base file; the build lease is an `flock` on `<file>.<namespace>.build-lock`."""

from __future__ import annotations

import contextlib
import fcntl
import re
from pathlib import Path
from typing import IO

from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB
from eventledger.services.readside.versions import (
    CORE_TABLES,
    Lease,
    SwitchRefused,
    Versions,
    checkpoint_position,
    control_ddl,
    retire,
)


class _FileLease(Lease):
    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        self._handle.close()  # closing the descriptor releases the flock


class SqliteVersions(Versions):
    base: SqliteReadModelDB
    _live_table = "readmodel_live"
    _builds_table = "readmodel_builds"

    def __init__(self, base: SqliteReadModelDB, name: str) -> None:
        super().__init__(base, name)
        self._path = base.path

    def path(self, version: int) -> Path:
        if version == 1:
            return self._path
        return self._path.with_name(
            f"{self._path.stem}.{self.namespace}.v{version}{self._path.suffix}"
        )

    def ensure_control(self) -> None:
        with self.base.transaction() as tx:
            for statement in control_ddl(self._live_table, self._builds_table):
                tx.execute(statement)

    def open(self, version: int) -> ReadModelDB:
        if version == 1:
            return self.base
        return SqliteReadModelDB(self.path(version), namespace=self.namespace)

    def present(self) -> list[int]:
        found = [1] if self._has_v1() else []
        pattern = re.compile(
            re.escape(f"{self._path.stem}.{self.namespace}.v") + r"([0-9]{1,9})"
            + re.escape(self._path.suffix) + "$"
        )  # fmt: skip
        for entry in self._path.parent.iterdir():
            match = pattern.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def _has_v1(self) -> bool:
        with self.base.read() as session:
            row = session.fetchone(
                "SELECT 1 FROM readmodel_migrations WHERE namespace = ? LIMIT 1",
                (self.namespace,),
            )
        return row is not None

    def _drop(self, version: int) -> bool:
        if version != 1:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path(version)}{suffix}").unlink(missing_ok=True)
            return True
        # Version 1 shares the base file with the control tables (and maybe other read
        # models): drop this namespace's tables, named by the live version's own schema.
        live = self.live()
        with contextlib.closing(self.open(live)) as db, db.read() as session:
            tables = [
                r[0]
                for r in session.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
        with self.base.transaction() as tx:
            for table in tables:
                if table not in CORE_TABLES and re.fullmatch(r"[a-z_][a-z0-9_]*", table):
                    tx.execute(f"DROP TABLE IF EXISTS {table}")
            # The checkpoint row stays, retired: a reader that still has the base file open
            # learns from it that it must move to the live version.
            for table in ("readmodel_decisions", "readmodel_parked"):
                tx.execute(f"DELETE FROM {table} WHERE name = ?", (self.name,))
            tx.execute("DELETE FROM readmodel_migrations WHERE namespace = ?", (self.namespace,))
        return True

    def switch(
        self, *, old: ReadModelDB, old_version: int, new: ReadModelDB, new_version: int, at: str
    ) -> int:
        with old.read() as session:
            blue = checkpoint_position(session, "readmodel_checkpoints", self.name)
        with new.read() as session:
            green = checkpoint_position(session, "readmodel_checkpoints", self.name)
        if green < blue:
            raise SwitchRefused(f"version {new_version} is at {green}, behind {blue}", behind=True)
        # The control record in the base file is the truth: once it commits, a restart opens
        # the new version whatever happens next. `retired_to` tells the old version's readers.
        with self.base.transaction() as tx:
            live = self.live(tx)
            if live != old_version:
                raise SwitchRefused(f"version {live} is live, not {old_version}", behind=False)
            self._switched(tx, new_version=new_version, position=green, at=at)
            if old_version == 1:
                retire(tx, "readmodel_checkpoints", self.name, new_version)
        if old_version != 1:
            with old.transaction() as tx:
                retire(tx, "readmodel_checkpoints", self.name, new_version)
        return green

    def try_lease(self) -> Lease | None:
        handle = open(f"{self._path}.{self.namespace}.build-lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return _FileLease(handle)
