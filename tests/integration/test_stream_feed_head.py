"""The subscriptions' head watcher learns of the store's own commits without a query
(`EventStore.known_head`), and of anything else by asking the store."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.services.stream.sse import LogFeed

pytestmark = pytest.mark.asyncio


def one_event() -> list[NewEvent]:
    return [NewEvent(uuid.uuid4(), "Noted", {"n": 1})]


class CountingStore(MemoryEventStore):
    def __init__(self, *, knows_head: bool) -> None:
        super().__init__()
        self.knows_head = knows_head
        self.head_reads = 0

    def known_head(self) -> int:
        return super().known_head() if self.knows_head else 0

    async def head_position(self) -> int:
        self.head_reads += 1
        return await super().head_position()


@pytest.mark.parametrize("knows_head", [True, False])
async def test_the_feed_announces_a_commit_with_a_head_query_only_when_the_head_is_unknown(
    knows_head: bool,
) -> None:
    store = CountingStore(knows_head=knows_head)
    feed = LogFeed(store)
    try:
        waiting = asyncio.create_task(feed.wait_past(0, 10))
        await asyncio.sleep(0)  # the watcher starts and waits on the store
        await store.append("notes-1", expected_version=StreamState.NO_STREAM, events=one_event())
        assert await asyncio.wait_for(waiting, 10)
        assert feed.head == 1
        assert store.head_reads == (0 if knows_head else 1)
    finally:
        await feed.close()


async def test_sqlite_knows_its_own_commits_as_its_head(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        assert store.known_head() == 0
        for n in range(3):
            await store.append(
                f"notes-{n}", expected_version=StreamState.NO_STREAM, events=one_event()
            )
        assert store.known_head() == await store.head_position() == 3
    finally:
        await store.close()


@pytest.mark.parametrize("knows_head", [True, False])
async def test_a_filtered_page_asks_the_store_for_the_head_only_when_it_is_unknown(
    knows_head: bool,
) -> None:
    store = CountingStore(knows_head=knows_head)
    feed = LogFeed(store)
    try:
        await store.append("notes-1", expected_version=StreamState.NO_STREAM, events=one_event())
        await store.append("other-1", expected_version=StreamState.NO_STREAM, events=one_event())
        feed.head = 2  # what the watcher announced
        page = await feed._read((0, (), "notes-"))
        # The page's resume point is the head before the read: past the event that does not
        # match, so the subscriber waits for news instead of reading again at once.
        assert (page.count, page.last) == (1, 2)
        assert store.head_reads == (0 if knows_head else 1)
    finally:
        await feed.close()
