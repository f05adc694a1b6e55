"""The stream service's forget (`POST /admin/accounts/{id}/forget`): after it, every read path
(stream reads, the log, one event, the SSE feed from 0, pages served from memory) shows the
account's owner and references as null with `metadata.erased`; nothing else writes the
event. Over a real server on SQLite and PostgreSQL stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.eventstore.hashing import verify_chain
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from tests.integration.stream_support import SSEReader, running_server

OWNER, REFERENCE = "Ingrid Nakamura-Økland", "flat 4B, rent March"
JSON = {"Content-Type": "application/json"}  # no body: a forget needs none


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "sqlite":
        yield SqliteEventStore(tmp_path / "events.db")
    else:
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("pg_schema")
        yield await PostgresEventStore.open(url, schema=schema)


@pytest.fixture
async def service(store: EventStore) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async def open_store() -> EventStore:
        return store

    app = create_app(open_store=open_store, heartbeat_seconds=1)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield url, http


async def open_account(http: httpx.AsyncClient) -> str:
    account = f"acc-{uuid.uuid4().hex[:10]}"
    opened = {
        "type": "AccountOpened",
        "schema_version": 2,
        "data": {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": OWNER},
    }
    deposit = {
        "type": "MoneyDeposited",
        "data": {
            "account_id": account,
            "transaction_id": str(uuid.uuid4()),
            "amount": 1250,
            "reference": REFERENCE,
        },
    }
    for version, event in enumerate([opened, deposit]):
        answer = await http.post(
            f"/streams/account-{account}", json={"expected_version": version, "events": [event]}
        )
        assert answer.status_code == 201, answer.text
    return account


async def sse_from_zero(http: httpx.AsyncClient, stack: AsyncExitStack, count: int) -> list[Any]:
    response = await stack.enter_async_context(http.stream("GET", "/events/subscribe?after=0"))
    assert response.status_code == 200
    return [m.envelope() for m in await SSEReader(response).events(count)]


def of(envelopes: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    return [e for e in envelopes if e["stream"] == f"account-{account}"]


async def test_after_a_forget_every_read_path_shows_the_personal_data_erased(
    service: tuple[str, httpx.AsyncClient], store: EventStore
) -> None:
    _, http = service
    account = await open_account(http)
    other = await open_account(http)
    async with AsyncExitStack() as stack:
        before = await sse_from_zero(http, stack, 4)  # read (and offered to the page cache)
    assert of(before, account)[0]["data"]["owner"] == OWNER
    assert of((await http.get("/events")).json()["events"], account)[1]["data"]["reference"] == (
        REFERENCE
    )

    forgot = await http.post(f"/admin/accounts/{account}/forget", headers=JSON)
    assert forgot.status_code == 201, forgot.text
    body = forgot.json()
    assert body["version"] == 3 and body["plaintext_fields"] == 0 and not body["replayed"]

    stream = (await http.get(f"/streams/account-{account}")).json()["events"]
    assert [e["type"] for e in stream] == ["AccountOpened", "MoneyDeposited", "PersonalDataErased"]
    assert stream[0]["data"]["owner"] is None and stream[0]["metadata"]["erased"] == ["owner"]
    assert stream[1]["data"]["reference"] is None
    assert stream[1]["metadata"]["erased"] == ["reference"]
    assert stream[1]["data"]["amount"] == 1250
    log = (await http.get("/events", params={"after": 0})).json()["events"]
    assert [e["data"].get("owner") for e in of(log, account)][:1] == [None]
    assert of(log, other)[0]["data"]["owner"] == OWNER  # another account keeps its own
    one = (await http.get(f"/events/{stream[1]['id']}")).json()
    assert one["data"]["reference"] is None
    async with AsyncExitStack() as stack:
        after = await sse_from_zero(http, stack, 5)
    assert of(after, account)[0]["data"]["owner"] is None
    assert of(after, account)[1]["data"]["reference"] is None
    assert of(after, account)[1]["hash"] == of(before, account)[1]["hash"]  # the chain stays
    report = await verify_chain(store)
    assert report.broken_at is None and report.head_position == 5


async def test_a_forget_is_a_replay_with_the_same_event_id_and_refused_for_unknown_accounts(
    service: tuple[str, httpx.AsyncClient],
) -> None:
    _, http = service
    account = await open_account(http)
    body = {"event_id": str(uuid.uuid4()), "expected_version": 2}
    first = await http.post(f"/admin/accounts/{account}/forget", json=body)
    again = await http.post(f"/admin/accounts/{account}/forget", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["position"] == first.json()["position"] and again.json()["replayed"]
    missing = await http.post("/admin/accounts/nobody-here/forget", headers=JSON)
    assert missing.status_code == 404 and missing.json()["type"].endswith("stream-not-found")
    stale = await http.post(f"/admin/accounts/{account}/forget", json={"expected_version": 1})
    assert stale.status_code == 409
    bad = await http.post(f"/admin/accounts/{account}/forget", json={"expected_version": "x"})
    assert bad.status_code == 422


async def test_an_ordinary_append_of_personal_data_erased_is_refused(
    service: tuple[str, httpx.AsyncClient],
) -> None:
    _, http = service
    account = await open_account(http)
    event = {"type": "PersonalDataErased", "data": {"account_id": account}}
    answer = await http.post(
        f"/streams/account-{account}", json={"expected_version": 2, "events": [event]}
    )
    assert answer.status_code == 422 and answer.json()["type"].endswith("erasure-needs-forget")
    stream = (await http.get(f"/streams/account-{account}")).json()
    assert stream["version"] == 2 and stream["events"][0]["data"]["owner"] == OWNER
