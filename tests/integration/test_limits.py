"""Limits against abuse, in process: subscriber caps, pages bounded in bytes, one event's size,
per-caller rate limits, subscribers sharing their reads, and a shutdown that ends every
subscription at once. (The HTTP server's own bounds, on slow and oversized requests, are
tested over real processes in tests/e2e/test_abuse.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from eventledger.config import Limits
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.limits import (
    DEFAULT_RATE,
    Rate,
    RateLimiter,
    install_limits,
    rate_limiter_for,
)
from eventledger.services.stream.app import create_app
from eventledger.services.stream.pages import LOG_PAGE_BYTES
from eventledger.services.stream.schemas import MAX_EVENT_BYTES
from tests.integration.stream_support import CountingStore, SSEReader, running_server, until

pytestmark = pytest.mark.asyncio


class PrincipalFromHeader:
    """Stands for the auth middleware in these tests: names the caller from a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"x-test-principal":
                scope["eventledger.principal"] = value.decode()
        await self.app(scope, receive, send)


def new_app(store: EventStore | None = None, **kwargs: Any) -> FastAPI:
    the_store = store or MemoryEventStore()

    async def open_store() -> EventStore:
        return the_store

    app = create_app(open_store=open_store, **kwargs)
    app.add_middleware(PrincipalFromHeader)  # outermost, as the auth middleware is
    return app


