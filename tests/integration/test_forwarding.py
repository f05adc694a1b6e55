"""`POST /appends` handed to the writing stream instance (services/stream/forwarding.py), and
the transaction service's stream client following the writer it names. Two real stream
services over memory stores; the second one's store names the first as the writer (as the
PostgreSQL writer lease would: tests/integration/test_postgres_lease.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.auth import AuthFileAuthenticator, secure_app
from eventledger.services.stream.app import create_app
from eventledger.services.stream.forwarding import WRITER_HEADER
from eventledger.services.transaction.stream_client import StreamClient
from tests.integration.stream_support import running_server

pytestmark = pytest.mark.asyncio


class HandingStore(MemoryEventStore):
    """A memory store whose instance hands its appends to `writer` (None: appends itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.writer: str | None = None

    def forward_to(self) -> str | None:
        return self.writer


async def serve(stack: AsyncExitStack, store: EventStore, auth_file: Path | None = None) -> str:
    async def open_store() -> EventStore:
        return store

    app = create_app(open_store=open_store)
    if auth_file is not None:
        secure_app(app, service="stream", authenticator=AuthFileAuthenticator(auth_file))
    return await stack.enter_async_context(running_server(app))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[str, MemoryEventStore, str, HandingStore]]:
    """(writer URL, writer's store, other URL, other's store), the other handing over."""
    async with AsyncExitStack() as stack:
        writer_store, other_store = MemoryEventStore(), HandingStore()
        writer = await serve(stack, writer_store)
        other = await serve(stack, other_store)
        other_store.writer = writer
        yield writer, writer_store, other, other_store


def item(stream: str, *, with_id: bool = True) -> dict[str, object]:
    event: dict[str, object] = {"type": "Noted", "data": {"n": 1}}
    if with_id:
        event["id"] = str(uuid.uuid4())
    return {"appends": [{"stream": stream, "expected_version": "any", "events": [event]}]}


def metric(text: str, outcome: str) -> float:
    prefix = f'eventledger_stream_forwarded_appends_total{{outcome="{outcome}"}} '
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_the_other_instance_hands_appends_to_the_writer_and_answers_its_answer(
    pair: tuple[str, MemoryEventStore, str, HandingStore],
) -> None:
    writer, writer_store, other, other_store = pair
    async with httpx.AsyncClient() as http:
        body = {"items": [item("s-1"), item("s-2")]}
        answer = await http.post(f"{other}/appends", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers[WRITER_HEADER] == writer
        assert [i["status"] for i in answer.json()["items"]] == [201, 201]
        assert await writer_store.head_position() == 2
        assert await other_store.head_position() == 0
        # A request that is no envelope is refused here, as it would be there.
        bad = await http.post(f"{other}/appends", json={"items": []})
        assert bad.status_code == 422 and bad.json()["type"].endswith("validation-error")
        assert WRITER_HEADER not in bad.headers
        metrics = (await http.get(f"{other}/metrics")).text
        assert metric(metrics, "answered") == 1 and metric(metrics, "appended_here") == 0


@pytest.mark.parametrize(
    "request_",
    [
        ({"items": [item("s-1", with_id=False)]}, {}),  # an id-less event: not safe to re-send
        ({"items": [item("s-1")]}, {"X-Eventledger-Forwarded": "1"}),  # handed over already
    ],
    ids=["event-without-id", "already-forwarded"],
)
async def test_what_cannot_be_handed_over_safely_is_appended_here(
    pair: tuple[str, MemoryEventStore, str, HandingStore],
    request_: tuple[dict[str, object], dict[str, str]],
) -> None:
    _, writer_store, other, other_store = pair
    body, headers = request_
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{other}/appends", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert WRITER_HEADER not in answer.headers
    assert await other_store.head_position() == 1
    assert await writer_store.head_position() == 0


async def test_a_writer_that_is_gone_or_refuses_leaves_the_append_here(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        other_store = HandingStore()
        other = await serve(stack, other_store)
        # Nobody listens there: unreachable.
        other_store.writer = "http://127.0.0.1:9"
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{other}/appends", json={"items": [item("s-1")]})
            assert answer.status_code == 200 and answer.json()["items"][0]["status"] == 201
            assert await other_store.head_position() == 1
            metrics = (await http.get(f"{other}/metrics")).text
            assert metric(metrics, "appended_here") == 1

    async with AsyncExitStack() as stack:
        # A writer with other tokens answers 401: never the answer to our client.
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"tokens": []}))
        writer_store, other_store = MemoryEventStore(), HandingStore()
        other_store.writer = await serve(stack, writer_store, auth_file=auth)
        other = await serve(stack, other_store)
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{other}/appends", json={"items": [item("s-1")]})
            assert answer.status_code == 200 and answer.json()["items"][0]["status"] == 201
        assert await other_store.head_position() == 1
        assert await writer_store.head_position() == 0


async def test_the_stream_client_sends_to_the_writer_its_instance_names_until_it_fails(
    pair: tuple[str, MemoryEventStore, str, HandingStore],
) -> None:
    writer, writer_store, other, other_store = pair
    new = [NewEvent(id=uuid.uuid4(), type="Noted", data={"n": 1})]
    async with StreamClient(other) as client:
        await client.append("c-1", expected_version=StreamState.NO_STREAM, events=new)
        assert client.writer_url == writer
        async with httpx.AsyncClient() as http:
            before = metric((await http.get(f"{other}/metrics")).text, "answered")
            for n in range(3):
                fresh = [NewEvent(id=uuid.uuid4(), type="Noted", data={"n": n})]
                await client.append("c-1", expected_version=n + 1, events=fresh)
            # Straight to the writer: its instance handed nothing more over.
            assert metric((await http.get(f"{other}/metrics")).text, "answered") == before
        assert await writer_store.stream_version("c-1") == 4
        assert await other_store.head_position() == 0

        # The writer goes away: the client goes back to its own instance, which appends.
        client.writer_url = "http://127.0.0.1:9"
        other_store.writer = None
        fresh = [NewEvent(id=uuid.uuid4(), type="Noted", data={"n": 9})]
        result = await client.append("c-2", expected_version=StreamState.NO_STREAM, events=fresh)
        assert result.first_version == 1
        assert client.writer_url is None
        assert await other_store.stream_version("c-2") == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"x" * (17 * 1024 * 1024)),  # no writer of ours answers this much
        (503, b'{"type": "store-unavailable"}'),
        (429, b'{"type": "rate-limited"}'),
    ],
    ids=["oversized", "503", "429"],
)
async def test_a_writer_answer_that_is_no_answer_leaves_the_append_here(
    status: int, body: bytes
) -> None:
    fake = FastAPI()

    @fake.post("/appends")
    async def appends() -> Response:
        return Response(body, status_code=status, media_type="application/json")

    async with AsyncExitStack() as stack:
        other_store = HandingStore()
        other_store.writer = await stack.enter_async_context(running_server(fake))
        other = await serve(stack, other_store)
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{other}/appends", json={"items": [item("s-1")]})
            assert answer.status_code == 200, answer.text[:300]
            assert answer.json()["items"][0]["status"] == 201
            assert WRITER_HEADER not in answer.headers
            metrics = (await http.get(f"{other}/metrics")).text
            assert metric(metrics, "appended_here") == 1
        assert await other_store.head_position() == 1
