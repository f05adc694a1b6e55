"""PostgreSQL's log pages parse `data` and `metadata` from their text (orjson where that is
exact): every value reads back as psycopg's own loader (the standard library) reads it, as
the other reads give it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventledger.eventstore.postgres import PostgresEventStore
from tests.integration.store_contract import NO_STREAM, new_event, new_stream

TRICKY: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"amount": 5, "reference": None, "ok": True, "who": "a-1"}, {}),
    ({"floats": [1e20, -0.0, 1.5e300, 1e-7, 0.1, 2.5, 1.0]}, {"at": 1.5}),
    ({"big": 2**70, "small": -(2**63), "huge": [2**64, -(2**65)]}, {}),
    (
        {
            "text": '€ naïve 日本語 🚀 " \\ \u2028',
            "nested": {"z": 1, "a": [True, None, {"y": "ü"}]},
        },
        {},
    ),
    ({"deep": {"x": [{"y": [0.5]}]}}, {"correlation_id": "c"}),
]


@pytest.fixture
async def store(postgres_url: str, pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    yield store
    await store.close()


async def test_the_log_reads_back_every_json_value_as_the_stream_read_does(
    store: PostgresEventStore,
) -> None:
    stream = new_stream()
    events = [new_event(data=data, metadata=meta) for data, meta in TRICKY]
    await store.append(stream, expected_version=NO_STREAM, events=events)
    from_log = await store.read_all(after=0, limit=100)
    from_stream = await store.read_stream(stream)
    assert from_log == from_stream
    # The same values of the same types (repr tells 1 from 1.0; jsonb itself keeps numbers
    # as numerics: 1e20 comes back an int from either read).
    assert [repr((e.data, e.metadata)) for e in from_log] == [
        repr((e.data, e.metadata)) for e in from_stream
    ]
    assert type(from_log[2].data["big"]) is int and type(from_log[1].data["floats"][4]) is float
