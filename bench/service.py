"""End to end over HTTP: concurrent appends through a running stream service (`--http`).

The peer has no HTTP server, so this workload is compared with our own store in-process
(SQLite, same shape, same run): the ratio is what HTTP, validation and JSON on the wire
cost. Start the services first (`make run`); the service's URL comes from the same
settings the CLI reads (EVENTLEDGER_STREAM_URL, or the local stream port).

The appends land in the running service's store, in streams named `bench-…`, which no
read model projects (they follow `account-…` streams only).
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any
from uuid import uuid4

import aiohttp

from bench.workloads import EVENT_TYPE, BenchError, Kind, Sample, Sizes, payload
from eventledger.config import load_settings

NAME = "eventledger over HTTP"


def stream_url() -> str:
    return load_settings().url("stream")


def unavailable(url: str) -> str | None:
    """Why the stream service at `url` cannot be benchmarked, or None when it answers."""

    async def health() -> str | None:
        try:
            timeout = aiohttp.ClientTimeout(total=3)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{url}/health") as response,
            ):
                body: dict[str, Any] = await response.json()
                if response.status != 200 or body.get("service") != "stream":
                    return f"{url}/health answered {response.status}: {body}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"no stream service at {url} ({type(exc).__name__}: {exc})"
        return None

    return asyncio.run(health())


def measure(kind: Kind, sizes: Sizes, url: str) -> Sample:
    if kind is not Kind.APPEND_MANY:
        raise ValueError(f"the HTTP workload is {Kind.APPEND_MANY}, not {kind}")
    return asyncio.run(_measure(url, sizes))


async def _measure(url: str, sizes: Sizes) -> Sample:
    writers = sizes.writers
    connector = aiohttp.TCPConnector(limit=writers)  # one keep-alive connection per writer
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        await _writers(session, writers, max(sizes.warmup // writers, 1))
        seconds = await _writers(session, writers, sizes.appends_many // writers)
    return Sample(sizes.appends_many, seconds)


async def _writers(session: aiohttp.ClientSession, writers: int, per_writer: int) -> float:
    async def write(stream: str) -> None:
        for version in range(per_writer):
            body = {
                "expected_version": version,
                "events": [{"id": str(uuid4()), "type": EVENT_TYPE, "data": payload(version)}],
            }
            async with session.post(f"/streams/{stream}", json=body) as response:
                if response.status != 201:
                    text = await response.text()
                    raise BenchError(f"POST /streams/{stream}: {response.status} {text[:300]}")
                await response.read()

    streams = [f"bench-{uuid4().hex}" for _ in range(writers)]
    start = perf_counter()
    await asyncio.gather(*(write(stream) for stream in streams))
    return perf_counter() - start
