"""`POST /appends` on the stream service (in-process): many independent appends in one request,
each with its own outcome, handed to the store together; a bad envelope is refused whole."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.errors import StoreOutcomeUnknown
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import AppendResult, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app

pytestmark = pytest.mark.asyncio


class WatchedStore(MemoryEventStore):
    """A memory store that records how many appends were in the store at once, and can fail
    the commit of appends to chosen streams with an unknown outcome."""

    def __init__(self) -> None:
        super().__init__(upcasters=build_upcasters())
        self.inside = 0
        self.most_inside = 0
        self.calls = 0
        self.unknown_streams: set[str] = set()

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        self.calls += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await asyncio.sleep(0)  # a group commit waits here for the others to join
            if any(a.stream in self.unknown_streams for a in appends):
                raise StoreOutcomeUnknown("COMMIT failed (test)")
            return await super()._append_batch(appends)
        finally:
            self.inside -= 1


@pytest.fixture
async def store() -> WatchedStore:
    return WatchedStore()


@pytest.fixture
async def client(store: WatchedStore) -> AsyncIterator[httpx.AsyncClient]:
    async def open_store() -> EventStore:
        return store

    app = create_app(open_store=open_store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


def sid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def part(stream: str, expected: Any = "any", n: int = 1, **extra: Any) -> dict[str, Any]:
    events = [{"type": "Noted", "data": {"n": i}, **extra} for i in range(n)]
    return {"stream": stream, "expected_version": expected, "events": events}


def item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"appends": list(parts)}


async def post(c: httpx.AsyncClient, *items: Any) -> list[dict[str, Any]]:
    r = await c.post("/appends", json={"items": list(items)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    outcomes: list[dict[str, Any]] = r.json()["items"]
    assert len(outcomes) == len(items)
    return outcomes


async def test_each_item_is_answered_in_request_order_and_written_in_one_pass(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    streams = [sid() for _ in range(20)]
    outcomes = await post(client, *(item(part(s, "no_stream", n=2)) for s in streams))
    for stream, outcome in zip(streams, outcomes, strict=True):
        assert outcome["status"] == 201
        (result,) = outcome["results"]
        assert result["stream"] == stream
        assert (result["first_version"], result["last_version"]) == (1, 2)
    positions = sorted(p for o in outcomes for p in o["results"][0]["positions"])
    assert positions == list(range(1, 41))
    assert store.calls == 20
    assert store.most_inside == 20  # all handed to the store together, as a group commit needs


async def test_a_wrong_expected_version_fails_only_its_own_item(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    a, b, c = sid(), sid(), sid()
    await post(client, item(part(b, n=3)))
    outcomes = await post(client, item(part(a, 0)), item(part(b, 1)), item(part(c, "no_stream")))
    assert [o["status"] for o in outcomes] == [201, 409, 201]
    problem = outcomes[1]["problem"]
    assert problem["type"] == "wrong-expected-version"
    assert (problem["stream"], problem["expected_version"], problem["actual_version"]) == (b, 1, 3)
    assert problem["status"] == 409 and problem["title"] and problem["detail"]
    assert await store.stream_version(b) == 3
    assert await store.stream_version(a) == 1 == await store.stream_version(c)


async def test_an_item_is_atomic_like_a_batch(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    a, b = sid(), sid()
    (outcome,) = await post(client, item(part(a, 0), part(b, 5)))
    assert outcome["status"] == 409
    assert await store.stream_version(a) == 0  # the good half of the item is not written
    (outcome,) = await post(client, item(part(a, 0), part(b, 0)))
    assert outcome["status"] == 201
    assert [r["stream"] for r in outcome["results"]] == [a, b]


async def test_a_re_sent_item_answers_200_with_the_original_places(
    client: httpx.AsyncClient,
) -> None:
    stream, event_id = sid(), str(uuid.uuid4())
    first = item(part(stream, "no_stream", id=event_id))
    (created,) = await post(client, first)
    (again,) = await post(client, first)
    assert (created["status"], again["status"]) == (201, 200)
    assert again["results"] == created["results"]
    (elsewhere,) = await post(client, item(part(sid(), "any", id=event_id)))
    assert elsewhere["status"] == 409
    assert elsewhere["problem"]["type"] == "duplicate-event-id"


async def test_an_invalid_item_fails_alone_naming_its_fields(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    good = sid()
    outcomes = await post(
        client,
        item(part("bad name!")),
        item(part(good)),
        {"appends": [part(sid())], "extra": 1},
        "not an object",
        item({**part(sid()), "expected_version": "10"}),
    )
    assert [o["status"] for o in outcomes] == [422, 201, 422, 422, 422]
    fields = [[e["field"] for e in o["problem"]["errors"]] for o in outcomes if "problem" in o]
    assert fields[0] == ["items.0.appends.0.stream"]
    assert fields[1] == ["items.2.extra"]
    assert fields[2] == ["items.3"]
    assert fields[3] == ["items.4.appends.0.expected_version"]
    assert all(o["problem"]["type"] == "validation-error" for o in outcomes if "problem" in o)
    assert await store.head_position() == 1


async def test_the_account_guard_checks_each_item_on_its_own(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    account = f"g-{uuid.uuid4().hex[:10]}"
    opened = {
        "type": "AccountOpened",
        "schema_version": 2,
        "data": {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None},
    }
    withdrawn = {
        "type": "MoneyWithdrawn",
        "data": {
            "account_id": account,
            "transaction_id": str(uuid.uuid4()),
            "amount": 100,
            "reference": None,
        },
    }
    stream = f"account-{account}"
    (ok,) = await post(client, item({"stream": stream, "expected_version": 0, "events": [opened]}))
    assert ok["status"] == 201
    outcomes = await post(
        client,
        item({"stream": stream, "expected_version": 1, "events": [opened]}),  # opened twice
        item({"stream": stream, "expected_version": "any", "events": [withdrawn]}),
        item(part(sid())),
    )
    assert [o["status"] for o in outcomes] == [422, 422, 201]
    assert outcomes[0]["problem"]["type"] == "invalid-account-event"
    assert outcomes[0]["problem"]["stream"] == stream and outcomes[0]["problem"]["index"] == 0
    assert outcomes[0]["problem"]["rule"] == "opened-twice"
    assert outcomes[1]["problem"]["type"] == "expected-version-required"
    assert await store.stream_version(stream) == 1


async def test_an_item_whose_commit_failed_reports_outcome_unknown_alone(
    client: httpx.AsyncClient, store: WatchedStore
) -> None:
    doomed, fine = sid(), sid()
    store.unknown_streams.add(doomed)
    outcomes = await post(client, item(part(doomed)), item(part(fine)))
    assert [o["status"] for o in outcomes] == [503, 201]
    assert outcomes[0]["problem"]["type"] == "outcome-unknown"
    assert await store.stream_version(fine) == 1


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b'{"items": [], "items": []}', 400, "malformed-json"),
        (b"[1, 2]", 422, "validation-error"),
        (b'{"items": []}', 422, "validation-error"),
        (b'{"items": {}}', 422, "validation-error"),
        (b'{"items": [{}], "more": 1}', 422, "validation-error"),
        (b'{"items": [' + b"{}," * 1000 + b"{}]}", 422, "validation-error"),
        (b'{"items": ["' + b"x" * (1024 * 1024) + b'"]}', 413, "body-too-large"),
    ],
)
async def test_a_bad_envelope_is_refused_whole_and_nothing_is_written(
    client: httpx.AsyncClient, store: WatchedStore, body: bytes, status: int, kind: str
) -> None:
    r = await client.post("/appends", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == kind
    assert store.calls == 0


async def test_a_body_not_typed_json_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/appends", content=b'{"items": []}')
    assert r.status_code == 415
    assert r.json()["type"] == "unsupported-media-type"


async def test_the_openapi_document_shows_the_request_the_answer_and_examples(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/appends"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["examples"] and "items" in schema["properties"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"400", "413", "415", "422"} <= set(operation["responses"])
