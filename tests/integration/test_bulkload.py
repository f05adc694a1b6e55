"""`eventstore.bulkload`: a big log of valid account events, through the normal append path."""

from __future__ import annotations

from pathlib import Path

from eventledger.domain.events import ACCOUNT_STREAM_PREFIX
from eventledger.domain.validity import AccountFacts, check_append, decode_event
from eventledger.eventstore.bulkload import bulkload
from eventledger.eventstore.hashing import verify_chain
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore


async def assert_every_account_is_valid(store: EventStore, prefix: str, accounts: int) -> int:
    """Check each account stream of the load with the rule the guard and the readers apply;
    returns the events checked."""
    checked = 0
    for n in range(accounts):
        account_id = f"{prefix}-{n}"
        events = await store.read_stream(ACCOUNT_STREAM_PREFIX + account_id)
        decoded = [decode_event(e.type, e.data, schema_version=e.schema_version) for e in events]
        facts = check_append(AccountFacts(account_id), decoded)
        assert facts.version == len(events) and facts.exists and not facts.closed
        checked += len(events)
    return checked


async def test_bulkload_fills_a_sqlite_store_with_valid_account_events(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        written: list[int] = []
        report = await bulkload(
            store, events=5_000, accounts=40, batch=500, streams_per_batch=10,
            concurrency=3, progress=written.append,
        )  # fmt: skip
        assert (report.events, report.accounts, report.head_position) == (5_000, 40, 5_000)
        assert written[-1] == 5_000 and written == sorted(written)
        assert await assert_every_account_is_valid(store, report.prefix, 40) == 5_000
        chain = await verify_chain(store)
        assert (chain.checked, chain.broken_at) == (5_000, None)
        # The biggest append of the load: about `batch` events.
        log = await store.read_all(after=0, limit=10_000)
        assert len({e.batch_end for e in log}) == 10
        # Time-ordered ids (UUIDv7): each append lands on the right edge of the id index.
        assert {e.id.version for e in log} == {7}
    finally:
        await store.close()


async def test_bulkload_adds_new_accounts_to_a_store_that_has_events() -> None:
    store = MemoryEventStore()
    first = await bulkload(store, events=300, accounts=7)
    second = await bulkload(store, events=301, accounts=7, batch=50, streams_per_batch=3)
    assert first.prefix != second.prefix
    assert second.head_position == 601
    assert await assert_every_account_is_valid(store, second.prefix, 7) == 301


async def test_bulkload_of_a_few_events_opens_accounts_first() -> None:
    store = MemoryEventStore()
    report = await bulkload(store, events=3, accounts=10)
    assert report.events == 3
    events = await store.read_all(after=0)
    assert len(events) == 3 and events[0].type == "AccountOpened"
    assert await assert_every_account_is_valid(store, report.prefix, report.accounts) == 3
