"""Helpers for the stream service tests: a real uvicorn server, a Server-Sent Events reader,
and stores that fail on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend


@asynccontextmanager
async def running_server(app: FastAPI, *, graceful_seconds: int = 5) -> AsyncIterator[str]:
    """Serve `app` with uvicorn (lifespan on) on a free 127.0.0.1 port; yield its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=graceful_seconds,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), within=10)
        if task.done():
            await task  # raises why it did not start
            raise RuntimeError("uvicorn stopped before it started")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until `condition()` holds, checking every few milliseconds, or fail. For flags
    that offer nothing to await (`uvicorn.Server.started`, a Prometheus gauge)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing to await on these flags
            await asyncio.sleep(0.005)


@dataclass
class Message:
    """One SSE message: its fields, or only comments (a heartbeat, the connect line)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)

    def envelope(self) -> dict[str, Any]:
        assert self.data is not None, "not an event"
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


class SSEReader:
    """Reads messages from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, *, within: float = 5.0) -> Message:
        message = Message()
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    return message
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comments.append(value)
                elif name == "data":
                    message.data = value if message.data is None else f"{message.data}\n{value}"
                elif name in ("id", "event"):
                    setattr(message, name, value)
        raise EOFError("the event stream ended")

    async def next_event(self, *, within: float = 5.0) -> Message:
        """The next message that is an event, skipping comments."""
        async with asyncio.timeout(within):
            while True:
                message = await self.next(within=within)
                if message.data is not None:
                    return message

    async def events(self, count: int, *, within: float = 10.0) -> list[Message]:
        async with asyncio.timeout(within):
            return [await self.next_event(within=within) for _ in range(count)]


class FlakyStore(MemoryEventStore):
    """A memory store whose database 'goes away' while `down` is True."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the database is unreachable (test)")

    async def ping(self) -> None:
        self._check()

    async def head_position(self) -> int:
        self._check()
        return await super().head_position()

    async def _append_batch(self, appends: Any) -> list[AppendResult]:
        self._check()
        batch: list[StreamAppend] = list(appends)
        return await super()._append_batch(batch)

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        self._check()
        return await super().wait_for_events(after, timeout)


class CountingStore(MemoryEventStore):
    """A memory store that counts reads of the global log."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.events_read = 0

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        self.reads += 1
        events = await super()._read_all(after, limit, types, stream_prefix)
        self.events_read += len(events)
        return events
