"""The PostgreSQL store across a real server restart.

A private PostgreSQL cluster (initdb in a temporary folder, its own port on 127.0.0.1) is
restarted with `pg_ctl restart -m fast` while writers append: every append the store
acknowledged is there afterwards, positions stay gapless, and the store (pool and LISTEN
connection) recovers by itself. The shared server of the other suites is never touched.

Needs the PostgreSQL server binaries and root (to run them as the `postgres` user); runs
wherever the PostgreSQL suites run, and is skipped with the reason elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest

from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import NewEvent, StreamState

PG_BIN = Path("/usr/lib/postgresql")


class PrivateServer:
    """A throwaway PostgreSQL cluster run as the `postgres` user."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.data = root / "data"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=on"
        log = str(self.root / "server.log")
        as_postgres(self.bindir / "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, *args)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def as_postgres(program: Path, *args: str) -> None:
    command = ["runuser", "-u", "postgres", "--", str(program), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def private_server(postgres_url: str) -> Iterator[PrivateServer]:
    # Only where the PostgreSQL suites run at all (postgres_url skips or fails otherwise).
    versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.exists() else []
    if not versions or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("a private PostgreSQL cluster needs the server binaries, root and runuser")
    bindir = versions[-1].parent
    root = Path(tempfile.mkdtemp(prefix="eventledger-pg-"))
    shutil.chown(root, "postgres")
    as_postgres(bindir / "initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres")
    server = PrivateServer(bindir, root, _free_port())
    server.pg_ctl("start", "-w")
    try:
        yield server
    finally:
        server.pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(root, ignore_errors=True)


async def test_no_acknowledged_append_is_lost_across_a_server_restart(
    private_server: PrivateServer,
) -> None:
    store = await PostgresEventStore.open(private_server.url, pool_timeout=2.0)
    acked: dict[UUID, int] = {}
    enough = asyncio.Event()
    retried = 0

    async def writer(n: int) -> None:
        nonlocal retried
        for _ in range(60):
            event = NewEvent(uuid4(), "Noted", {"writer": n})
            # Retried with the same id until acknowledged: a retry of an append that did
            # commit before the connection died is answered as a replay, never doubled.
            while True:
                try:
                    result = await store.append(
                        f"w-{n}", expected_version=StreamState.ANY, events=[event]
                    )
                    break
                except StoreUnavailable:
                    retried += 1
                    await asyncio.sleep(0.05)
            acked[event.id] = result.positions[0]
            if len(acked) >= 100:
                enough.set()

    try:
        writers = [asyncio.create_task(writer(n)) for n in range(8)]
        await asyncio.wait_for(enough.wait(), 30)
        await asyncio.to_thread(private_server.pg_ctl, "restart", "-m", "fast", "-w")
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        assert retried > 0, "the restart did not interrupt the load"

        # The listener reconnected: a waiter is woken by a new append.
        head = await store.head_position()
        waiting = asyncio.create_task(store.wait_for_events(head, timeout=10))
        await store.append(
            "after-restart",
            expected_version=StreamState.ANY,
            events=[NewEvent(uuid4(), "Noted", {})],
        )
        assert await waiting
    finally:
        await store.close()

    with psycopg.connect(private_server.url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id, position FROM eventledger.events").fetchall()
    stored = {row[0]: row[1] for row in rows}
    assert len(acked) == 8 * 60
    assert all(stored.get(event_id) == position for event_id, position in acked.items())
    positions = sorted(stored.values())
    assert positions == list(range(1, len(positions) + 1)), "positions have a gap"
    assert len(stored) == len(acked) + 1  # nothing doubled by the retries
