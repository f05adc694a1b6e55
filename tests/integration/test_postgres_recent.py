"""Live subscribers are served what the PostgreSQL writer just committed from memory
(eventstore/recent.py): every page served so is exactly the page a read of the store gives
(jsonb reorders keys: the kept rows are in its order), another instance's events are read, and
a subscriber's feed learns of this instance's commits without a query."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.errors import StreamNotFound
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.recent import RecentPage
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.services.stream.sse import FramesPage, LogFeed
from tests.integration.test_sqlite_recent import DATA

pytestmark = pytest.mark.asyncio

PLAIN = ("Noted", 1, {"zeta": 1, "a": {"yy": [1, {"b": 2, "aa": 3}], "x": None}})


class ReadOnly(PostgresEventStore):
    """The same schema, never served from memory: what a read of the store gives."""

    def recent_page(self, after: int, **_: Any) -> RecentPage | None:
        return None


def new(kind: tuple[str, int, dict[str, Any]], metadata: dict[str, Any]) -> NewEvent:
    type_, version, data = kind
    return NewEvent(uuid.uuid4(), type_, data, metadata, schema_version=version)


async def page(
    store: PostgresEventStore, key: tuple[int, tuple[str, ...], str | None]
) -> FramesPage:
    return await LogFeed(store)._read(key)


async def test_every_page_served_from_memory_is_the_page_the_store_reads(
    postgres_url: str, pg_schema: str
) -> None:
    rng = random.Random(7)
    store = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, upcasters=build_upcasters()
    )
    reader = await ReadOnly.open(postgres_url, schema=pg_schema, upcasters=build_upcasters())
    try:
        for n in range(30):
            appends = []
            for s in range(rng.randint(1, 3)):
                kinds = rng.sample([*DATA, PLAIN], rng.randint(1, 3))
                metadata = rng.choice([{}, {"correlation_id": f"c-{n}", "b": 1}, {"f": 0.5}])
                stream = f"{rng.choice(['notes', 'account'])}-{n}-{s}"
                appends.append(
                    StreamAppend(stream, StreamState.NO_STREAM, [new(k, metadata) for k in kinds])
                )
            await store.append_batch(appends)
        head = await store.head_position()
        served = 0
        filters: list[tuple[tuple[str, ...], str | None]] = [
            ((), None), (("Noted",), None), ((), "account-"),
        ]  # fmt: skip
        for after in range(head + 1):
            for types, prefix in filters:
                key = (after, types, prefix)
                recent = store.recent_page(
                    after, limit=500, max_bytes=64 * 1024, types=types, stream_prefix=prefix
                )
                if recent is None:
                    continue
                served += 1
                assert await page(store, key) == await page(reader, key), key
        assert 0 < served < (head + 1) * len(filters)
    finally:
        await store.close()
        await reader.close()


async def test_another_instances_events_are_read_and_ours_need_no_query(
    postgres_url: str, pg_schema: str
) -> None:
    ours = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    theirs = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        await ours.append(
            "notes-a", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        assert ours.known_head() == 1
        await theirs.append(
            "notes-b", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        assert ours.recent_page(1, limit=10, max_bytes=10**6) is None  # theirs: read it
        assert await ours.wait_for_events(1, 5.0)  # heard of, then read from the table
        assert ours.known_head() == 2
        await ours.append(
            "notes-c", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        assert ours.recent_page(0, limit=10, max_bytes=10**6) is None  # the run starts at 3
        served = ours.recent_page(2, limit=10, max_bytes=10**6)
        assert served is not None and [e.position for e in served.events] == [3]
        assert await ours.wait_for_events(2, 0.0)  # our own commit: known without a query
    finally:
        await ours.close()
        await theirs.close()


async def test_reading_past_a_streams_end_costs_one_query(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        for n in range(3):
            await store.append("notes-a", expected_version=n, events=[new(PLAIN, {})])
        queries = 0
        fetch = store._fetch

        async def counted(*args: Any) -> Any:
            nonlocal queries
            queries += 1
            return await fetch(*args)

        monkeypatch.setattr(store, "_fetch", counted)
        assert await store.read_stream("notes-a", from_version=4) == []
        assert queries == 1  # the event before says the stream exists
        versions = []
        for start, limit in ((1, None), (2, 1), (2, None), (3, 5)):
            page = await store.read_stream("notes-a", from_version=start, limit=limit)
            versions.append([e.stream_version for e in page])
        assert versions == [[1, 2, 3], [2], [2, 3], [3]]
        with pytest.raises(StreamNotFound):
            await store.read_stream("notes-b", from_version=2)
    finally:
        await store.close()
