"""StreamClient coalescing over a real stream service (uvicorn, memory store): concurrent
appends share `POST /appends` requests, and each call still gets its own result or error."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import AppendResult, NewEvent, StreamAppend, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from eventledger.services.transaction.stream_client import (
    StreamClient,
    StreamUnavailable,
    WrongExpectedVersion,
)
from tests.integration.stream_support import running_server, until

pytestmark = pytest.mark.asyncio


class GatedStore(MemoryEventStore):
    """A memory store whose appends wait at a gate while it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super()._append_batch(appends)


@pytest.fixture
async def store() -> GatedStore:
    return GatedStore()


@pytest.fixture
async def url(store: GatedStore) -> AsyncIterator[str]:
    async def open_store() -> EventStore:
        return store

    async with running_server(create_app(open_store=open_store)) as base_url:
        yield base_url


def events(n: int = 1) -> list[NewEvent]:
    return [NewEvent(id=uuid.uuid4(), type="Noted", data={"n": i}) for i in range(n)]


def sid() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def test_one_call_alone_is_sent_at_once_in_one_request(url: str) -> None:
    async with StreamClient(url) as client:
        stream = sid()
        result = await client.append(
            stream, expected_version=StreamState.NO_STREAM, events=events(2)
        )
        assert (result.stream, result.first_version, result.last_version) == (stream, 1, 2)
        assert not result.replayed
        assert client.requests_sent == 1


async def test_concurrent_appends_share_requests_and_each_gets_its_own_result(
    url: str, store: GatedStore
) -> None:
    async with StreamClient(url) as client:
        streams = [sid() for _ in range(60)]
        results = await asyncio.gather(
            *(
                client.append(s, expected_version=0, events=events(i % 3 + 1))
                for i, s in enumerate(streams)
            )
        )
        for i, (stream, result) in enumerate(zip(streams, results, strict=True)):
            assert (result.stream, result.last_version) == (stream, i % 3 + 1)
        assert client.requests_sent < 20  # 60 calls, one request in flight at a time
        assert await store.head_position() == sum(i % 3 + 1 for i in range(60))


async def test_a_wrong_expected_version_fails_only_its_own_call(url: str) -> None:
    async with StreamClient(url) as client:
        late = sid()
        await client.append(late, expected_version=0, events=events(4))
        streams = [sid() for _ in range(10)]
        calls = [client.append(s, expected_version=0, events=events()) for s in streams]
        calls.insert(5, client.append(late, expected_version=2, events=events()))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = outcomes.pop(5)
        assert isinstance(refused, WrongExpectedVersion)
        assert (refused.stream, refused.actual_version) == (late, 4)
        assert all(isinstance(o, AppendResult) for o in outcomes)


async def test_a_re_sent_batch_is_answered_as_replayed(url: str) -> None:
    async with StreamClient(url) as client:
        batch = [StreamAppend(sid(), 0, tuple(events())), StreamAppend(sid(), 0, tuple(events()))]
        first, again = await asyncio.gather(client.append_batch(batch), client.append_batch(batch))
        replays = [r.replayed for r in (*first, *again)]
        assert sorted(replays) == [False, False, True, True]  # one wrote, the other replayed
        assert [r.positions for r in first] == [r.positions for r in again]


async def test_calls_wait_while_the_request_is_out_and_then_leave_as_one(
    url: str, store: GatedStore
) -> None:
    async with StreamClient(url) as client:  # one request in flight, the default
        store.gate.clear()
        calls = [
            asyncio.create_task(client.append(sid(), expected_version=0, events=events()))
            for _ in range(12)
        ]
        await until(lambda: store.waiting == 1)  # the first, alone
        assert client.requests_sent == 1
        store.gate.set()
        await asyncio.gather(*calls)
        assert client.requests_sent == 2  # the eleven others together


async def test_calls_wait_while_two_requests_are_out_and_then_leave_as_one(
    url: str, store: GatedStore
) -> None:
    async with StreamClient(url, max_in_flight=2) as client:
        store.gate.clear()
        calls = [
            asyncio.create_task(client.append(sid(), expected_version=0, events=events()))
            for _ in range(12)
        ]
        await until(lambda: store.waiting == 2)  # the first two, each alone
        assert client.requests_sent == 2
        store.gate.set()
        await asyncio.gather(*calls)
        assert client.requests_sent == 3  # the ten others together


async def test_a_call_cancelled_while_queued_is_not_sent(url: str, store: GatedStore) -> None:
    async with StreamClient(url, max_in_flight=2) as client:
        store.gate.clear()
        out = [
            asyncio.create_task(client.append(sid(), expected_version=0, events=events()))
            for _ in range(2)
        ]
        await until(lambda: store.waiting == 2)
        gone_stream, kept_stream = sid(), sid()
        gone = asyncio.create_task(client.append(gone_stream, expected_version=0, events=events()))
        kept = asyncio.create_task(client.append(kept_stream, expected_version=0, events=events()))
        await asyncio.sleep(0)  # both are queued now
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        store.gate.set()
        await asyncio.gather(*out, kept)
        assert await store.stream_version(gone_stream) == 0
        assert await store.stream_version(kept_stream) == 1
        assert client.requests_sent == 3


async def test_a_request_lost_in_transport_fails_each_of_its_calls_with_stream_unavailable() -> (
    None
):
    arrived = 0
    release = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await reader.readuntil(b"\r\n\r\n")
        arrived += 1
        await release.wait()
        writer.close()  # no answer: the connection is simply lost

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with StreamClient(f"http://127.0.0.1:{port}", max_in_flight=2) as client:
            calls = [
                asyncio.create_task(client.append(sid(), expected_version=0, events=events()))
                for _ in range(9)
            ]
            await until(lambda: arrived == 2)
            release.set()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, StreamUnavailable) for o in outcomes), outcomes
            assert len({id(o) for o in outcomes}) == 9  # each call its own exception
            assert client.requests_sent == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_without_coalescing_each_call_is_its_own_request(url: str) -> None:
    async with StreamClient(url, coalesce=False) as client:
        results: list[Any] = await asyncio.gather(
            *(client.append(sid(), expected_version=0, events=events()) for _ in range(5))
        )
        assert all(r.last_version == 1 for r in results)
        assert client.requests_sent == 0  # no POST /appends at all


async def test_a_call_cancelled_while_its_request_is_out_leaves_the_client_usable(
    url: str, store: GatedStore
) -> None:
    async with StreamClient(url) as client:
        store.gate.clear()
        alone = asyncio.create_task(client.append(sid(), expected_version=0, events=events()))
        await until(lambda: store.waiting == 1)
        alone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await alone
        store.gate.set()
        results = await asyncio.gather(
            *(client.append(sid(), expected_version=0, events=events()) for _ in range(5))
        )
        assert [r.last_version for r in results] == [1] * 5
