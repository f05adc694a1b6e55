"""kill -9 of the accounting service while it catches up: the read model holds exactly the
events up to its checkpoint (nothing applied twice, nothing skipped), and a restart goes on
from there to the same balances as an uninterrupted run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.services.accounting.app import create_app
from eventledger.services.readside.db import ReadModelDB, open_readmodel_db
from tests.integration.readmodel_support import StreamServer, caught_up, serving

pytestmark = pytest.mark.slow

CHILD = """
import sys, uvicorn
from eventledger.services.accounting.app import create_app
from eventledger.services.readside.db import open_readmodel_db
stream_url, db_url, namespace, port = sys.argv[1:5]
app = create_app(
    stream_url=stream_url,
    open_db=lambda: open_readmodel_db(db_url, namespace=namespace),
    batch_size=100,
)
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""

ACCOUNTS = 40
EVENTS = 10_000


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(read model URL, namespace)"""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/accounting.db", "accounting"
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("pg_schema")
    return url, schema


@pytest.fixture
async def stream() -> AsyncIterator[StreamServer]:
    async with StreamServer() as server:
        yield server


async def fill(server: StreamServer) -> tuple[dict[str, list[tuple[int, int]]], int]:
    """Open accounts and deposit into them; per account the (position, amount) of each."""
    store = server.store
    moves: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i in range(ACCOUNTS):
        account = f"acc{i}"
        data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
        await store.append(
            f"account-{account}",
            expected_version=StreamState.NO_STREAM,
            events=[NewEvent(uuid.uuid4(), "AccountOpened", data, schema_version=2)],
        )
    for n in range(EVENTS - ACCOUNTS):
        account = f"acc{n % ACCOUNTS}"
        amount = n % 97 + 1
        data = {
            "account_id": account,
            "transaction_id": str(uuid.uuid4()),
            "amount": amount,
            "reference": None,
        }
        result = await store.append(
            f"account-{account}",
            expected_version=StreamState.ANY,
            events=[NewEvent(uuid.uuid4(), "MoneyDeposited", data)],
        )
        moves[account].append((result.positions[0], amount))
    return moves, await store.head_position()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def position_of(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
            position: int = (await r.json())["position"]
            return position
    except (aiohttp.ClientError, TimeoutError):
        return -1


async def reaches(session: aiohttp.ClientSession, url: str, position: int) -> None:
    """Until the service at `url` has applied `position` (polling: it is another process)."""
    async with asyncio.timeout(30):
        while True:
            if await position_of(session, url) >= position:
                return
            await asyncio.sleep(0.005)


def check_exactly_up_to_checkpoint(
    open_db: Callable[[], ReadModelDB], moves: dict[str, list[tuple[int, int]]]
) -> int:
    """Every account's balance and history hold exactly its events up to the checkpoint."""
    db = open_db()
    try:
        with db.read() as r:
            row = r.fetchone("SELECT position FROM readmodel_checkpoints WHERE name = 'accounting'")
            checkpoint = 0 if row is None else int(row[0])
            balances: dict[str, int] = {
                a: int(b) for a, b in r.fetchall("SELECT account_id, balance FROM accounts")
            }
            counts: dict[str, int] = {
                a: int(n)
                for a, n in r.fetchall(
                    "SELECT account_id, COUNT(*) FROM transactions GROUP BY account_id"
                )
            }
    finally:
        db.close()
    for account, items in moves.items():
        applied = [amount for position, amount in items if position <= checkpoint]
        assert balances.get(account, 0) == sum(applied), account
        assert counts.get(account, 0) == len(applied), account
    return checkpoint


async def test_a_kill_9_never_applies_an_event_twice_nor_skips_one(
    stream: StreamServer, db_url: tuple[str, str]
) -> None:
    url, namespace = db_url
    moves, head = await fill(stream)

    def open_db() -> ReadModelDB:
        return open_readmodel_db(url, namespace=namespace)

    checkpoints = []
    async with aiohttp.ClientSession() as session:
        for stop_after in (head // 5, head // 2):
            port = free_port()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                stream.url,
                url,
                namespace,
                str(port),
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            try:
                await reaches(session, f"http://127.0.0.1:{port}", stop_after)
            finally:
                child.send_signal(signal.SIGKILL)
                await child.wait()
            checkpoints.append(check_exactly_up_to_checkpoint(open_db, moves))
    assert checkpoints[0] >= head // 5
    assert checkpoints[1] >= checkpoints[0]

    app = create_app(stream_url=stream.url, open_db=open_db)
    async with serving(app):
        await caught_up(app, head, seconds=60)
    assert check_exactly_up_to_checkpoint(open_db, moves) == head
