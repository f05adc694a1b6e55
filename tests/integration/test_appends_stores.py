"""`POST /appends` over the SQL stores (SQLite file; PostgreSQL with
EVENTLEDGER_TEST_POSTGRES_URL): items written by the group commit together keep their own
outcomes, their order in each stream and the replay rule."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app

pytestmark = pytest.mark.asyncio

Opener = Callable[[], Awaitable[EventStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":

        async def sqlite() -> EventStore:
            return SqliteEventStore.from_url(
                f"sqlite:///{tmp_path}/events.db", upcasters=build_upcasters()
            )

        return sqlite
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("pg_schema")

    async def postgres() -> EventStore:
        return await PostgresEventStore.open(url, schema=schema, upcasters=build_upcasters())

    return postgres


@pytest.fixture
async def client(open_store: Opener) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(open_store=open_store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


def item(stream: str, expected: Any = "any", **event: Any) -> dict[str, Any]:
    events = [{"type": "Noted", "data": {}, **event}]
    return {"appends": [{"stream": stream, "expected_version": expected, "events": events}]}


async def outcomes(c: httpx.AsyncClient, *items: dict[str, Any]) -> list[dict[str, Any]]:
    r = await c.post("/appends", json={"items": list(items)})
    assert r.status_code == 200, r.text
    answer: list[dict[str, Any]] = r.json()["items"]
    return answer


async def test_many_items_to_one_stream_each_get_a_version_of_their_own(
    client: httpx.AsyncClient,
) -> None:
    stream = f"s-{uuid.uuid4().hex[:10]}"
    answers = await outcomes(client, *(item(stream, data={"i": i}) for i in range(300)))
    assert {a["status"] for a in answers} == {201}
    versions = sorted(a["results"][0]["last_version"] for a in answers)
    assert versions == list(range(1, 301))
    positions = [a["results"][0]["positions"][0] for a in answers]
    assert len(set(positions)) == 300


async def test_the_same_event_twice_in_one_request_is_written_once_then_replayed(
    client: httpx.AsyncClient,
) -> None:
    stream, event_id = f"s-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    first, second, other = await outcomes(
        client, item(stream, id=event_id), item(stream, id=event_id), item(stream)
    )
    assert sorted([first["status"], second["status"]]) == [200, 201]
    assert first["results"] == second["results"]
    assert other["status"] == 201


async def test_expected_versions_are_checked_per_item_within_one_commit(
    client: httpx.AsyncClient,
) -> None:
    streams = [f"s-{uuid.uuid4().hex[:10]}" for _ in range(10)]
    answers = await outcomes(
        client, *(item(s, "no_stream") for s in streams), *(item(s, "no_stream") for s in streams)
    )
    for stream in streams:
        mine = [a for a in answers if a.get("results", [{}])[0].get("stream") == stream]
        refused = [
            a for a in answers if a["status"] == 409 and a["problem"].get("stream") == stream
        ]
        assert len(mine) == 1 and len(refused) == 1
        assert refused[0]["problem"]["type"] == "wrong-expected-version"
