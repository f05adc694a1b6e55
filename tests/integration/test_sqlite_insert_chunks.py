"""The SQLite writer inserts a group's rows in multi-row INSERT statements of at most
`sqlite_write.INSERT_ROWS` rows (one GIL hand-over per statement, not per row): a group over
several statements is stored whole and in order, and a row refused in a later statement
leaves nothing of its append while the writer goes on."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventledger.eventstore import sqlite_write
from eventledger.eventstore.errors import InvalidAppend
from eventledger.eventstore.records import StreamAppend
from eventledger.eventstore.sqlite import SqliteEventStore
from tests.integration.store_contract import (
    ANY,
    NO_STREAM,
    new_event,
    new_events,
    new_stream,
    read_everything,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.ping()
    yield store
    await store.close()


@pytest.mark.parametrize("per_insert", [3, sqlite_write.INSERT_ROWS])
async def test_a_group_over_several_inserts_is_stored_whole_in_order(
    store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch, per_insert: int
) -> None:
    monkeypatch.setattr(sqlite_write, "INSERT_ROWS", per_insert)
    sizes = [per_insert * 2 + 1, per_insert + 2, 1]  # full, partial and single statements
    appends = [StreamAppend(new_stream(), NO_STREAM, new_events(n)) for n in sizes]
    head = await store.head_position()
    results = await store.append_batch(appends)
    stored = await read_everything(store, after=head)
    sent = [(a.stream, v, e.id) for a in appends for v, e in enumerate(a.events, 1)]
    assert [(e.stream, e.stream_version, e.id) for e in stored] == sent
    assert [e.position for e in stored] == list(range(head + 1, head + 1 + len(sent)))
    assert [r.last_version for r in results] == sizes
    assert [e.data for e in stored] == [dict(e.data) for a in appends for e in a.events]


async def test_a_row_refused_in_a_later_insert_leaves_nothing_of_its_append(
    store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_write, "INSERT_ROWS", 2)
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TRIGGER refuse_marked BEFORE INSERT ON events"
            " WHEN json_extract(NEW.data, '$.marked') IS NOT NULL"
            " BEGIN SELECT RAISE(ABORT, 'refused by a rule of the database'); END"
        )
    finally:
        conn.close()
    stream = new_stream()
    events = [*new_events(5), new_event(data={"marked": True}), *new_events(2)]
    head = await store.head_position()
    with pytest.raises(InvalidAppend):
        await store.append(stream, expected_version=NO_STREAM, events=events)
    assert await store.head_position() == head
    assert await store.stream_version(stream) == 0
    for event in events:
        assert await store.get_event(event.id) is None
    # The writer goes on: the next append is written.
    result = await store.append(stream, expected_version=ANY, events=new_events(5))
    assert (result.first_version, result.last_version) == (1, 5)