@pytest.fixture
async def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
async def client(store: MemoryEventStore) -> AsyncIterator[httpx.AsyncClient]:
    app = new_app(store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


def as_caller(name: str) -> dict[str, str]:
    return {"x-test-principal": name}


async def append_direct(store: EventStore, stream: str, payloads: list[dict[str, Any]]) -> None:
    """Write straight to the store: events the HTTP API would refuse as too large were
    accepted before events were bounded, and readers must still get them."""
    events = [NewEvent(uuid.uuid4(), "Noted", data) for data in payloads]
    await store.append(stream, expected_version=StreamState.ANY, events=events)


def assert_problem(response: httpx.Response, status: int, type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == type and body["title"] and body["detail"], body
    return body


# -- subscriber caps ------------------------------------------------------------------------


READERS: list[SSEReader] = []  # a reader dropped too early would close its stream


async def open_subscription(
    http: httpx.AsyncClient, stack: AsyncExitStack, url: str, caller: str
) -> httpx.Response:
    response = await stack.enter_async_context(
        http.stream("GET", f"{url}/events/subscribe", headers=as_caller(caller))
    )
    if response.status_code == 200:
        reader = SSEReader(response)
        stack.callback(READERS.remove, reader)
        READERS.append(reader)
        first = await reader.next()
        assert first.comments and first.comments[0].startswith("connected")
    else:
        await response.aread()
    return response


async def test_subscribers_past_the_caps_are_refused_while_reads_and_appends_keep_working() -> None:
    app = new_app(max_subscribers=6, max_subscribers_per_principal=4)
    limits = httpx.Limits(max_connections=20)
    async with (
        running_server(app) as url,
        httpx.AsyncClient(timeout=10, limits=limits) as http,
        AsyncExitStack() as stack,
    ):
        alice = [await open_subscription(http, stack, url, "alice") for _ in range(4)]
        assert all(r.status_code == 200 for r in alice)
        refused = await open_subscription(http, stack, url, "alice")
        assert_problem(refused, 503, "too-many-subscribers")
        assert int(refused.headers["retry-after"]) > 0

        bob = [await open_subscription(http, stack, url, "bob") for _ in range(2)]
        assert all(r.status_code == 200 for r in bob)
        full = await open_subscription(http, stack, url, "carol")
        assert_problem(full, 503, "too-many-subscribers")

        append = await http.post(
            f"{url}/streams/s-{uuid.uuid4().hex[:8]}",
            json={"expected_version": "any", "events": [{"type": "Noted", "data": {}}]},
        )
        assert append.status_code == 201, append.text
        page = await http.get(f"{url}/events")
        assert page.status_code == 200 and page.json()["events"]
        assert (await http.get(f"{url}/health")).status_code == 200

        registry = app.state.metrics.registry
        assert registry.get_sample_value("eventledger_stream_subscriptions_refused_total") == 2

        await alice[0].aclose()  # one leaves: its place is free again
        gauge = app.state.subscriptions.gauge
        await until(lambda: gauge._value.get() == 5)
        again = await open_subscription(http, stack, url, "carol")
        assert again.status_code == 200


async def test_closing_the_subscriptions_ends_every_open_stream_at_once() -> None:
    """At shutdown every subscription ends now: those waiting for news, and those catching
    up for a client that reads nothing (their sends wait on a full socket buffer)."""
    store = MemoryEventStore()
    await append_direct(store, "notes", [{"n": i, "pad": "x" * 1000} for i in range(5000)])
    app = new_app(store, max_subscribers=100, max_subscribers_per_principal=100)
    limits = httpx.Limits(max_connections=60)
    async with (
        running_server(app) as url,
        httpx.AsyncClient(timeout=10, limits=limits) as http,
        AsyncExitStack() as stack,
    ):
        host, port = url.removeprefix("http://").split(":")
        stalled = []  # connections that never read: the server's sends to them block
        for _ in range(20):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /events/subscribe HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            stalled.append(writer)
            stack.callback(writer.close)
        for _ in range(30):
            await open_subscription(http, stack, url, "reader")
        gauge = app.state.subscriptions.gauge
        await until(lambda: gauge._value.get() == 50)

        async def read_to_end(reader: SSEReader) -> None:
            async for _ in reader._lines:
                pass

        app.state.begin_shutdown()
        async with asyncio.timeout(3):  # every stream ends, none waits for a timeout
            await asyncio.gather(*(read_to_end(r) for r in READERS))
            await until(lambda: gauge._value.get() == 0, within=3)


async def test_subscribers_catching_up_together_share_their_reads_of_the_log() -> None:
    store = CountingStore()
    await append_direct(store, "notes", [{"n": i, "pad": "x" * 100} for i in range(3000)])
    app = new_app(store, max_subscribers=50, max_subscribers_per_principal=50)
    async with running_server(app) as url, httpx.AsyncClient(timeout=20) as http:

        async def read_all() -> list[int]:
            positions: list[int] = []
            async with http.stream("GET", f"{url}/events/subscribe") as response:
                reader = SSEReader(response)
                while len(positions) < 3000:
                    message = await reader.next_event(within=10)
                    assert message.id is not None
                    positions.append(int(message.id))
            return positions

        alone = await read_all()
        reads_alone = store.reads
        together = await asyncio.gather(*(read_all() for _ in range(20)))
        assert alone == list(range(1, 3001))
        assert all(seen == alone for seen in together)
        # Twenty subscribers cost about what one does: pages are read once and shared.
        assert store.reads - reads_alone <= reads_alone + 40, (reads_alone, store.reads)


async def test_idle_subscribers_cost_the_store_nothing_between_heartbeats() -> None:
    store = CountingStore()
    await append_direct(store, "notes", [{"n": 1}])
    app = new_app(store)
    async with running_server(app) as url, httpx.AsyncClient(timeout=10) as http:
        params = {"heartbeat": "0.1"}
        async with AsyncExitStack() as stack:
            readers = []
            for _ in range(10):
                response = await stack.enter_async_context(
                    http.stream("GET", f"{url}/events/subscribe", params=params)
                )
                reader = SSEReader(response)
                assert (await reader.next_event()).id == "1"
                readers.append(reader)
            reads_before = store.reads
            for reader in readers:
                for _ in range(3):
                    assert (await reader.next(within=3)).comments == ["heartbeat"]
            assert store.reads == reads_before, "heartbeats alone read nothing"
            await append_direct(store, "notes", [{"n": 2}])
            for reader in readers:
                assert (await reader.next_event()).id == "2"


# -- pages bounded in bytes -----------------------------------------------------------------


async def test_a_page_of_big_events_is_cut_by_bytes_and_following_last_position_sees_each_once(
    store: MemoryEventStore, client: httpx.AsyncClient
) -> None:
    big = {"blob": "x" * 60_000}
    await append_direct(store, "big-1", [big] * 40)
    await append_direct(store, "small-1", [{"n": i} for i in range(10)])
    await append_direct(store, "big-2", [big] * 20)

    first = await client.get("/events", params={"limit": 1000})
    assert first.status_code == 200
    body = first.json()
    assert 0 < len(body["events"]) < 40, "a page stops at the byte bound"
    assert len(first.content) <= LOG_PAGE_BYTES + 1024
    assert body["last_position"] == body["events"][-1]["position"]

    seen: list[int] = []
    after = 0
    while True:
        page = (await client.get("/events", params={"after": after, "limit": 1000})).json()
        seen += [e["position"] for e in page["events"]]
        if not page["events"]:
            break
        after = page["last_position"]
    assert seen == list(range(1, 71)), "every event exactly once, in order"

    seen_filtered: list[int] = []
    after = 0
    for _ in range(20):
        response = await client.get("/events", params={"after": after, "stream_prefix": "big-"})
        page = response.json()
        seen_filtered += [e["position"] for e in page["events"]]
        if not page["events"]:
            break
        after = page["last_position"]
    assert seen_filtered == [*range(1, 41), *range(51, 71)]


async def test_an_event_larger_than_a_page_is_still_served_alone(
    store: MemoryEventStore, client: httpx.AsyncClient
) -> None:
    await append_direct(store, "huge", [{"blob": "y" * 1_500_000}, {"n": 2}])
    page = (await client.get("/events")).json()
    assert [e["position"] for e in page["events"]] == [1]
    assert page["last_position"] == 1
    stream = (await client.get("/streams/huge")).json()
    assert [e["stream_version"] for e in stream["events"]] == [1]
    assert stream["version"] == 2, "the stream's version tells the reader there is more"


async def test_a_stream_page_of_big_events_is_cut_by_bytes_and_its_version_says_more_follow(
    store: MemoryEventStore, client: httpx.AsyncClient
) -> None:
    await append_direct(store, "big-stream", [{"blob": "z" * 60_000}] * 30)
    versions: list[int] = []
    from_version = 1
    while True:
        response = await client.get(
            "/streams/big-stream", params={"from_version": from_version, "limit": 1000}
        )
        body = response.json()
        assert len(response.content) <= LOG_PAGE_BYTES + 1024
        assert body["version"] == 30
        versions += [e["stream_version"] for e in body["events"]]
        if not body["events"] or versions[-1] == body["version"]:
            break
        from_version = versions[-1] + 1
    assert versions == list(range(1, 31))


# -- one event's size ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["data", "metadata"])
async def test_an_event_over_the_size_limit_is_refused_and_nothing_is_written(
    client: httpx.AsyncClient, where: str
) -> None:
    payload = {"blob": "x" * MAX_EVENT_BYTES}
    event: dict[str, Any] = {"type": "Noted", "data": {}, where: payload}
    stream = f"s-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        f"/streams/{stream}", json={"expected_version": "any", "events": [{**event}]}
    )
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["field"].startswith("events.0")
    assert str(MAX_EVENT_BYTES) in body["detail"]
    batch = await client.post(
        "/batches",
        json={"appends": [{"stream": stream, "expected_version": "any", "events": [event]}]},
    )
    assert_problem(batch, 422, "validation-error")
    assert (await client.get(f"/streams/{stream}")).status_code == 404


async def test_an_event_just_under_the_size_limit_is_stored(client: httpx.AsyncClient) -> None:
    data = {"blob": ""}
    data["blob"] = "x" * (MAX_EVENT_BYTES - len(json.dumps(data, separators=(",", ":"))) - 2)
    response = await client.post(
        f"/streams/s-{uuid.uuid4().hex[:8]}",
        json={"expected_version": "any", "events": [{"type": "Noted", "data": data}]},
    )
    assert response.status_code == 201, response.text


# -- rate limits --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_requests_past_the_rate_limit_get_429_with_retry_after_per_caller() -> None:
    app = new_app()
    clock = FakeClock()
    app.state.rate_limiter = RateLimiter(Rate(per_second=1.0, burst=3), clock=clock)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        for _ in range(3):
            assert (await c.get("/events", headers=as_caller("alice"))).status_code == 200
        limited = await c.get("/events", headers=as_caller("alice"))
        assert_problem(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "1"

        assert (await c.get("/events", headers=as_caller("bob"))).status_code == 200
        assert (await c.get("/health", headers=as_caller("alice"))).status_code == 200

        clock.now += 1.0  # one token back
        assert (await c.get("/events", headers=as_caller("alice"))).status_code == 200
        assert (await c.get("/events", headers=as_caller("alice"))).status_code == 429


async def test_a_rate_is_read_per_second_or_per_minute_and_can_be_turned_off() -> None:
    assert Rate.parse("100/s") == Rate(100.0, 200)
    assert Rate.parse("600/min") == Rate(10.0, 20)
    assert Rate.parse("5", burst=1) == Rate(5.0, 1)
    assert Rate.parse("off") is None and Rate.parse("0") is None
    for bad in ("fast", "-1/s", "10/h", "1/s/s"):
        with pytest.raises(ValueError, match="N/s"):
            Rate.parse(bad)


async def test_the_rate_limit_is_off_on_loopback_and_on_elsewhere_unless_configured() -> None:
    assert rate_limiter_for(Limits(), "127.0.0.1") is None
    assert rate_limiter_for(Limits(), "::1") is None
    elsewhere = rate_limiter_for(Limits(), "0.0.0.0")
    assert elsewhere is not None and elsewhere.rate == DEFAULT_RATE
    configured = rate_limiter_for(Limits(rate_limit="5/s"), "127.0.0.1")
    assert configured is not None and configured.rate == Rate(5.0, 10)
    assert rate_limiter_for(Limits(rate_limit="off"), "10.0.0.1") is None


async def test_installed_limits_set_the_subscriber_caps_of_the_stream_service() -> None:
    app = new_app()
    install_limits(app, Limits(max_subscribers=7, max_subscribers_per_caller=3), "127.0.0.1")
    assert app.state.subscriptions.max_total == 7
    assert app.state.subscriptions.max_per_principal == 3
    assert app.state.rate_limiter is None
