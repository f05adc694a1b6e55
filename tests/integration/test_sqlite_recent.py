"""Live subscribers are served what the SQLite writer just committed from memory
(eventstore/recent.py): every page served so is exactly the page a read of the store gives,
and anything it cannot serve exactly is left to the store."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.recent import RecentPage
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.services.stream.pages import SizeEstimate, read_log_page
from eventledger.services.stream.sse import FramesPage, LogFeed

pytestmark = pytest.mark.asyncio

DATA: list[tuple[str, int, dict[str, Any]]] = [
    ("MoneyDeposited", 1, {"account_id": "a-1", "amount": 5, "reference": None, "ok": True}),
    ("Noted", 1, {"nested": {"list": [1, "two", None, {"k": False}]}, "z": 1, "a": 2}),
    ("Noted", 1, {"text": 'quote " backslash \\ newline \n tab \t ctl \x01 del \x7f'}),
    ("Noted", 1, {"float": 1.5}),  # left to the store: its spelling may change
    ("Noted", 1, {"deep": [{"x": 1e16}]}),
    ("Noted", 1, {"accent": "Zoë"}),  # stored unescaped, served escaped
    ("Noted", 1, {"big": 2**70}),
    ("AccountOpened", 1, {"account_id": "a-2", "currency": "EUR", "owner": None}),  # upcast
    ("AccountOpened", 2, {"account_id": "a-3", "currency": "EUR", "overdraft_limit": 0,
                          "owner": None}),
    ("Noted", 1, {}),
]  # fmt: skip


class ReadOnly(SqliteEventStore):
    """The same file, never served from memory: what a read of the store gives."""

    def recent_page(self, after: int, **_: Any) -> RecentPage | None:
        return None


def new(kind: tuple[str, int, dict[str, Any]], metadata: dict[str, Any]) -> NewEvent:
    type_, version, data = kind
    return NewEvent(uuid.uuid4(), type_, data, metadata, schema_version=version)


async def fill(store: SqliteEventStore, rng: random.Random, commits: int) -> None:
    for n in range(commits):
        appends = []
        for s in range(rng.randint(1, 3)):
            kinds = rng.sample(DATA, rng.randint(1, 3))
            metadata: dict[str, Any] = rng.choice([{}, {"correlation_id": f"c-{n}"}, {"f": 0.5}])
            appends.append(
                StreamAppend(
                    f"{rng.choice(['notes', 'account'])}-{n}-{s}",
                    StreamState.NO_STREAM,
                    [new(k, metadata) for k in kinds],
                )
            )
        await store.append_batch(appends)


async def pages(
    store: SqliteEventStore, key: tuple[int, tuple[str, ...], str | None]
) -> FramesPage:
    return await LogFeed(store)._read(key)


async def test_every_page_served_from_memory_is_the_page_the_store_reads(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, upcasters=build_upcasters())
    reader = ReadOnly(path, upcasters=build_upcasters())
    try:
        await fill(store, rng, 40)
        head = await store.head_position()
        served = 0
        filters: list[tuple[tuple[str, ...], str | None]] = [
            ((), None), (("Noted",), None), ((), "account-"), (("MoneyDeposited",), "account-"),
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
                assert await pages(store, key) == await pages(reader, key), key
        # Most pages are served from memory; those over a float, non-ASCII text, a big integer
        # or an upcast event are read.
        assert 0 < served < (head + 1) * len(filters)
    finally:
        await store.close()
        await reader.close()


async def test_a_page_is_bounded_like_a_read_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    reader = ReadOnly(path)
    try:
        plain = ("Noted", 1, {"pad": "x" * 300})
        for n in range(20):
            await store.append_batch(
                [StreamAppend(f"notes-{n}", StreamState.NO_STREAM, [new(plain, {})])]
            )
        for limit, max_bytes in ((1, 10**6), (3, 10**6), (100, 1000), (100, 1), (100, 10**6)):
            page = store.recent_page(0, limit=limit, max_bytes=max_bytes)
            assert page is not None
            expected = await read_log_page(
                reader, SizeEstimate(), after=0, limit=limit, max_bytes=max_bytes
            )
            assert [e.text for e in page.events] == expected.encoded
            assert page.cut == expected.cut
    finally:
        await store.close()
        await reader.close()


async def test_another_writers_events_are_never_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    ours, theirs = SqliteEventStore(path), SqliteEventStore(path)
    plain = ("Noted", 1, {"n": 1})
    try:
        await ours.append(
            "notes-a", expected_version=StreamState.NO_STREAM, events=[new(plain, {})]
        )
        await theirs.append(
            "notes-b", expected_version=StreamState.NO_STREAM, events=[new(plain, {})]
        )
        # Ours knows position 1 only: past it, the store is read.
        page = ours.recent_page(0, limit=10, max_bytes=10**6)
        assert page is not None and [e.position for e in page.events] == [1] and not page.cut
        assert ours.recent_page(1, limit=10, max_bytes=10**6) is None
        # Our next commit follows theirs (position 3): a new run, nothing before it served.
        await ours.append(
            "notes-c", expected_version=StreamState.NO_STREAM, events=[new(plain, {})]
        )
        assert ours.recent_page(0, limit=10, max_bytes=10**6) is None
        assert ours.recent_page(1, limit=10, max_bytes=10**6) is None
        page = ours.recent_page(2, limit=10, max_bytes=10**6)
        assert page is not None and [e.position for e in page.events] == [3]
    finally:
        await ours.close()
        await theirs.close()
