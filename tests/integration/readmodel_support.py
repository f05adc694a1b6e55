"""What the read-model tests share (no tests here): the real stream service on a fixed local
port that can be stopped and started again over the same store, a client that appends raw
account events to it, a read-model service run in-process with its lifespan, and the
fixtures of the service suites (a module takes them by name: `clock = support.clock`)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from eventledger.bootstrap import build_upcasters
from eventledger.domain.events import EVENT_TYPES
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.readside.db import ReadModelDB, SqliteReadModelDB, open_readmodel_db
from eventledger.services.readside.runner import ProjectionRunner
from eventledger.services.stream.app import create_app as create_stream_app


class Clock:
    """The stream store's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class StreamServer:
    """The stream service (memory store) served by uvicorn on one 127.0.0.1 port for its
    whole life, so that subscribers can reconnect to the same URL after a restart."""

    def __init__(self, store: EventStore | None = None, *, heartbeat_seconds: float = 15.0):
        self.store = store or MemoryEventStore(upcasters=build_upcasters())
        self.heartbeat_seconds = heartbeat_seconds
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._app: FastAPI | None = None

    async def start(self) -> None:
        async def open_store() -> EventStore:
            return self.store

        self._app = create_stream_app(
            open_store=open_store, heartbeat_seconds=self.heartbeat_seconds
        )
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it Nagle's algorithm and delayed ACKs add 40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        # Listening before uvicorn runs: connections wait in the backlog until it accepts,
        # so there is nothing to poll for.
        sock.listen(128)
        config = uvicorn.Config(self._app, lifespan="on", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    async def stop(self) -> None:
        if self._server is None or self._task is None or self._app is None:
            return
        self._app.state.begin_shutdown()  # ends every open subscription at once
        self._server.should_exit = True
        await self._task
        self._server = self._task = self._app = None

    async def __aenter__(self) -> StreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Ledger:
    """Appends raw account events through `POST /streams/account-<id>`."""

    def __init__(self, client: aiohttp.ClientSession, store: EventStore | None = None) -> None:
        self.client = client
        self.store = store

    async def behind_the_guard(self, stream: str, type: str, data: dict[str, Any]) -> int:
        """Write one event straight into the store, past the stream service's guard: the only
        way an event the account rules refuse (written before the rules, or behind the
        service's back) gets into the log. Its position."""
        assert self.store is not None
        known = EVENT_TYPES.get(type)
        event = NewEvent(
            uuid.uuid4(), type, data, schema_version=known.SCHEMA_VERSION if known else 1
        )
        result = await self.store.append(stream, expected_version=StreamState.ANY, events=[event])
        return result.positions[-1]

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(path, json=body) as response:
            assert response.status == 201, await response.text()
            answer: dict[str, Any] = await response.json()
            return answer

    async def version(self, stream: str) -> int:
        """The stream's current version (0: no such stream): account streams take appends
        at a numeric expected version only."""
        async with self.client.get(f"/streams/{stream}", params={"limit": "1"}) as response:
            if response.status == 404:
                return 0
            assert response.status == 200, await response.text()
            version: int = (await response.json())["version"]
            return version

    async def append(self, stream: str, *events: tuple[str, dict[str, Any]]) -> int:
        """Append events; the position of the last one."""
        answer = await self.post(
            f"/streams/{stream}",
            {
                "expected_version": await self.version(stream),
                "events": [_event(t, d) for t, d in events],
            },
        )
        positions: list[int] = answer["positions"]
        return positions[-1]

    async def open(self, account: str, currency: str = "EUR", overdraft: int = 0) -> int:
        data = {"account_id": account, "currency": currency, "overdraft_limit": overdraft}
        return await self.append(f"account-{account}", ("AccountOpened", {**data, "owner": None}))

    async def deposit(self, account: str, amount: int, reference: str | None = None) -> int:
        return await self.append(
            f"account-{account}", ("MoneyDeposited", _money(account, amount, reference))
        )

    async def withdraw(self, account: str, amount: int) -> int:
        return await self.append(f"account-{account}", ("MoneyWithdrawn", _money(account, amount)))

    async def transfer(self, source: str, target: str, amount: int) -> int:
        tx = str(uuid.uuid4())
        body = {
            "appends": [
                {
                    "stream": f"account-{source}",
                    "expected_version": await self.version(f"account-{source}"),
                    "events": [
                        _event(
                            "TransferSent",
                            {
                                "account_id": source,
                                "transaction_id": tx,
                                "to_account": target,
                                "amount": amount,
                                "reference": None,
                            },
                        )
                    ],
                },
                {
                    "stream": f"account-{target}",
                    "expected_version": await self.version(f"account-{target}"),
                    "events": [
                        _event(
                            "TransferReceived",
                            {
                                "account_id": target,
                                "transaction_id": tx,
                                "from_account": source,
                                "amount": amount,
                                "reference": None,
                            },
                        )
                    ],
                },
            ]
        }
        answer = await self.post("/batches", body)
        return int(max(p for r in answer["results"] for p in r["positions"]))

    async def close(self, account: str) -> int:
        return await self.append(f"account-{account}", ("AccountClosed", {"account_id": account}))


def _event(type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event to append, in the current schema version of its type (1 for unknown types)."""
    known = EVENT_TYPES.get(type)
    return {"type": type, "schema_version": known.SCHEMA_VERSION if known else 1, "data": data}


def _money(account: str, amount: int, reference: str | None = None) -> dict[str, Any]:
    return {
        "account_id": account,
        "transaction_id": str(uuid.uuid4()),
        "amount": amount,
        "reference": reference,
    }


@asynccontextmanager
async def ledger(server: StreamServer) -> AsyncIterator[Ledger]:
    async with aiohttp.ClientSession(base_url=server.url) as client:
        yield Ledger(client, server.store)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run a read-model app's lifespan and talk to it in-process."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


def runner_of(app: FastAPI) -> ProjectionRunner:
    runner: ProjectionRunner = app.state.runner
    return runner


async def caught_up(app: FastAPI, position: int, *, seconds: float = 10.0) -> None:
    runner = runner_of(app)
    assert await runner.wait_for(position, seconds), runner.health("test")


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


# -- the fixtures of the service suites ------------------------------------------------------

OpenDB = Callable[[], ReadModelDB]


def open_db_fixture(name: str) -> Any:
    """An `open_db` fixture that runs each test twice: on SQLite (`<name>.db`, namespace
    `name`) and on PostgreSQL (the test's own schema)."""

    @pytest.fixture(params=["sqlite", "postgres"])
    def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> OpenDB:
        if request.param == "sqlite":
            return lambda: SqliteReadModelDB(tmp_path / f"{name}.db", namespace=name)
        url: str = request.getfixturevalue("postgres_url")
        schema: str = request.getfixturevalue("pg_schema")
        return lambda: open_readmodel_db(url, namespace=schema)

    return open_db


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stream(clock: Clock) -> AsyncIterator[StreamServer]:
    store = MemoryEventStore(upcasters=build_upcasters(), clock=clock)
    async with StreamServer(store, heartbeat_seconds=1.0) as server:
        yield server


@pytest.fixture
async def log(stream: StreamServer) -> AsyncIterator[Ledger]:
    async with ledger(stream) as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The module's `app` fixture, serving."""
    async with serving(app) as c:
        yield c
