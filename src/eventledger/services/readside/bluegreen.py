"""Blue/green rebuilds: a new version of a read model is built from the log beside the live
one, which keeps serving (and following the log) meanwhile; reads switch to the new version
atomically once it has caught up, and the old one is dropped. versions.py keeps the versions
and the control record; this module drives a build.

A build, by the one process holding the namespace's build lease:

1. `begin` records it (state `building`, the next version number) in the control tables;
2. the new version is created with whatever DDL the projection declares (its migrations), the
   operator's skip and park decisions are copied into it, and a second `ProjectionRunner`
   (`versioned=False`) replays the log into it from position 0, following it live after;
3. once the new version has applied the head seen when the build began and at least what the
   live one has, state `switching`: the live runner stops following, and one transaction makes
   the new version live if it is not behind the old one (else the build waits and retries);
   the runner then serves from the new version and follows the log into it;
4. the old version is dropped (on PostgreSQL once no instance serves from it any more).

A build whose new version halts on an event ends `failed` with the reason; its version is
dropped and the live one never stopped serving. A builder killed at any point loses its lease
with its process: the build is resumed (from the new version's own checkpoint) by the next
process that finds it active with the lease free, a restarted one included. Every instance
watches the control record: it moves to the live version when another switched (a query on
the retired version moves it at once), shows the build in `/health`, and drops leftovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventledger.eventstore.codec import format_time
from eventledger.services.readside.checkpoints import DECISION_COLUMNS, PARKED_COLUMNS
from eventledger.services.readside.db import ReadModelDB, ReadModelError, ReadModelUnavailable
from eventledger.services.readside.runner import ProjectionRunner
from eventledger.services.readside.versions import (
    Build,
    BuildInProgress,
    Lease,
    SwitchRefused,
    Versions,
    owned,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_INTERVAL = 1.0  # seconds between two records of a build's progress
SWITCH_ATTEMPTS = 50  # tries of a switch refused because the new version was behind


def _now() -> str:
    return format_time(datetime.now(UTC))


class BuildCancelled(Exception):
    """Raised in a builder whose build an operator cancelled (its record is no longer active)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the blue/green rebuild of version {version} was cancelled")


