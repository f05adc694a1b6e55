"""The writer lease of stream instances sharing one PostgreSQL store (postgres_lease.py):
one instance holds it, the others learn its URL, and a holder that goes away frees it for
another at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from eventledger.eventstore.postgres import PostgresEventStore

INTERVAL = 0.05


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - a lease state offers nothing to await
                await asyncio.sleep(INTERVAL / 2)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


@pytest.fixture
async def opened(postgres_url: str, pg_schema: str) -> AsyncIterator[list[PostgresEventStore]]:
    stores: list[PostgresEventStore] = []
    yield stores
    for store in stores:
        await store.close()


async def test_one_instance_holds_the_lease_and_the_others_hand_appends_to_it(
    postgres_url: str, pg_schema: str, opened: list[PostgresEventStore]
) -> None:
    for name in ("a", "b", "c"):
        opened.append(
            await PostgresEventStore.open(
                postgres_url,
                schema=pg_schema,
                advertise_url=f"http://{name}.example:8081",
                lease_interval=INTERVAL,
            )
        )
    await until(
        lambda: (
            sum(s.lease_holder for s in opened) == 1
            and all(s.forward_to() is not None for s in opened if not s.lease_holder)
        ),
        "one holder, known to the others",
    )
    (holder,) = [s for s in opened if s.lease_holder]
    holder_url = {store: name for store, name in zip(opened, "abc", strict=True)}[holder]
    for store in opened:
        expected = None if store is holder else f"http://{holder_url}.example:8081"
        assert store.forward_to() == expected
    # Stays where it is while the holder lives.
    await asyncio.sleep(INTERVAL * 5)
    assert [s.lease_holder for s in opened].count(True) == 1 and holder.lease_holder


async def first_then_second(
    url: str, schema: str, opened: list[PostgresEventStore]
) -> tuple[PostgresEventStore, PostgresEventStore]:
    """A first instance that holds the lease, then a second that hands appends to it."""
    first = await PostgresEventStore.open(
        url, schema=schema, advertise_url="http://first:1", lease_interval=INTERVAL
    )
    opened.append(first)
    await until(lambda: first.lease_holder, "the first instance holds the lease")
    second = await PostgresEventStore.open(
        url, schema=schema, advertise_url="http://second:2", lease_interval=INTERVAL
    )
    opened.append(second)
    await until(lambda: second.forward_to() == "http://first:1", "the second learns the first")
    return first, second


async def test_a_holder_that_goes_away_frees_the_lease_for_another(
    postgres_url: str, pg_schema: str, opened: list[PostgresEventStore]
) -> None:
    first, second = await first_then_second(postgres_url, pg_schema, opened)
    assert not second.lease_holder

    await first.close()
    await until(lambda: second.lease_holder, "the second takes the freed lease")
    assert second.forward_to() is None


async def test_a_killed_holders_session_frees_the_lease(
    postgres_url: str, pg_schema: str, opened: list[PostgresEventStore]
) -> None:
    """Like a kill -9 of the holder's process: its session ends on the server."""
    first, second = await first_then_second(postgres_url, pg_schema, opened)

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objid::bigint = %s",
            list(first._lease._halves),  # type: ignore[union-attr]
        )
    await until(lambda: second.lease_holder, "the second takes the lease")
    # The first learns it lost the lease with its session, and hands appends to the second.
    await until(lambda: first.forward_to() == "http://second:2", "the first follows")
    assert not first.lease_holder


async def test_an_instance_without_an_advertised_url_appends_itself(
    postgres_url: str, pg_schema: str, opened: list[PostgresEventStore]
) -> None:
    leased = await PostgresEventStore.open(
        postgres_url, schema=pg_schema, advertise_url="http://leased:1", lease_interval=INTERVAL
    )
    opened.append(leased)
    plain = await PostgresEventStore.open(postgres_url, schema=pg_schema)
    opened.append(plain)
    await until(lambda: leased.lease_holder, "the advertised instance holds the lease")
    assert plain.forward_to() is None and not plain.lease_holder
    assert leased.forward_to() is None
