"""Personal data at rest, on every store backend: sealed in the log, its key in the key table,
erased by a forget (key deleted + PersonalDataErased, in one transaction), the hash chain
intact throughout. The raw tables are read with the database's own driver."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from eventledger.eventstore.errors import WrongExpectedVersion
from eventledger.eventstore.hashing import verify_chain
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore

OWNER = "Margarethe Ødegaard"
REFERENCE = "invoice 2026-117 for M. Ødegaard"


class Backend:
    """A store plus a look at its raw tables, and a way to open another instance on the same
    database (None: the memory store has no other)."""

    def __init__(
        self,
        store: EventStore,
        raw: Callable[[str], list[tuple[Any, ...]]],
        another: Callable[[], Awaitable[EventStore]] | None = None,
    ) -> None:
        self.store, self.raw, self.another = store, raw, another

    def stored_text(self) -> str:
        """Every event's data and every key row, as the database holds them."""
        return str(self.raw("events"))

    def key_rows(self) -> list[tuple[Any, ...]]:
        return list(self.raw("keys"))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "memory":
        memory = MemoryEventStore()
        store: EventStore = memory

        def raw_memory(what: str) -> list[tuple[Any, ...]]:
            if what == "events":
                return [(dict(e.data),) for e in memory._log]
            keys = memory._keys._keys
            return [(a, k.key_id, k.secret) for a, k in keys.items()]

        yield Backend(store, raw_memory)
    elif kind == "sqlite":
        path = tmp_path / "events.db"
        store = SqliteEventStore(path)

        def raw_sqlite(what: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                if what == "events":
                    return conn.execute("SELECT data FROM events").fetchall()
                return conn.execute(
                    "SELECT account_id, key_id, secret FROM personal_data_keys"
                ).fetchall()

        async def another_sqlite() -> EventStore:
            return SqliteEventStore(path)

        yield Backend(store, raw_sqlite, another_sqlite)
    else:
        url: str = request.getfixturevalue("postgres_url")
        schema: str = request.getfixturevalue("pg_schema")
        store = await PostgresEventStore.open(url, schema=schema)

        def raw_postgres(what: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(url) as conn:
                table = "events" if what == "events" else "personal_data_keys"
                columns = "data::text" if what == "events" else "account_id, key_id, secret"
                query = sql.SQL("SELECT " + columns + " FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                return conn.execute(query).fetchall()

        async def another_postgres() -> EventStore:
            return await PostgresEventStore.open(url, schema=schema)

        yield Backend(store, raw_postgres, another_postgres)
    await store.close()


def opened(account: str, owner: str | None = OWNER) -> NewEvent:
    return NewEvent(
        uuid4(),
        "AccountOpened",
        {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": owner},
        schema_version=2,
    )


def deposited(account: str, reference: str | None = REFERENCE) -> NewEvent:
    data = {"account_id": account, "transaction_id": str(uuid4()), "amount": 250}
    return NewEvent(uuid4(), "MoneyDeposited", {**data, "reference": reference})


def erased(account: str) -> NewEvent:
    return NewEvent(uuid4(), "PersonalDataErased", {"account_id": account})


async def open_with_personal_data(store: EventStore) -> str:
    account = f"acc-{uuid4().hex[:12]}"
    stream = f"account-{account}"
    await store.append(stream, expected_version=StreamState.NO_STREAM, events=[opened(account)])
    await store.append(stream, expected_version=1, events=[deposited(account)])
    return account


async def test_personal_data_is_stored_sealed_under_a_new_key_and_read_back_plain(
    backend: Backend,
) -> None:
    store = backend.store
    account = await open_with_personal_data(store)
    events = await store.read_stream(f"account-{account}")
    assert events[0].data["owner"] == OWNER and events[1].data["reference"] == REFERENCE
    assert next(e.data.get("owner") for e in await store.read_all(after=0)) == OWNER
    stored = await store.read_stored()
    assert str(stored[0].data["owner"]).startswith("pii1:")
    assert "Ødegaard" not in backend.stored_text() and "pii1:" in backend.stored_text()
    assert [k[0] for k in backend.key_rows()] == [account]
    assert len(bytes(backend.key_rows()[0][2])) == 32


async def test_an_event_without_personal_data_creates_no_key(backend: Backend) -> None:
    store = backend.store
    account = f"acc-{uuid4().hex[:12]}"
    stream = f"account-{account}"
    await store.append(stream, expected_version=0, events=[opened(account, owner=None)])
    await store.append(stream, expected_version=1, events=[deposited(account, reference=None)])
    assert (await store.read_stored())[0].data["owner"] is None
    assert backend.key_rows() == []


async def test_a_resent_append_of_personal_data_is_recognised_and_writes_nothing(
    backend: Backend,
) -> None:
    store = backend.store
    account = f"acc-{uuid4().hex[:12]}"
    event = opened(account)
    first = await store.append(f"account-{account}", expected_version=0, events=[event])
    again = await store.append(f"account-{account}", expected_version=0, events=[event])
    assert again.replayed and again.positions == first.positions
    assert await store.head_position() == first.positions[0]


async def test_after_a_forget_every_read_shows_the_fields_erased_and_the_chain_verifies(
    backend: Backend,
) -> None:
    store = backend.store
    account = await open_with_personal_data(store)
    other = await open_with_personal_data(store)
    stream = f"account-{account}"
    result = await store.forget(account, erased(account), expected_version=2)
    assert result.first_version == 3 and not result.replayed

    events = await store.read_stream(stream)
    assert events[0].data["owner"] is None and events[0].metadata["erased"] == ["owner"]
    assert events[1].data["reference"] is None and events[1].metadata["erased"] == ["reference"]
    assert events[1].data["amount"] == 250  # amounts, ids and the chain stay
    assert events[2].type == "PersonalDataErased"
    page = [e for e in await store.read_all(after=0) if e.stream == stream]
    assert [e.data.get("owner") for e in page][:1] == [None]
    got = await store.get_event(events[1].id)
    assert got is not None and got.data["reference"] is None
    # Another account's personal data is untouched.
    assert (await store.read_stream(f"account-{other}"))[0].data["owner"] == OWNER
    assert [k[0] for k in backend.key_rows()] == [other]
    report = await verify_chain(store)
    assert report.broken_at is None and report.head_position == await store.head_position()


async def test_a_forget_refused_by_its_expected_version_deletes_no_key(backend: Backend) -> None:
    store = backend.store
    account = await open_with_personal_data(store)
    with pytest.raises(WrongExpectedVersion):
        await store.forget(account, erased(account), expected_version=1)
    assert (await store.read_stream(f"account-{account}"))[0].data["owner"] == OWNER


async def test_personal_data_written_after_a_forget_is_sealed_under_a_new_key(
    backend: Backend,
) -> None:
    store = backend.store
    account = await open_with_personal_data(store)
    stream = f"account-{account}"
    await store.forget(account, erased(account), expected_version=StreamState.ANY)
    await store.append(stream, expected_version=3, events=[deposited(account, "later")])
    references = [e.data.get("reference") for e in await store.read_stream(stream)]
    assert references == [None, None, None, "later"]


async def test_concurrent_first_appends_of_personal_data_share_one_key(backend: Backend) -> None:
    store = backend.store
    account = f"acc-{uuid4().hex[:12]}"
    stream = f"account-{account}"
    await store.append(stream, expected_version=0, events=[opened(account, owner=None)])
    await asyncio.gather(
        *(
            store.append(
                stream, expected_version=StreamState.ANY, events=[deposited(account, f"r{n}")]
            )
            for n in range(8)
        )
    )
    references = sorted(str(e.data["reference"]) for e in (await store.read_stream(stream))[1:])
    assert references == [f"r{n}" for n in range(8)]
    assert len(backend.key_rows()) == 1


async def test_a_forget_by_another_instance_is_seen_by_the_next_append_here(
    backend: Backend,
) -> None:
    if backend.another is None:
        pytest.skip("the memory store has no second instance")
    store, other = backend.store, await backend.another()
    try:
        account = await open_with_personal_data(store)  # this instance keeps the key
        stream = f"account-{account}"
        await other.forget(account, erased(account), expected_version=2)
        # Sealed under the remembered key, the append's transaction finds it deleted and
        # seals it again under a new key: readable, not erased.
        await store.append(stream, expected_version=3, events=[deposited(account, "after")])
        references = [e.data.get("reference") for e in await other.read_stream(stream)]
        assert references == [None, None, None, "after"]
    finally:
        await other.close()


async def test_plaintext_written_before_sealing_stays_readable_and_is_counted(
    backend: Backend,
) -> None:
    store = backend.store
    account = f"acc-{uuid4().hex[:12]}"
    stream = f"account-{account}"
    # As code before sealing wrote it: straight to the backend, past append_batch's sealing.
    old = StreamAppend(stream, 0, [opened(account, owner="Old Plaintext Owner")])
    await store._append_batch([old])
    await store.append(stream, expected_version=1, events=[deposited(account, "sealed")])
    await store.forget(account, erased(account), expected_version=2)
    events = await store.read_stream(stream)
    assert events[0].data["owner"] == "Old Plaintext Owner"  # cannot be erased: said so
    assert events[1].data["reference"] is None
    assert await store.plaintext_personal_fields(account) == 1


async def test_sealed_rows_are_served_opened_from_memory_until_a_forget(backend: Backend) -> None:
    store = backend.store
    head = await store.head_position()
    account = await open_with_personal_data(store)
    page = await store.live_page(head, limit=100, max_bytes=1 << 20)
    if page is not None:  # the memory store serves no recent pages
        assert page.sealed
        assert [json.loads(e.text)["data"].get("owner") for e in page.events][:1] == [OWNER]
    await store.forget(account, erased(account), expected_version=2)
    # From the forget's return on, memory shows nothing of it: a read, which reads the key.
    after = store.recent_page(head, limit=100, max_bytes=1 << 20)
    assert after is None or OWNER not in [
        json.loads(e.text)["data"].get("owner") for e in after.events
    ]
    assert [e.data.get("owner") for e in await store.read_all(after=head)][:1] == [None]