class BlueGreen:
    """The blue/green rebuilds of one runner's read model (see the module docstring)."""

    def __init__(self, runner: ProjectionRunner, *, watch_interval: float = 1.0) -> None:
        self.runner = runner
        self.build: Build | None = None  # the namespace's last build, as last read or made
        self.green: ProjectionRunner | None = None  # while this process builds
        self.switches = 0  # made by this process
        self.failures = 0
        self._watch_interval = watch_interval
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._started = 0.0  # monotonic start of the build this process runs
        self._lease: Lease | None = None  # the build lease, while this process builds
        # Every database call of this module runs here, so that `stop` can wait for the one
        # in flight: the runner closes the databases next, and a SQLite connection closed
        # while a thread uses it crashes the process.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bluegreen")

    @property
    def versions(self) -> Versions:
        versions = self.runner.versions
        if versions is None:
            raise RuntimeError("the runner is not started (or keeps no versions)")
        return versions

    @property
    def building_here(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def active(self) -> bool:
        return self.building_here or (self.build is not None and self.build.active)

    def to_json(self) -> dict[str, Any] | None:
        """The build as `/health` and `GET /admin/rebuild` show it (None: there never was
        one); while this process builds, the new version's live position and the head."""
        build = self.build
        if build is None:
            return None
        body = build.to_json()
        green = self.green
        if green is not None and build.active:
            body["position"] = green.position
            body["head"] = max(build.head, green.head_position or 0)
            if green.halted is not None:
                body["halted"] = green.halted.to_json()
        body["live_version"] = self.runner.version
        body["builder"] = self.building_here
        return body

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.runner.versions is None:
            return
        # In the background, at once: a build left by a crash is resumed and leftovers are
        # dropped without holding up the service's start.
        self._watch_task = asyncio.create_task(self._watch(), name=f"{self.runner.name}-bluegreen")

    async def stop(self) -> None:
        """Stop watching and building (a build goes on later, here or in another instance)."""
        for task in (self._watch_task, self._task):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        self._watch_task = self._task = None
        self._release_lease()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _io(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._executor.submit(call, *args))

    async def begin(self, *, requested_by: str) -> Build:
        """Start a build in this process; BuildInProgress when one is going on (anywhere)."""
        versions = self.versions
        if self.building_here:
            raise BuildInProgress(self.build)
        lease = await owned(versions.try_lease, _release, self._executor)
        if lease is None:
            raise BuildInProgress(self.build)
        try:
            runner = self.runner
            head = max(runner.head_position or 0, runner.position)
            build = await self._io(
                lambda: versions.begin_build(at=_now(), head=head, requested_by=requested_by)
            )
            # A version of that number left by a crash before it was recorded: start afresh.
            await self._io(self._drop_leftover, build.version)
        except BaseException:
            lease.release()
            raise
        log.warning(
            "%s: blue/green rebuild: building version %d beside version %d (head %d)",
            self.runner.name,
            build.version,
            build.from_version,
            build.head,
        )
        self._launch(build, lease)
        return build

    async def cancel(self, *, by: str) -> Build | None:
        """Cancel the active build (here or in another instance, whose builder stops at its
        next progress record); the old version stays live. None: no build was active."""
        error = f"cancelled by {by or 'an operator'}"
        build = await self._io(lambda: self.versions.cancel(at=_now(), error=error))
        if build is None:
            return None
        log.warning(
            "%s: blue/green rebuild of version %d %s", self.runner.name, build.version, error
        )
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            self.failures += 1
            await self._io(self.versions.drop, build.version)
        self.build = build
        return build

    def _drop_leftover(self, version: int) -> None:
        if version in self.versions.present():
            self.versions.drop(version)

    def _launch(self, build: Build, lease: Lease) -> None:
        # Released by the task, or by `stop` if the task is cancelled before it runs.
        # (Releases are plain calls, never awaited: a cancellation cannot skip them.)
        self._lease = lease
        self.build = build
        self._started = time.monotonic()
        self._task = asyncio.create_task(
            self._run(build), name=f"{self.runner.name}-build-v{build.version}"
        )

    # -- the build ---------------------------------------------------------------------------

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    async def _run(self, build: Build) -> None:
        try:
            await self._build(build)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, BuildCancelled) or (
                isinstance(exc, SwitchRefused) and "cancelled" in str(exc)
            ):
                log.warning("%s: %s", self.runner.name, exc)
                await self._fail(None)
            else:
                log.exception("%s: blue/green rebuild failed", self.runner.name)
                await self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                green, self.green = self.green, None
                if green is not None:
                    await green.stop()
            finally:
                self._release_lease()

    async def _build(self, build: Build) -> None:
        runner, versions = self.runner, self.versions
        await self._io(self._prepare, build.version)
        green = ProjectionRunner(
            runner.projection,
            stream_url=runner.stream_url,
            open_db=lambda: versions.open(build.version),
            batch_size=runner.batch_size,
            head_poll_interval=runner.head_poll_interval,
            stream_token=runner.stream_token,
            versioned=False,
        )
        self.green = green
        await green.start()
        recorded = time.monotonic()
        for attempt in range(SWITCH_ATTEMPTS + 1):
            # Caught up: the head seen when the build began, and what the live one has.
            while True:
                if green.halted is not None:
                    halt = green.halted
                    await self._fail(
                        f"version {build.version} halted at position {halt.position} "
                        f"({halt.type} on {halt.stream}): {halt.reason}"
                    )
                    return
                target = max(build.head, runner.position)
                if green.position >= target and green.lag == 0:
                    break
                if time.monotonic() - recorded >= PROGRESS_INTERVAL:
                    recorded = time.monotonic()
                    if not await self._record(replace(self._current(), updated_at=_now())):
                        raise BuildCancelled(build.version)
                await green.wait_for(target, 0.2)
            if not await self._record(
                replace(self._current(), state="switching", updated_at=_now())
            ):
                raise BuildCancelled(build.version)
            try:
                await self._switch(build, green)
            except SwitchRefused as exc:
                if not exc.behind and await self._io(versions.live) == build.version:
                    # Switched already (a try whose new version could not be opened after
                    # its commit): this process moves over as any instance does.
                    self.build = await self._io(versions.build)
                    await runner.adopt()
                    return
                if not exc.behind or attempt == SWITCH_ATTEMPTS:
                    raise
                await green.wait_for(runner.position, 1.0)  # others moved the live one on
                continue
            except ReadModelUnavailable:
                if attempt == SWITCH_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5)  # the database's condition: the switch is tried again
                continue
            return

    def _current(self) -> Build:
        build = self.build
        assert build is not None
        green = self.green
        if green is None:
            return build
        return replace(
            build, position=green.position, head=max(build.head, green.head_position or 0)
        )

    def _prepare(self, version: int) -> None:
        """The new version's tables (every migration the projection declares, so tables that
        a later version of the code adds come along) and the operator's decisions."""
        runner, versions = self.runner, self.versions
        db = versions.open(version)
        try:
            db.migrate(runner.projection.migrations)
            copy_decisions(runner.db, db, runner.name)
        finally:
            if db is not versions.base:
                db.close()

    async def _switch(self, build: Build, green: ProjectionRunner) -> None:
        runner, versions = self.runner, self.versions
        old_version = runner.version

        def switch(old: ReadModelDB) -> int:
            return versions.switch(
                old=old,
                old_version=old_version,
                new=green.db,
                new_version=build.version,
                at=_now(),
            )

        async def stop_green() -> None:
            self.green = None
            await green.stop()

        position = await runner.replace_version(build.version, switch, before_swap=stop_green)
        seconds = time.monotonic() - self._started
        self.switches += 1
        self.build = replace(
            build, state="done", position=position, finished_at=_now(), updated_at=_now()
        )
        log.warning(
            "%s: blue/green rebuild: version %d is live at position %d (%.1f s); dropping "
            "version %d",
            runner.name,
            build.version,
            position,
            seconds,
            old_version,
        )
        await self._cleanup()

    async def _fail(self, error: str | None) -> None:
        """End the build as failed (`error` None: an operator cancelled it, as recorded)."""
        self.failures += 1
        build = replace(
            self._current(), state="failed", error=error or "cancelled", finished_at=_now()
        )
        self.build = build
        if error is not None:
            log.error(
                "%s: blue/green rebuild of version %d FAILED: %s. Version %d goes on serving.",
                self.runner.name,
                build.version,
                error,
                self.runner.version,
            )
        green, self.green = self.green, None
        if green is not None:
            await green.stop()
        with suppress(ReadModelError):
            if error is not None:
                await self._record(replace(build, updated_at=_now()))
            self.build = await self._io(self.versions.build)
            await self._io(self.versions.drop, build.version)

    async def _record(self, build: Build) -> bool:
        """Store `build`; False when it is no longer active (cancelled)."""
        self.build = build
        try:
            return await self._io(self.versions.record, build)
        except ReadModelError:
            return True  # progress is shown again at the next record

    # -- every instance ---------------------------------------------------------------------

    async def _watch(self) -> None:
        said: str | None = None
        while True:
            try:
                await self._look()
            except Exception as exc:  # the watch must go on: it is how instances switch
                error = f"{type(exc).__name__}: {exc}"
                if error != said:  # once per distinct error, not every second
                    log.warning("%s: blue/green watch: %s", self.runner.name, error)
                said = error
            else:
                said = None
            await asyncio.sleep(self._watch_interval)

    async def _look(self) -> None:
        """Move to the live version, show the build, resume one whose builder is gone."""
        versions = self.versions
        if await self._io(versions.live) != self.runner.version:
            await self.runner.adopt()
        if self.building_here:
            return
        self.build = build = await self._io(versions.build)
        if build is None or not build.active:
            await self._cleanup()
            return
        lease = await owned(versions.try_lease, _release, self._executor)
        if lease is None:
            return  # its builder is at work
        try:
            build = await self._io(versions.build)
        except BaseException:
            lease.release()
            raise
        if build is None or not build.active or build.from_version != self.runner.version:
            lease.release()
            if build is not None and build.from_version != self.runner.version:
                await self.runner.adopt()
            return
        log.warning(
            "%s: resuming the blue/green rebuild of version %d (its builder is gone)",
            self.runner.name,
            build.version,
        )
        self._launch(replace(build, state="building"), lease)

    async def _cleanup(self) -> None:
        """Drop every version that is neither live nor being built (under the build lease,
        so never one another process is about to build). One still served elsewhere stays
        until a later look."""
        versions = self.versions
        if not await self._io(self._leftovers):
            return  # the usual case, without taking the lease
        lease = (
            None
            if self.building_here
            else await owned(versions.try_lease, _release, self._executor)
        )
        if lease is None and not self.building_here:
            return
        try:
            for version in await self._io(self._leftovers):
                dropped = await self._io(versions.drop, version)
                log.info(
                    "%s: version %d %s",
                    self.runner.name,
                    version,
                    "dropped" if dropped else "still in use elsewhere; dropped later",
                )
        finally:
            if lease is not None:
                lease.release()

    def _leftovers(self) -> list[int]:
        versions = self.versions
        build = versions.build()
        keep = {versions.live(), self.runner.version}
        if build is not None and build.active:
            keep.add(build.version)
        return [v for v in versions.present() if v not in keep]


def _release(lease: Lease | None) -> None:
    if lease is not None:
        lease.release()


def copy_decisions(source: ReadModelDB, target: ReadModelDB, name: str) -> None:
    """The operator's skips and parks of `name`, from `source` into `target` (those it lacks):
    the new version passes the same events the live one passed."""
    decisions_columns, parked = DECISION_COLUMNS, PARKED_COLUMNS
    with source.read() as session:
        decisions = session.fetchall(
            f"SELECT {decisions_columns} FROM readmodel_decisions WHERE name = ?", (name,)
        )
        envelopes = session.fetchall(
            f"SELECT {parked} FROM readmodel_parked WHERE name = ?", (name,)
        )
    with target.transaction() as tx:
        for rows, table, columns in (
            (decisions, "readmodel_decisions", decisions_columns),
            (envelopes, "readmodel_parked", parked),
        ):
            marks = ", ".join("?" * len(columns.split(",")))
            tx.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
                "ON CONFLICT (name, position) DO NOTHING",
                rows,
            )
