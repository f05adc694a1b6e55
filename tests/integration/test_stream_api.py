"""The stream service over HTTP (API.md, "Stream service"), on the memory store.

Request/response tests run in-process (httpx ASGITransport, lifespan entered by hand);
subscriptions run against a real uvicorn server, since they stream.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from tests.integration.openapi_checks import openapi_defects
from tests.integration.stream_support import (
    CountingStore,
    FlakyStore,
    SSEReader,
    running_server,
    until,
)

pytestmark = pytest.mark.asyncio


def new_app(store: EventStore | None = None, **kwargs: Any) -> Any:
    the_store = store or MemoryEventStore()

    async def open_store() -> EventStore:
        return the_store

    return create_app(open_store=open_store, **kwargs)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = new_app()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


def event(type: str = "MoneyDeposited", **data: Any) -> dict[str, Any]:
    return {"type": type, "data": data or {"amount": 100}}


def sid() -> str:
    """A unique stream name per test: no cleanup needed."""
    return f"s-{uuid.uuid4().hex[:12]}"


async def append(
    c: httpx.AsyncClient, stream: str, *events: dict[str, Any], expected: Any = "any"
) -> httpx.Response:
    return await c.post(
        f"/streams/{stream}", json={"expected_version": expected, "events": list(events)}
    )


async def head(c: httpx.AsyncClient) -> int:
    r = await c.get("/health")
    assert r.status_code == 200
    position: int = r.json()["head_position"]
    return position


def assert_problem(r: httpx.Response, status: int, type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["type"] == type, body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# -- appending ------------------------------------------------------------------------------


async def test_an_append_to_a_new_stream_answers_201_with_versions_and_positions(
    client: httpx.AsyncClient,
) -> None:
    stream = sid()
    r = await append(client, stream, event(), event(), expected="no_stream")
    assert r.status_code == 201
    assert r.json() == {
        "stream": stream,
        "first_version": 1,
        "last_version": 2,
        "positions": [1, 2],
    }
    r = await append(client, stream, event(), expected=2)
    assert r.status_code == 201
    assert r.json() == {"stream": stream, "first_version": 3, "last_version": 3, "positions": [3]}


async def test_events_without_an_id_get_a_generated_uuid_and_given_ids_are_kept(
    client: httpx.AsyncClient,
) -> None:
    stream, given = sid(), str(uuid.uuid4())
    await append(client, stream, event(), {**event(), "id": given})
    r = await client.get(f"/streams/{stream}")
    first, second = r.json()["events"]
    assert uuid.UUID(first["id"]).version == 7  # eventstore/ids.py: time-ordered UUIDv7
    assert second["id"] == given


async def test_the_envelope_has_every_field_of_the_contract(client: httpx.AsyncClient) -> None:
    stream = sid()
    body = {
        "type": "AccountOpened",
        "schema_version": 2,
        "data": {"currency": "EUR", "big": 2**80, "nested": {"a": [1, 2.5, None, True]}},
        "metadata": {"correlation_id": "c-1"},
    }
    await append(client, stream, body)
    (envelope,) = (await client.get(f"/streams/{stream}")).json()["events"]
    assert set(envelope) == {
        "id",
        "stream",
        "type",
        "schema_version",
        "data",
        "metadata",
        "stream_version",
        "position",
        "recorded_at",
        "hash",
        "batch_end",
    }
    assert envelope["data"] == body["data"]  # integers of any size survive
    assert envelope["metadata"] == {"correlation_id": "c-1"}
    assert (envelope["stream"], envelope["type"], envelope["schema_version"]) == (
        stream,
        "AccountOpened",
        2,
    )
    assert envelope["stream_version"] == 1 and envelope["position"] >= 1
    assert envelope["recorded_at"].endswith("Z")


async def test_resending_the_same_events_is_idempotent_200_with_the_original_positions(
    client: httpx.AsyncClient,
) -> None:
    stream = sid()
    events = [{**event(), "id": str(uuid.uuid4())} for _ in range(3)]
    first = await append(client, stream, *events, expected="no_stream")
    await append(client, sid(), event())  # something else happens in between
    before = await head(client)
    again = await append(client, stream, *events, expected="no_stream")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert await head(client) == before


async def test_a_wrong_expected_version_is_a_409_with_the_actual_version_and_writes_nothing(
    client: httpx.AsyncClient,
) -> None:
    stream = sid()
    await append(client, stream, event(), event())
    before = await head(client)
    body = assert_problem(
        await append(client, stream, event(), expected=1), 409, "wrong-expected-version"
    )
    assert body["stream"] == stream
    assert body["expected_version"] == 1
    assert body["actual_version"] == 2
    assert await head(client) == before


@pytest.mark.parametrize(
    ("existing", "expected", "status"),
    [
        (0, "no_stream", 201),
        (1, "no_stream", 409),
        (0, "exists", 409),
        (1, "exists", 201),
        (0, "any", 201),
        (2, "any", 201),
        (0, 0, 201),
        (2, 2, 201),
        (2, 3, 409),
    ],
)
async def test_expected_version_states(
    client: httpx.AsyncClient, existing: int, expected: Any, status: int
) -> None:
    stream = sid()
    for _ in range(existing):
        await append(client, stream, event())
    r = await append(client, stream, event(), expected=expected)
    assert r.status_code == status, r.text
    if status == 409:
        assert r.json()["actual_version"] == existing


async def test_an_id_already_stored_elsewhere_is_a_409_duplicate_event_id(
    client: httpx.AsyncClient,
) -> None:
    taken = str(uuid.uuid4())
    await append(client, sid(), {**event(), "id": taken})
    before = await head(client)
    r = await append(client, sid(), {**event(), "id": taken})
    body = assert_problem(r, 409, "duplicate-event-id")
    assert body["event_id"] == taken
    assert await head(client) == before


async def test_the_same_id_twice_in_one_request_is_a_422_invalid_append(
    client: httpx.AsyncClient,
) -> None:
    twice = str(uuid.uuid4())
    before = await head(client)
    r = await append(client, sid(), {**event(), "id": twice}, {**event(), "id": twice})
    assert_problem(r, 422, "invalid-append")
    assert await head(client) == before


# -- batches --------------------------------------------------------------------------------


def batch_part(stream: str, expected: Any, *events: dict[str, Any]) -> dict[str, Any]:
    return {"stream": stream, "expected_version": expected, "events": list(events or [event()])}


async def test_a_batch_writes_every_append_and_answers_one_result_each(
    client: httpx.AsyncClient,
) -> None:
    a, b = sid(), sid()
    r = await client.post(
        "/batches",
        json={"appends": [batch_part(a, "no_stream", event(), event()), batch_part(b, 0)]},
    )
    assert r.status_code == 201
    first, second = r.json()["results"]
    assert (first["stream"], first["first_version"], first["last_version"]) == (a, 1, 2)
    assert (second["stream"], second["first_version"], second["last_version"]) == (b, 1, 1)
    assert second["positions"][0] == first["positions"][-1] + 1


async def test_a_batch_with_one_failed_check_is_a_409_and_writes_nothing(
    client: httpx.AsyncClient,
) -> None:
    a, b = sid(), sid()
    await append(client, b, event())
    before = await head(client)
    r = await client.post(
        "/batches", json={"appends": [batch_part(a, "no_stream"), batch_part(b, "no_stream")]}
    )
    body = assert_problem(r, 409, "wrong-expected-version")
    assert (body["stream"], body["actual_version"]) == (b, 1)
    assert await head(client) == before
    assert_problem(await client.get(f"/streams/{a}"), 404, "stream-not-found")


async def test_resending_a_whole_batch_is_idempotent_200(client: httpx.AsyncClient) -> None:
    parts = [batch_part(sid(), "no_stream", {**event(), "id": str(uuid.uuid4())}) for _ in range(2)]
    first = await client.post("/batches", json={"appends": parts})
    before = await head(client)
    again = await client.post("/batches", json={"appends": parts})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert await head(client) == before


async def test_a_batch_naming_one_stream_twice_is_a_422_invalid_append(
    client: httpx.AsyncClient,
) -> None:
    stream = sid()
    r = await client.post(
        "/batches", json={"appends": [batch_part(stream, "any"), batch_part(stream, "any")]}
    )
    assert_problem(r, 422, "invalid-append")


# -- reading a stream -----------------------------------------------------------------------


async def test_a_stream_reads_oldest_first_in_pages_with_its_current_version(
    client: httpx.AsyncClient,
) -> None:
    stream = sid()
    await append(client, stream, *[event(n=i) for i in range(1, 8)])
    r = await client.get(f"/streams/{stream}", params={"from_version": 3, "limit": 2})
    body = r.json()
    assert (body["stream"], body["version"]) == (stream, 7)
    assert [e["stream_version"] for e in body["events"]] == [3, 4]
    assert [e["data"]["n"] for e in body["events"]] == [3, 4]
    everything = (await client.get(f"/streams/{stream}")).json()
    assert [e["stream_version"] for e in everything["events"]] == list(range(1, 8))
    assert everything["version"] == 7
    past_the_end = (await client.get(f"/streams/{stream}", params={"from_version": 50})).json()
    assert past_the_end == {"stream": stream, "version": 7, "events": []}


async def test_reading_an_unknown_stream_is_a_404(client: httpx.AsyncClient) -> None:
    stream = sid()
    body = assert_problem(await client.get(f"/streams/{stream}"), 404, "stream-not-found")
    assert body["stream"] == stream


# -- reading the global log ----------------------------------------------------------------


async def test_the_log_pages_by_position_and_answers_where_to_continue(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(5):
        await append(client, sid(), event())
    page = (await client.get("/events", params={"after": 1, "limit": 3})).json()
    assert [e["position"] for e in page["events"]] == [2, 3, 4]
    assert page["last_position"] == 4
    rest = (await client.get("/events", params={"after": page["last_position"]})).json()
    assert [e["position"] for e in rest["events"]] == [5]
    assert rest["last_position"] == 5
    empty = (await client.get("/events", params={"after": 5})).json()
    assert empty == {"events": [], "last_position": 5}
    beyond = (await client.get("/events", params={"after": 99})).json()
    assert beyond == {"events": [], "last_position": 99}


async def test_the_log_filters_by_types_and_stream_prefix(client: httpx.AsyncClient) -> None:
    await append(client, "acct-1", event("Opened"), event("Deposited"))
    await append(client, "transfer-1", event("Deposited"), event("Withdrawn"))
    await append(client, "acct-2", event("Withdrawn"))

    async def read(**params: Any) -> list[tuple[str, str]]:
        r = await client.get("/events", params=params)
        return [(e["stream"], e["type"]) for e in r.json()["events"]]

    assert await read(type="Deposited") == [("acct-1", "Deposited"), ("transfer-1", "Deposited")]
    assert await read(type=["Opened", "Withdrawn"]) == [
        ("acct-1", "Opened"),
        ("transfer-1", "Withdrawn"),
        ("acct-2", "Withdrawn"),
    ]
    assert await read(stream_prefix="acct-") == [
        ("acct-1", "Opened"),
        ("acct-1", "Deposited"),
        ("acct-2", "Withdrawn"),
    ]
    assert await read(stream_prefix="acct-", type="Withdrawn") == [("acct-2", "Withdrawn")]


async def test_a_filtered_page_advances_past_events_that_do_not_match(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(4):
        await append(client, sid(), event("Other"))
    page = (await client.get("/events", params={"type": "Rare"})).json()
    assert page == {"events": [], "last_position": 4}
    await append(client, sid(), event("Rare"))
    await append(client, sid(), event("Other"))
    page = (await client.get("/events", params={"type": "Rare", "after": 4})).json()
    assert [e["position"] for e in page["events"]] == [5]
    assert page["last_position"] == 6
    full = (await client.get("/events", params={"type": "Other", "limit": 2})).json()
    assert full["last_position"] == 2  # a full page ends at its last event


async def test_an_event_is_found_by_its_id(client: httpx.AsyncClient) -> None:
    stream, event_id = sid(), str(uuid.uuid4())
    await append(client, stream, {**event(), "id": event_id})
    r = await client.get(f"/events/{event_id}")
    assert r.status_code == 200
    assert (r.json()["id"], r.json()["stream"]) == (event_id, stream)
    assert_problem(await client.get(f"/events/{uuid.uuid4()}"), 404, "event-not-found")
    assert_problem(await client.get("/events/not-a-uuid"), 422, "validation-error")


# -- operations -----------------------------------------------------------------------------


async def test_health_reports_the_head_position(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {
        "status": "ok",
        "service": "stream",
        "head_position": 0,
    }
    await append(client, sid(), event(), event())
    assert await head(client) == 2


async def test_an_unreachable_store_is_a_503_with_retry_after() -> None:
    store = FlakyStore()
    app = new_app(store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        await append(c, "acct-1", event())
        store.down = True
        for r in [
            await c.get("/health"),
            await append(c, "acct-1", event()),
            await c.post("/batches", json={"appends": [batch_part("acct-2", "any")]}),
            await c.get("/events", params={"type": "X"}),
            await c.get("/events/subscribe"),
        ]:
            assert_problem(r, 503, "store-unavailable")
            assert r.headers["retry-after"] == "1"
        store.down = False
        assert await head(c) == 1


async def test_metrics_count_appends_by_outcome_and_events(client: httpx.AsyncClient) -> None:
    stream = sid()
    await append(client, stream, event(), event())
    await append(client, stream, event(), expected=7)
    text = (await client.get("/metrics")).text
    assert "eventledger_stream_events_appended_total 2.0" in text
    assert 'eventledger_stream_appends_total{endpoint="stream",outcome="created"} 1.0' in text
    assert (
        'eventledger_stream_appends_total{endpoint="stream",outcome="wrong_expected_version"} 1.0'
        in text
    )
    assert "eventledger_stream_subscribers 0.0" in text


async def test_the_openapi_document_describes_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    expected = {
        ("/streams/{stream}", "post"),
        ("/streams/{stream}", "get"),
        ("/batches", "post"),
        ("/appends", "post"),
        ("/events", "get"),
        ("/events/subscribe", "get"),
        ("/events/{event_id}", "get"),
        ("/transactions/{transaction_id}/events", "get"),
        ("/admin/accounts/{account_id}/forget", "post"),
        ("/health", "get"),
    }
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    for path, method in expected:
        operation = paths[path][method]
        assert operation["summary"] and operation["description"], (path, method)
    for path in ("/streams/{stream}", "/batches", "/appends"):
        assert "requestBody" in paths[path]["post"]
    assert "text/event-stream" in paths["/events/subscribe"]["get"]["responses"]["200"]["content"]
    assert (await client.get("/docs")).status_code == 200


async def test_the_openapi_document_is_self_contained_and_documents_problem_json(
    client: httpx.AsyncClient,
) -> None:
    # Bodies with nested models (events in an append) once referred to `#/$defs/EventIn`,
    # which no client generator can resolve; problems were documented as application/json.
    assert openapi_defects((await client.get("/openapi.json")).json()) == []


# -- bad input: a 4xx problem, and nothing written -----------------------------------------

GOOD_EVENT = {"type": "MoneyDeposited", "data": {"amount": 1}}


def body(**fields: Any) -> bytes:
    return json.dumps({"expected_version": "any", "events": [GOOD_EVENT], **fields}).encode()


def with_event(**fields: Any) -> bytes:
    return body(events=[{**GOOD_EVENT, **fields}])


BAD_APPENDS: list[tuple[str, bytes, int, str]] = [
    ("float expected version", body(expected_version=1.0), 422, "validation-error"),
    ("string expected version", body(expected_version="1"), 422, "validation-error"),
    ("bool expected version", body(expected_version=True), 422, "validation-error"),
    (
        "exponent expected version",
        b'{"expected_version": 1e3, "events": [{"type": "A", "data": {}}]}',
        422,
        "validation-error",
    ),
    ("negative expected version", body(expected_version=-1), 422, "validation-error"),
    ("unknown expected state", body(expected_version="latest"), 422, "validation-error"),
    ("huge expected version", body(expected_version=2**64), 422, "validation-error"),
    ("missing expected version", json.dumps({"events": [GOOD_EVENT]}).encode(), 422,
     "validation-error"),
    ("missing events", json.dumps({"expected_version": 0}).encode(), 422, "validation-error"),
    ("no events", body(events=[]), 422, "validation-error"),
    ("too many events", body(events=[GOOD_EVENT] * 1001), 422, "validation-error"),
    ("events not a list", body(events={"a": 1}), 422, "validation-error"),
    ("unknown field", body(extra=1), 422, "validation-error"),
    ("unknown event field", with_event(colour="red"), 422, "validation-error"),
    ("missing type", body(events=[{"data": {}}]), 422, "validation-error"),
    ("missing data", body(events=[{"type": "A"}]), 422, "validation-error"),
    ("data a list", with_event(data=[1]), 422, "validation-error"),
    ("data a string", with_event(data="x"), 422, "validation-error"),
    ("data null", with_event(data=None), 422, "validation-error"),
    ("metadata a list", with_event(metadata=[]), 422, "validation-error"),
    ("type starting with a digit", with_event(type="1Deposited"), 422, "validation-error"),
    ("type with a space", with_event(type="Money Deposited"), 422, "validation-error"),
    ("type with a newline", with_event(type="Money\n"), 422, "validation-error"),
    ("empty type", with_event(type=""), 422, "validation-error"),
    ("type too long", with_event(type="A" * 129), 422, "validation-error"),
    ("id not a uuid", with_event(id="not-a-uuid"), 422, "validation-error"),
    ("id a number", with_event(id=5), 422, "validation-error"),
    ("schema version 0", with_event(schema_version=0), 422, "validation-error"),
    ("schema version a string", with_event(schema_version="1"), 422, "validation-error"),
    ("schema version a float", with_event(schema_version=1.0), 422, "validation-error"),
    ("schema version true", with_event(schema_version=True), 422, "validation-error"),
    ("body an array", b"[]", 422, "validation-error"),
    ("body a number", b"1", 422, "validation-error"),
    ("duplicate key", b'{"expected_version": 0, "expected_version": 1, "events": []}', 400,
     "malformed-json"),
    ("duplicate key in data",
     b'{"expected_version": 0, "events": [{"type": "A", "data": {"a": 1, "a": 2}}]}', 400,
     "malformed-json"),
    ("malformed json", b'{"expected_version": 0,', 400, "malformed-json"),
    ("empty body", b"", 400, "malformed-json"),
    ("NaN in data", b'{"expected_version": 0, "events": [{"type": "A", "data": {"x": NaN}}]}',
     400, "malformed-json"),
    ("Infinity in data",
     b'{"expected_version": 0, "events": [{"type": "A", "data": {"x": -Infinity}}]}', 400,
     "malformed-json"),
    ("float overflowing to infinity",
     b'{"expected_version": 0, "events": [{"type": "A", "data": {"x": 1e400}}]}', 400,
     "malformed-json"),
    ("integer of 5000 digits",
     b'{"expected_version": 0, "events": [{"type": "A", "data": {"x": ' + b"9" * 5000 + b"}}]}",
     400, "malformed-json"),
    ("not utf-8", b'{"expected_version": "\xff"}', 400, "malformed-json"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, 400, "malformed-json"),
    # Deep enough to parse but not to encode again (a 500 on SQLite, at about 950 levels).
    ("data nested 200 levels deep",
     b'{"expected_version": 0, "events": [{"type": "A", "data": {"x": '
     + b"[" * 200 + b"]" * 200 + b"}}]}", 400, "malformed-json"),
    ("2 MiB body", with_event(data={"pad": "x" * (2 * 1024 * 1024)}), 413, "body-too-large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "status", "type"),
    [case[1:] for case in BAD_APPENDS],
    ids=[case[0] for case in BAD_APPENDS],
)
async def test_a_bad_append_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, payload: bytes, status: int, type: str
) -> None:
    await append(client, "acct-seed", event())
    before = await head(client)
    r = await client.post(
        "/streams/acct-1", content=payload, headers={"content-type": "application/json"}
    )
    problem = assert_problem(r, status, type)
    if type == "validation-error":
        assert problem["errors"] and all(e["field"] for e in problem["errors"])
    assert await head(client) == before


async def test_a_body_that_is_not_json_by_content_type_is_a_415(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/streams/acct-1", content=body(), headers={"content-type": "text/plain"})
    assert_problem(r, 415, "unsupported-media-type")
    assert await head(client) == 0


@pytest.mark.parametrize(
    "name", ["-starts-with-dash", "_underscore", "a b", "caf\u00e9", "a" * 129, "semi;colon"]
)
async def test_a_bad_stream_name_is_a_422_invalid_stream_name(
    client: httpx.AsyncClient, name: str
) -> None:
    assert_problem(await append(client, name, event()), 422, "invalid-stream-name")
    assert_problem(await client.get(f"/streams/{name}"), 422, "invalid-stream-name")
    assert await head(client) == 0


async def test_a_stream_name_with_a_slash_matches_no_route(client: httpx.AsyncClient) -> None:
    assert_problem(await append(client, "a%2Fb", event()), 404, "not-found")
    assert await head(client) == 0


BAD_BATCHES: list[tuple[str, Any, int, str]] = [
    ("no appends", {"appends": []}, 422, "validation-error"),
    ("too many appends",
     {"appends": [batch_part(f"s-{i}", "any") for i in range(101)]}, 422, "validation-error"),
    ("bad stream name", {"appends": [batch_part("-bad", "any")]}, 422, "validation-error"),
    ("missing stream", {"appends": [{"expected_version": 0, "events": [GOOD_EVENT]}]}, 422,
     "validation-error"),
    ("string expected version", {"appends": [batch_part("s-1", "0")]}, 422, "validation-error"),
    ("unknown field", {"appends": [batch_part("s-1", "any")], "atomic": True}, 422,
     "validation-error"),
    ("appends not a list", {"appends": {"s-1": []}}, 422, "validation-error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "status", "type"),
    [case[1:] for case in BAD_BATCHES],
    ids=[case[0] for case in BAD_BATCHES],
)
async def test_a_bad_batch_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, payload: Any, status: int, type: str
) -> None:
    await append(client, "acct-seed", event())
    before = await head(client)
    assert_problem(await client.post("/batches", json=payload), status, type)
    assert await head(client) == before


BAD_QUERIES: list[tuple[str, str, str]] = [
    ("/events?after=-1", "query.after", "negative"),
    ("/events?after=1.0", "query.after", "float"),
    ("/events?after=abc", "query.after", "text"),
    ("/events?after=%2B1", "query.after", "plus sign"),
    ("/events?after=%201", "query.after", "space"),
    ("/events?after=1_000", "query.after", "underscore"),
    ("/events?after=99999999999999999999", "query.after", "beyond int64"),
    ("/events?limit=0", "query.limit", "zero"),
    ("/events?limit=10001", "query.limit", "above max"),
    ("/events?limit=1e3", "query.limit", "exponent"),
    ("/events?limit=true", "query.limit", "bool"),
    ("/events?type=1Bad", "query.type", "bad type"),
    ("/events?type=", "query.type", "empty type"),
    ("/events?stream_prefix=a%20b", "query.stream_prefix", "bad prefix"),
    ("/streams/acct-1?from_version=0", "query.from_version", "version zero"),
    ("/streams/acct-1?from_version=x", "query.from_version", "version text"),
    ("/streams/acct-1?limit=-5", "query.limit", "negative limit"),
    ("/events/subscribe?after=-1", "query.after", "subscribe negative"),
    ("/events/subscribe?heartbeat=0.01", "query.heartbeat", "heartbeat too small"),
    ("/events/subscribe?heartbeat=nan", "query.heartbeat", "heartbeat nan"),
    ("/events/subscribe?heartbeat=61", "query.heartbeat", "heartbeat too large"),
    ("/events/subscribe?type=a%20b", "query.type", "subscribe bad type"),
]


@pytest.mark.parametrize(
    ("url", "field"), [case[:2] for case in BAD_QUERIES], ids=[case[2] for case in BAD_QUERIES]
)
async def test_a_bad_query_parameter_is_a_422_naming_the_field(
    client: httpx.AsyncClient, url: str, field: str
) -> None:
    await append(client, "acct-1", event())
    problem = assert_problem(await client.get(url), 422, "validation-error")
    assert field in [e["field"] for e in problem["errors"]]
    assert await head(client) == 1


async def test_a_bad_last_event_id_is_a_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/events/subscribe", headers={"Last-Event-ID": "1.5"})
    problem = assert_problem(r, 422, "validation-error")
    assert problem["errors"][0]["field"] == "header.last-event-id"


# -- subscriptions (a real server) ---------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = new_app()
    async with (
        running_server(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c, app


def positions(messages: list[Any]) -> list[int]:
    return [int(m.id) for m in messages]


async def test_a_subscriber_catches_up_then_follows_live_without_gaps_or_duplicates(
    server: tuple[httpx.AsyncClient, Any],
) -> None:
    c, _ = server
    for i in range(3):
        await append(c, "acct-1", event(n=i))
    async with c.stream("GET", "/events/subscribe", params={"after": 1}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        reader = SSEReader(r)
        hello = await reader.next()
        assert hello.comments and hello.comments[0].startswith("connected")
        caught_up = await reader.events(2)
        for i in range(3, 6):
            await append(c, "acct-2", event("Withdrawn", n=i))
        live = await reader.events(3)
    assert positions(caught_up + live) == [2, 3, 4, 5, 6]
    assert [m.event for m in live] == ["Withdrawn"] * 3
    envelope = live[0].envelope()
    assert (envelope["position"], envelope["stream"], envelope["data"]) == (
        4,
        "acct-2",
        {"n": 3},
    )


async def test_a_subscriber_resumes_after_last_event_id_which_wins_over_after(
    server: tuple[httpx.AsyncClient, Any],
) -> None:
    c, _ = server
    await append(c, "acct-1", *[event(n=i) for i in range(5)])
    headers = {"Last-Event-ID": "3"}
    async with c.stream("GET", "/events/subscribe?after=1", headers=headers) as r:
        got = await SSEReader(r).events(2)
    assert positions(got) == [4, 5]


async def test_an_idle_subscription_sends_heartbeat_comments(
    server: tuple[httpx.AsyncClient, Any],
) -> None:
    c, _ = server
    async with c.stream("GET", "/events/subscribe", params={"heartbeat": 0.2}) as r:
        reader = SSEReader(r)
        await reader.next()  # connected
        beat = await reader.next(within=3)
        assert beat.comments == ["heartbeat"] and beat.data is None
        await append(c, "acct-1", event())
        got = await reader.next_event()
        assert got.id == "1"


async def test_a_subscription_applies_the_filters(server: tuple[httpx.AsyncClient, Any]) -> None:
    c, _ = server
    await append(c, "acct-1", event("Opened"), event("Deposited"))
    await append(c, "other-1", event("Deposited"))
    params: dict[str, Any] = {
        "type": ["Deposited", "Closed"],
        "stream_prefix": "acct-",
        "heartbeat": 0.2,
    }
    async with c.stream("GET", "/events/subscribe", params=params) as r:
        reader = SSEReader(r)
        first = await reader.next_event()
        await append(c, "other-2", event("Deposited"))
        await append(c, "acct-2", event("Opened"))
        await append(c, "acct-2", event("Closed"))
        second = await reader.next_event()
    assert [(m.id, m.event) for m in (first, second)] == [("2", "Deposited"), ("6", "Closed")]
    assert second.envelope()["stream"] == "acct-2"


async def test_a_follower_sees_every_event_of_32_concurrent_writers_once_in_order(
    server: tuple[httpx.AsyncClient, Any],
) -> None:
    c, _ = server
    writers, appends_each, events_each = 32, 10, 2
    total = writers * appends_each * events_each

    async def writer(w: int) -> None:
        for i in range(appends_each):
            r = await append(c, f"writer-{w}", event(w=w, i=i), event(w=w, i=i), expected=2 * i)
            assert r.status_code == 201, r.text

    async with c.stream("GET", "/events/subscribe", params={"heartbeat": 0.2}) as r:
        reader = SSEReader(r)
        await reader.next()  # connected: from here on, everything is live
        await append(c, "before-writers", event())
        tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
        got = await reader.events(total + 1, within=30)
        await asyncio.gather(*tasks)
    assert positions(got) == list(range(1, total + 2))
    seen = [m.envelope() for m in got[1:]]
    for w in range(writers):
        mine = [e["stream_version"] for e in seen if e["stream"] == f"writer-{w}"]
        assert mine == list(range(1, appends_each * events_each + 1))


async def test_a_disconnected_subscriber_is_released(
    server: tuple[httpx.AsyncClient, Any],
) -> None:
    c, app = server
    registry = app.state.metrics.registry

    def subscribers() -> float:
        value = registry.get_sample_value("eventledger_stream_subscribers")
        return -1.0 if value is None else float(value)

    async with c.stream("GET", "/events/subscribe", params={"heartbeat": 60}) as r:
        await SSEReader(r).next()
        assert subscribers() == 1.0
    await until(lambda: subscribers() == 0.0)


async def test_begin_shutdown_ends_open_subscriptions_cleanly_and_the_server_stops() -> None:
    app = new_app()
    async with (
        running_server(app, graceful_seconds=30) as url,  # 30 s: no forced cancellation
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        await append(c, "acct-1", event())
        async with c.stream("GET", "/events/subscribe", params={"heartbeat": 60}) as r:
            reader = SSEReader(r)
            await reader.next_event()
            app.state.begin_shutdown()
            with pytest.raises(EOFError):
                await reader.next(within=3)
    # leaving running_server awaited the server's exit: no stream kept it alive


async def test_a_filtered_subscription_does_not_spin_on_events_it_skips() -> None:
    store = CountingStore()
    app = new_app(store)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        params: dict[str, Any] = {"type": "Rare", "heartbeat": 0.2}
        async with c.stream("GET", "/events/subscribe", params=params) as r:
            reader = SSEReader(r)
            await reader.next()  # connected
            await append(c, "acct-1", *[event("Common") for _ in range(50)])
            reads_before = store.reads
            for _ in range(3):
                beat = await reader.next(within=3)
                assert beat.comments == ["heartbeat"]
            # about one read per heartbeat, not one per wake-up on skipped events
            assert store.reads - reads_before <= 6
            await append(c, "acct-1", event("Rare"))
            assert (await reader.next_event()).id == "51"


async def test_a_subscription_ends_with_a_comment_when_the_store_fails() -> None:
    store = FlakyStore()
    app = new_app(store)
    async with (
        running_server(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("GET", "/events/subscribe", params={"heartbeat": 0.2}) as r,
    ):
        reader = SSEReader(r)
        await reader.next()  # connected
        store.down = True
        last = await reader.next(within=3)
        while last.comments == ["heartbeat"]:  # one may already be on its way
            last = await reader.next(within=3)
        assert last.comments[0].startswith("store-unavailable")
        with pytest.raises(EOFError):
            await reader.next(within=3)


# -- a slow consumer -----------------------------------------------------------------------


async def test_a_subscriber_that_stops_reading_does_not_make_the_server_read_the_whole_log() -> (
    None
):
    """The subscription is pulled by the client: while it reads nothing, the server stops
    reading the log once the socket buffers are full, instead of queueing it all in memory."""
    store = CountingStore()
    total, page = 40_000, 1_000
    payload = {"note": "x" * 1_000}
    for first in range(0, total, page):
        events = [NewEvent(uuid.uuid4(), "Noted", {**payload, "n": first + i}) for i in range(page)]
        await store.append("acct-slow", expected_version=StreamState.ANY, events=events)
    app = new_app(store)
    async with running_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /events/subscribe?after=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            # The server reads pages until the socket buffers are full, then waits for us.
            settled = {"reads": -1, "since": asyncio.get_running_loop().time()}

            def stopped_reading() -> bool:
                now = asyncio.get_running_loop().time()
                if store.reads != settled["reads"]:
                    settled.update(reads=store.reads, since=now)
                return now - settled["since"] > 0.5

            await until(stopped_reading, within=20)
            assert store.events_read < total // 2, "the server read ahead of its client"
            # Once the client reads again, everything arrives, in order.
            seen = 0
            async with asyncio.timeout(60):
                while seen < total:
                    line = await reader.readline()
                    if line.startswith(b"id: "):
                        seen += 1
                        assert int(line[4:]) == seen
        finally:
            writer.close()
            await writer.wait_closed()
