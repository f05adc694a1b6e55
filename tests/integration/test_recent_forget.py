"""Live pages of personal data served from memory (eventstore/recent.py), and forgotten the
moment a forget commits: on the same instance, on another instance of the same SQLite file,
and on another PostgreSQL instance (a NOTIFY in the forget's transaction, and a barrier before
a page showing personal data is served). Once a forget has returned, no read path of any
instance shows the plaintext: the store's live pages, the SSE feed and `GET /events`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import NewEvent
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app
from eventledger.services.stream.pages import encoded_envelope
from tests.integration.stream_support import SSEReader, running_server

OWNER, REFERENCE = "Søren Kierkegaard-Ødegaard", "rent for flat 4B, S. K.-Ø."
JSON = {"Content-Type": "application/json"}
Pair = tuple[EventStore, Callable[[], Awaitable[EventStore]]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    """A store, and a way to open another instance on the same database."""
    opened: list[EventStore] = []

    async def another() -> EventStore:
        store: EventStore
        if request.param == "sqlite":
            store = SqliteEventStore(tmp_path / "events.db")
        else:
            url = request.getfixturevalue("postgres_url")
            schema = request.getfixturevalue("pg_schema")
            store = await listening(await PostgresEventStore.open(url, schema=schema))
        opened.append(store)
        return store

    first = await another()
    try:
        yield first, another
    finally:
        for store in opened:
            await store.close()


async def listening(store: PostgresEventStore) -> PostgresEventStore:
    """The store once its listener hears forgets (until then, and on every reconnect, it
    forgets every recent page: what it committed before may have been forgotten unheard)."""
    async with asyncio.timeout(5):
        while not store._watch.connected:  # noqa: ASYNC110 - a flag set by the listener task
            await asyncio.sleep(0.01)
    return store


def account_events(account: str) -> list[NewEvent]:
    return [
        NewEvent(
            uuid.uuid4(),
            "AccountOpened",
            {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": OWNER},
            schema_version=2,
        ),
        NewEvent(
            uuid.uuid4(),
            "MoneyDeposited",
            {
                "account_id": account,
                "transaction_id": str(uuid.uuid4()),
                "amount": 1250,
                "reference": REFERENCE,
            },
        ),
    ]


def erasure(account: str) -> NewEvent:
    return NewEvent(uuid.uuid4(), "PersonalDataErased", {"account_id": account})


async def open_account(store: EventStore) -> str:
    account = f"acc-{uuid.uuid4().hex[:10]}"
    await store.append(f"account-{account}", expected_version=0, events=account_events(account))
    return account


def personal(texts: list[str]) -> list[Any]:
    data = [json.loads(t)["data"] for t in texts]
    return [d.get("owner", d.get("reference")) for d in data]


async def test_a_live_page_is_opened_once_in_memory_exactly_as_a_read_shows_it(
    stores: Pair,
) -> None:
    store, _ = stores
    head = await store.head_position()
    await open_account(store)
    page = await store.live_page(head, limit=100, max_bytes=1 << 20)
    assert page is not None and page.sealed  # from memory, not from the store
    assert personal([e.text for e in page.events]) == [OWNER, REFERENCE]
    # Byte for byte what a read of the store serves (the non-ASCII owner escaped alike).
    assert [e.text for e in page.events] == [
        encoded_envelope(e) for e in await store.read_all(after=head)
    ]
    again = store.recent_page(head, limit=100, max_bytes=1 << 20)
    assert again is not None and [e.text for e in again.events] == [e.text for e in page.events]


async def test_a_forget_here_drops_the_opened_pages_before_it_returns(stores: Pair) -> None:
    store, _ = stores
    head = await store.head_position()
    account = await open_account(store)
    other = await open_account(store)
    assert await store.live_page(head, limit=100, max_bytes=1 << 20) is not None
    await store.forget(account, erasure(account), expected_version=2)
    for page in (
        store.recent_page(head, limit=100, max_bytes=1 << 20),
        await store.live_page(head, limit=100, max_bytes=1 << 20),
    ):
        assert page is None or not {OWNER, REFERENCE} & set(personal([e.text for e in page.events]))
    log = await store.read_all(after=head)
    assert next(e.data.get("owner") for e in log if e.stream == f"account-{account}") is None
    assert next(e.data.get("owner") for e in log if e.stream == f"account-{other}") == OWNER
    # What follows the forget is sealed under a new key, opened from memory again.
    tail = await store.head_position()
    await store.append(
        f"account-{account}",
        expected_version=3,
        events=[NewEvent(uuid.uuid4(), "MoneyDeposited", {
            "account_id": account, "transaction_id": str(uuid.uuid4()), "amount": 5,
            "reference": "after the forget",
        })],
    )  # fmt: skip
    page = await store.live_page(tail, limit=100, max_bytes=1 << 20)
    assert page is not None and personal([e.text for e in page.events]) == ["after the forget"]


async def test_a_forget_by_another_instance_is_heard_before_the_next_live_page(
    stores: Pair,
) -> None:
    here, another = stores
    there = await another()
    head = await here.head_position()
    account = await open_account(here)
    page = await here.live_page(head, limit=100, max_bytes=1 << 20)
    assert page is not None and personal([e.text for e in page.events]) == [OWNER, REFERENCE]
    await there.forget(account, erasure(account), expected_version=2)
    # Right after the other instance's forget returned: no page of this one shows it.
    page = await here.live_page(head, limit=100, max_bytes=1 << 20)
    assert page is None or not {OWNER, REFERENCE} & set(personal([e.text for e in page.events]))
    assert [e.data.get("owner") for e in await here.read_all(after=head)][:1] == [None]


async def test_without_its_listener_a_postgresql_instance_serves_no_personal_data_from_memory(
    postgres_url: str, pg_schema: str
) -> None:
    store = await listening(await PostgresEventStore.open(postgres_url, schema=pg_schema))
    try:
        head = await store.head_position()
        await open_account(store)
        assert await store.live_page(head, limit=100, max_bytes=1 << 20) is not None
        store._watch.disconnected()  # forgets would go unheard
        assert await store.live_page(head, limit=100, max_bytes=1 << 20) is None
        store._listening()  # back: what it may have missed is forgotten
        store._watch.connected = True
        assert store.recent_page(head, limit=100, max_bytes=1 << 20) is None
    finally:
        await store.close()


# -- over HTTP: SSE and GET /events ----------------------------------------------------------


async def sse_after(http: httpx.AsyncClient, after: int, count: int) -> list[dict[str, Any]]:
    async with AsyncExitStack() as stack:
        response = await stack.enter_async_context(
            http.stream("GET", f"/events/subscribe?after={after}")
        )
        assert response.status_code == 200
        return [m.envelope() for m in await SSEReader(response).events(count)]


async def test_over_http_no_instance_serves_the_plaintext_once_a_forget_returned(
    stores: Pair,
) -> None:
    here, another = stores
    there = await another()

    async with AsyncExitStack() as stack:
        clients = []
        for store in (here, there):

            async def open_store(store: EventStore = store) -> EventStore:
                return store

            app = create_app(open_store=open_store, heartbeat_seconds=1)
            url = await stack.enter_async_context(running_server(app))
            clients.append(await stack.enter_async_context(httpx.AsyncClient(base_url=url)))
        http_here, http_there = clients

        for forgetter in (http_there, http_here):  # another instance's forget, then its own
            head = await here.head_position()
            account = await open_account(here)  # committed here: its live pages in memory
            before = await sse_after(http_here, head, 2)
            assert [e["data"].get("owner", e["data"].get("reference")) for e in before] == [
                OWNER,
                REFERENCE,
            ]
            forgot = await forgetter.post(f"/admin/accounts/{account}/forget", headers=JSON)
            assert forgot.status_code == 201, forgot.text
            # Right after it answered: a new subscriber here, from before the account and
            # from its second event, and the log.
            for after in (head, head + 1):
                live = await sse_after(http_here, after, 3 - (after - head))
                assert not {OWNER, REFERENCE} & {str(v) for e in live for v in e["data"].values()}
                assert all(e["data"].get("owner") is None for e in live)
                assert all(e["data"].get("reference") is None for e in live)
            events = (await http_here.get("/events", params={"after": head})).json()["events"]
            assert OWNER not in json.dumps(events) and REFERENCE not in json.dumps(events)
            assert events[0]["metadata"]["erased"] == ["owner"]
