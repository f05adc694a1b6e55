"""Live subscribers are served what the PostgreSQL writer just committed from memory
(eventstore/recent.py): every page served so is exactly the page a read of the store gives
(jsonb reorders keys: the kept rows are in its order), another instance's events are read, and
a subscriber's feed learns of this instance's commits without a query."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.errors import StreamNotFound
from eventledger.eventstore.postgres import FILL_ROWS, PostgresEventStore
from eventledger.eventstore.recent import RecentPage
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.services.http import ProblemError
from eventledger.services.stream.guards import AccountGuard
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


@pytest.fixture
async def two(
    postgres_url: str, pg_schema: str
) -> AsyncIterator[tuple[PostgresEventStore, PostgresEventStore]]:
    """Two store instances on one schema, as two stream services on one PostgreSQL log."""
    ours = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    theirs = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    try:
        yield ours, theirs
    finally:
        await ours.close()
        await theirs.close()


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
                metadata: dict[str, Any] = rng.choice(
                    [{}, {"correlation_id": f"c-{n}", "b": 1}, {"f": 0.5}]
                )
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


async def test_another_instances_events_are_read_once_and_ours_need_no_query(
    two: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    ours, theirs = two
    await ours.append("notes-a", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    assert ours.known_head() == 1
    await theirs.append("notes-b", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    assert ours.recent_page(1, limit=10, max_bytes=10**6) is None  # theirs: read it
    # Heard of, then read once: the rows the wake-up's fill brought say the head.
    assert await ours.wait_for_events(1, 5.0)
    assert ours.known_head() == 2
    served = ours.recent_page(1, limit=10, max_bytes=10**6)
    assert served is not None and [e.position for e in served.events] == [2]
    await ours.append("notes-c", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    # Ours follows theirs, which is in memory: one run, no read.
    served = ours.recent_page(0, limit=10, max_bytes=10**6)
    assert served is not None and [e.position for e in served.events] == [1, 2, 3]
    assert not await ours.fill_recent(3, after=2)  # nothing more to read
    await theirs.append("notes-d", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    await ours.append("notes-e", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    # Ours follows theirs unheard of: kept aside (position 4 is not in memory), until one
    # read of what follows our run brings it; then one run again.
    assert ours.recent_page(4, limit=10, max_bytes=10**6) is None
    served = ours.recent_page(0, limit=10, max_bytes=10**6)
    assert served is not None and [e.position for e in served.events] == [1, 2, 3]
    assert await ours.fill_recent(5, after=4)
    served = ours.recent_page(0, limit=10, max_bytes=10**6)
    assert served is not None and [e.position for e in served.events] == [1, 2, 3, 4, 5]
    assert await ours.wait_for_events(4, 0.0)  # our own commit: known without a query


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


# -- two instances on one log ------------------------------------------------------------

PLAIN_KINDS: list[tuple[str, int, dict[str, Any]]] = [
    PLAIN,
    ("MoneyDeposited", 1, {"account_id": "a-1", "amount": 5, "reference": None, "ok": True}),
    ("Noted", 1, {"nested": {"list": [1, "two", None, {"k": False}]}, "z": 1, "a": 2}),
    ("Noted", 1, {"text": 'quote " backslash \\ newline \n tab \t ctl \x01 del \x7f'}),
    ("Noted", 1, {}),
]
FILTERS: list[tuple[tuple[str, ...], str | None]] = [
    ((), None), (("Noted",), None), ((), "account-"), (("MoneyDeposited",), "account-"),
]  # fmt: skip


def counting(store: PostgresEventStore, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of one of the store's methods (a list, to read it as it grows)."""
    calls = [0]
    method = getattr(store, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await method(*args, **kwargs)

    monkeypatch.setattr(store, name, counted)
    return calls


async def caught_up(store: PostgresEventStore, key: tuple[tuple[str, ...], str | None]) -> bytes:
    """Every frame a subscriber from the start is sent, read from the store."""
    feed, frames, last = LogFeed(store), b"", 0
    head = await store.head_position()
    while last < head:
        page = await feed._read((last, *key))
        frames, last = frames + page.frames, page.last
    return frames


async def test_a_subscriber_of_one_instance_is_served_the_others_commits_from_one_read(
    two: tuple[PostgresEventStore, PostgresEventStore],
    postgres_url: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(11)
    ours, theirs = two
    reader = await ReadOnly.open(postgres_url, schema=pg_schema)
    feed = LogFeed(ours)
    try:
        await ours.append(
            "notes-0", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        reads = counting(ours, "_read_all", monkeypatch)
        fills = counting(ours, "_fill", monkeypatch)
        frames = {key: b"" for key in FILTERS}
        lasts = dict.fromkeys(FILTERS, 0)
        for n in range(25):
            for store in rng.sample([ours, theirs], rng.randint(1, 2)):
                appends = [
                    StreamAppend(
                        f"{rng.choice(['notes', 'account'])}-{n}-{s}-{id(store)}",
                        StreamState.NO_STREAM,
                        [new(k, {}) for k in rng.sample(PLAIN_KINDS, rng.randint(1, 3))],
                    )
                    for s in range(rng.randint(1, 2))
                ]
                await store.append_batch(appends)
            head = await theirs.head_position()
            for key in FILTERS:  # every subscriber follows up to the head, as event_stream
                while lasts[key] < head:
                    assert await feed.wait_past(lasts[key], 5.0)
                    page = await feed.page((lasts[key], *key))
                    frames[key] += page.frames
                    lasts[key] = page.last
        assert reads[0] == 0  # no page read from the store, for any filter
        assert 0 < fills[0] <= 25  # at most one read a round, for every filter together
        for key in FILTERS:
            assert frames[key] == await caught_up(reader, key), key  # byte for byte, in order
    finally:
        await feed.close()
        await reader.close()


def account_event(type_: str, **data: Any) -> NewEvent:
    version = 2 if type_ == "AccountOpened" else 1
    return NewEvent(uuid.uuid4(), type_, data, schema_version=version)


def deposit(account: str, amount: int) -> NewEvent:
    return account_event(
        "MoneyDeposited",
        account_id=account,
        transaction_id=str(uuid.uuid4()),
        amount=amount,
        reference=None,
    )


async def test_the_guard_of_one_instance_decides_on_the_others_writes_without_reading_them(
    two: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = two
    guard = AccountGuard()

    async def through_guard(store: PostgresEventStore, append: StreamAppend) -> None:
        guard.remember(await guard.check(store, [append]), await store.append_batch([append]))

    opened = account_event(
        "AccountOpened", account_id="a", currency="EUR", overdraft_limit=0, owner=None
    )
    await through_guard(ours, StreamAppend("account-a", 0, [opened]))
    reads = counting(ours, "_read_stream", monkeypatch)
    version = 1
    for amount in (100, 20, 3):
        # Another instance deposits (twice, with another account's event between) ...
        for n in range(2):
            await theirs.append(
                "account-a", expected_version=version, events=[deposit("a", amount)]
            )
            await theirs.append(
                f"notes-{amount}-{n}",
                expected_version=StreamState.NO_STREAM,
                events=[new(PLAIN, {})],
            )
            version += 1
        # ... and ours is asked to append after it: the guard knows its facts, unread.
        withdrawal = account_event(
            "MoneyWithdrawn",
            account_id="a",
            transaction_id=str(uuid.uuid4()),
            amount=2 * amount,
            reference=None,
        )
        checked = await guard.check(ours, [StreamAppend("account-a", version, [withdrawal])])
        assert checked is not None and checked.facts["account-a"].balance == 0
        guard.remember(
            checked, await ours.append_batch([StreamAppend("account-a", version, [withdrawal])])
        )
        version += 1
    assert reads[0] == 0 and guard.events_read == 0 and guard.events_recent == 6
    # Closing refused on their deposit (a balance of 5, not 0): decided, still unread.
    await theirs.append("account-a", expected_version=version, events=[deposit("a", 5)])
    closing = StreamAppend(
        "account-a", version + 1, [account_event("AccountClosed", account_id="a")]
    )
    with pytest.raises(ProblemError) as refused:
        await guard.check(ours, [closing])
    assert refused.value.status == 422 and reads[0] == 0


async def test_one_fill_serves_everyone_asking_at_once_and_none_runs_for_a_reader_far_behind(
    two: tuple[PostgresEventStore, PostgresEventStore],
    postgres_url: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = two
    reader = await ReadOnly.open(postgres_url, schema=pg_schema)
    try:
        await ours.append(
            "notes-0", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        for n in range(3):
            await theirs.append(
                f"notes-{n + 1}", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
            )
        fills = counting(ours, "_fill", monkeypatch)
        done = await asyncio.gather(*(ours.fill_recent(4, after=after) for after in (1, 1, 0, 1)))
        assert fills[0] == 1 and all(done)  # one read, for every caller
        assert not await ours.fill_recent(4, after=1)  # nothing past the run's end
        served = ours.recent_page(0, limit=10, max_bytes=10**6)
        assert served is not None and [e.position for e in served.events] == [1, 2, 3, 4]
        # An instance that knows nothing of the log yet: a reader far behind the head reads
        # the store, page by page, as before; one near the head is filled for, then served.
        events = [new(PLAIN, {}) for _ in range(FILL_ROWS + 10)]
        await theirs.append("notes-bulk", expected_version=StreamState.NO_STREAM, events=events)
        head = await ours.head_position()
        late = await PostgresEventStore.open(postgres_url, schema=pg_schema)
        try:
            reads, late_fills = (counting(late, n, monkeypatch) for n in ("_read_all", "_fill"))
            feed = LogFeed(late)
            feed.head = head
            page = await feed._read((0, (), None))
            store_reads = reads[0]
            assert store_reads >= 1 and late_fills[0] == 0 and page.cut
            page = await feed._read((head - 5, (), None))
            assert reads[0] == store_reads and late_fills[0] == 1 and page.count == 5
            assert page.frames == (await LogFeed(reader)._read((head - 5, (), None))).frames
        finally:
            await late.close()
    finally:
        await reader.close()


async def test_a_wake_up_by_another_instances_commit_reads_its_rows_not_the_counter(
    two: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = two
    await ours.append("notes-a", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})])
    head_reads = counting(ours, "head_position", monkeypatch)
    fills = counting(ours, "_fill", monkeypatch)
    for n in range(1, 6):
        after = ours.known_head()
        waiting = asyncio.create_task(ours.wait_for_events(after, 5.0))
        await theirs.append(
            f"notes-b{n}", expected_version=StreamState.NO_STREAM, events=[new(PLAIN, {})]
        )
        assert await waiting  # woken by their NOTIFY, the head found by one fill
        assert ours.known_head() == await theirs.head_position() == after + 1
    assert head_reads[0] == 0 and fills[0] == 5
    # Their commits are in our run: a subscriber at the tail is served without a read.
    page = await ours.live_page(1, limit=10, max_bytes=1 << 20)
    assert page is not None and [e.position for e in page.events] == [2, 3, 4, 5, 6]
