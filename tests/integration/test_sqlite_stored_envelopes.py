"""Catch-up pages of the SQLite store are assembled from the stored texts
(SqliteEventStore.read_log_entries, recent.StoredEnvelopes): every envelope so made is exactly
the one a decode of the row and an encode of the event give (pages.encoded_envelope of
read_all), and a row whose stored text may differ from that is decoded instead."""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path

import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.recent import RecentEvent
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.services.stream.pages import SizeEstimate, encoded_envelope, read_log_page
from tests.integration.test_sqlite_recent import fill

pytestmark = pytest.mark.asyncio


async def expected(store: SqliteEventStore, **filters: object) -> list[tuple[int, str]]:
    events = await store.read_all(after=0, limit=10_000, **filters)  # type: ignore[arg-type]
    return [(e.position, encoded_envelope(e)) for e in events]


async def served(store: SqliteEventStore, **filters: object) -> list[tuple[int, str]]:
    entries = await store.read_log_entries(after=0, limit=10_000, **filters)  # type: ignore[arg-type]
    return [
        (e.position, e.text if isinstance(e, RecentEvent) else encoded_envelope(e)) for e in entries
    ]


async def test_envelopes_from_stored_texts_equal_decode_then_encode(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db", upcasters=build_upcasters())
    try:
        await fill(store, random.Random(11), 60)
        entries = await store.read_log_entries(after=0, limit=10_000)
        fast = sum(isinstance(e, RecentEvent) for e in entries)
        assert 0 < fast < len(entries)  # both paths are taken (floats, non-ASCII, upcasts)
        assert await served(store) == await expected(store)
        for filters in (
            {"types": ("Noted",)},
            {"types": ("Noted", "AccountOpened")},
            {"stream_prefix": "account-"},
            {"types": ("MoneyDeposited",), "stream_prefix": "notes-"},
        ):
            assert await served(store, **filters) == await expected(store, **filters)
    finally:
        await store.close()


async def test_rows_not_their_own_reencoding_are_decoded(tmp_path: Path) -> None:
    """Rows as older code or a hand may have stored them: the envelope is the decoded one."""
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, upcasters=build_upcasters())
    try:
        await fill(store, random.Random(3), 5)
        head = await store.head_position()
        await store.close()
        odd = [
            ("data", '{"a": 1}'),  # a space
            ("data", '{"a":1,"a":2}'),  # a key twice
            ("metadata", "{ }"),
            ("id", str(uuid.uuid4()).upper()),
            ("recorded_at", "2026-12-03T08:00:00.123456+00:00"),
            ("recorded_at", "2026-12-03T08:00:00Z"),
        ]
        conn = sqlite3.connect(path)
        with conn:
            for position, (column, value) in zip(range(1, head + 1), odd, strict=False):
                sql = f"UPDATE events SET {column} = ? WHERE position = ?"
                conn.execute(sql, (value, position))
        conn.close()
        store = SqliteEventStore(path, upcasters=build_upcasters())
        entries = await store.read_log_entries(after=0, limit=len(odd))
        assert not any(isinstance(e, RecentEvent) for e in entries)
        assert await served(store) == await expected(store)
        # and through the page reader, in chunks
        page = await read_log_page(store, SizeEstimate(), after=0, limit=10_000, max_bytes=1 << 30)
        assert list(zip([e.position for e in page.events], page.encoded, strict=True)) == (
            await expected(store)
        )
    finally:
        await store.close()
