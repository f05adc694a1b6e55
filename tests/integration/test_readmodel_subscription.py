"""The SSE client and the projection runner, against the real stream service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

import aiohttp
import pytest

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.store import AccountingProjection
from eventledger.services.readside.db import (
    ReadModelDB,
    ReadModelUnavailable,
    Session,
    SqliteReadModelDB,
)
from eventledger.services.readside.projection import EventRejected
from eventledger.services.readside.runner import ProjectionRunner
from eventledger.services.readside.subscription import (
    SSEMessage,
    SSEParser,
    StreamSubscription,
    Undecodable,
    fetch_head_position,
)
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import Ledger, StreamServer

# -- the SSE parser -----------------------------------------------------------------------

SAMPLE = (
    b": connected after=0\n\n"
    b'id: 1\nevent: MoneyDeposited\ndata: {"a": 1}\n\n'
    b": heartbeat\n\n"
    b"id: 2\ndata: first line\ndata: second line\n\n"
    b"event: NoData\n\n"
    b"data:no space\nretry: 100\nunknown: field\nfieldonly\n\n"
)
EXPECTED = [
    SSEMessage("1", "MoneyDeposited", '{"a": 1}'),
    SSEMessage("2", "message", "first line\nsecond line"),
    SSEMessage("2", "message", "no space"),
]


def parse(chunks: Sequence[bytes]) -> list[SSEMessage]:
    parser = SSEParser()
    return [m for chunk in chunks for m in parser.feed(chunk)]


def test_the_parser_reads_ids_events_comments_and_multi_line_data() -> None:
    assert parse([SAMPLE]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_the_parser_accepts_every_kind_of_line_end(newline: bytes) -> None:
    assert parse([SAMPLE.replace(b"\n", newline)]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_the_parser_gives_the_same_messages_however_the_bytes_are_split(newline: bytes) -> None:
    sample = b"\xef\xbb\xbf" + SAMPLE.replace(b"\n", newline)
    for cut in range(len(sample) + 1):
        assert parse([sample[:cut], sample[cut:]]) == EXPECTED, cut
    assert parse([bytes([b]) for b in sample]) == EXPECTED


def test_a_message_is_only_dispatched_at_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 5\ndata: x\n") == []
    assert parser.feed(b"\n") == [SSEMessage("5", "message", "x")]


# -- the subscription client --------------------------------------------------------------


@pytest.fixture
async def stream() -> AsyncIterator[StreamServer]:
    async with StreamServer(heartbeat_seconds=0.2) as server:
        yield server


log = support.log  # a ledger client of `stream`


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def take(
    items: AsyncIterator[RecordedEvent | Undecodable], count: int
) -> list[RecordedEvent | Undecodable]:
    async with asyncio.timeout(10):
        return [await anext(items) for _ in range(count)]


async def test_the_subscription_yields_decoded_events_after_a_position(
    stream: StreamServer, log: Ledger, http: aiohttp.ClientSession
) -> None:
    await log.open("a")
    await log.deposit("a", 10)
    await log.deposit("a", 20)
    subscription = StreamSubscription(stream.url, http)
    async with aclosing(subscription.events(after=1)) as items:
        first = await take(items, 2)
        live = await log.withdraw("a", 5)
        (last,) = await take(items, 1)
        assert subscription.connected and subscription.last_seen == live
    assert not subscription.connected
    assert all(isinstance(e, RecordedEvent) for e in [*first, last])
    assert [e.position for e in [*first, last]] == [2, 3, live]
    assert isinstance(last, RecordedEvent) and last.type == "MoneyWithdrawn"
    assert last.data["amount"] == 5 and last.stream == "account-a"


async def test_the_subscription_resumes_without_gap_or_duplicate_after_a_restart(
    stream: StreamServer, log: Ledger, http: aiohttp.ClientSession
) -> None:
    await log.open("a")
    subscription = StreamSubscription(stream.url, http)
    async with aclosing(subscription.events(after=0)) as items:
        assert [e.position for e in await take(items, 1)] == [1]
        await stream.stop()
        await stream.start()
        started = time.monotonic()
        positions = [await log.deposit("a", n) for n in (1, 2, 3)]
        got = await take(items, 3)
    assert [e.position for e in got] == positions
    assert time.monotonic() - started < 5


async def test_the_head_position_comes_from_the_stream_service_health(
    stream: StreamServer, log: Ledger, http: aiohttp.ClientSession
) -> None:
    await log.open("a")
    assert await fetch_head_position(http, stream.url) == 1
    await stream.stop()
    started = time.monotonic()
    assert await fetch_head_position(http, stream.url) is None
    assert time.monotonic() - started < 1


# -- the runner ---------------------------------------------------------------------------


class FlakyProjection(AccountingProjection):
    """Writes its rows, then fails the transaction `failures` times, as a database that goes
    away mid-transaction would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        rejected = super().apply(session, events)
        if self.failures:
            self.failures -= 1
            raise ReadModelUnavailable("the database went away (test)")
        return rejected


def sqlite(path: Path) -> ReadModelDB:
    return SqliteReadModelDB(path, namespace="accounting")


async def balances(runner: ProjectionRunner) -> list[tuple[str, int, int]]:
    return await runner.read(
        lambda s: [
            (str(r[0]), int(r[1]), int(r[2]))
            for r in s.fetchall(
                "SELECT a.account_id, a.balance, COUNT(t.position) FROM accounts a "
                "LEFT JOIN transactions t ON t.account_id = a.account_id "
                "GROUP BY a.account_id, a.balance ORDER BY a.account_id"
            )
        ]
    )


async def test_a_failed_batch_is_rolled_back_whole_and_applied_once_on_retry(
    stream: StreamServer, log: Ledger, tmp_path: Path
) -> None:
    await log.open("a")
    head = await log.deposit("a", 100)
    runner = ProjectionRunner(
        FlakyProjection(failures=2),
        stream_url=stream.url,
        open_db=lambda: sqlite(tmp_path / "a.db"),
    )
    await runner.start()
    try:
        assert await runner.wait_for(head, 10)
        assert await balances(runner) == [("a", 100, 1)]
        assert runner.last_error is None
    finally:
        await runner.stop()


async def test_two_runners_on_one_database_never_apply_an_event_twice(
    stream: StreamServer, log: Ledger, tmp_path: Path
) -> None:
    accounts = [f"acc{i}" for i in range(5)]
    for account in accounts:
        await log.open(account)
    runners = [
        ProjectionRunner(
            AccountingProjection(),
            stream_url=stream.url,
            open_db=lambda: sqlite(tmp_path / "shared.db"),
            batch_size=7,
        )
        for _ in range(2)
    ]
    for runner in runners:
        await runner.start()
    try:
        head = 0
        for n in range(60):
            head = await log.deposit(accounts[n % 5], 1)
        assert await runners[0].wait_for(head, 10) or await runners[1].wait_for(head, 10)
        assert await balances(runners[0]) == [(a, 12, 12) for a in accounts]
        assert all(r.halted is None for r in runners)
    finally:
        for runner in runners:
            await runner.stop()
