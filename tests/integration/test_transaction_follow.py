"""Several transaction instances: caches that follow the log, conflicts that read only what
they missed and decide again at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from eventledger.domain.account import initial_state
from eventledger.domain.commands import Deposit
from eventledger.eventstore.records import AppendResult, NewEvent, StreamState
from eventledger.services.transaction.accounts import AccountCache, fold_recorded
from eventledger.services.transaction.follower import LogFollower
from eventledger.services.transaction.handlers import CommandHandler
from eventledger.services.transaction.idempotency import CommandIds, fingerprint
from eventledger.services.transaction.stream_client import (
    StreamClient,
    StreamSlice,
    WrongExpectedVersion,
)
from tests.integration.test_transaction_api import IDEMPOTENCY_SECRET, running_ledger
from tests.integration.test_transaction_concurrency import retries
from tests.unit.test_transaction_follower import deposit, opened, sse_data

pytestmark = pytest.mark.asyncio


async def until(condition: Callable[[], object], what: str, *, seconds: float = 5.0) -> None:
    """Await a condition another task makes true (the cache has no event to wait on)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the follower offers no event to await
            await asyncio.sleep(0.005)


def ids(command: str = "deposit") -> CommandIds:
    return CommandIds(
        key=None,
        secret=b"s" * 32,
        request_fingerprint=None,
        correlation_id=None,
        command=command,
        new_id=uuid.uuid4,
    )


async def test_an_instance_following_the_log_decides_on_what_another_instance_wrote() -> None:
    async with running_ledger(follow_log=True) as ledger:
        follower: LogFollower = ledger.app.state.follower
        await until(lambda: follower.connected, "the follower subscribed")
        account_id = await ledger.open()  # cached here at version 1, balance 0
        other = await ledger.another_instance()
        response = await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
        assert response.status_code == 201, response.text
        cache: AccountCache = ledger.app.state.handler.cache
        await until(lambda: getattr(cache.peek(account_id), "version", 0) == 2, "followed")

        before = await retries(ledger.http)
        response = await ledger.http.post(
            f"/accounts/{account_id}/withdrawals", json={"amount": 60}
        )
        assert response.status_code == 201, response.text
        assert response.json()["balance"] == 40
        assert await retries(ledger.http) == before  # decided on current state: no conflict
        metrics = (await ledger.http.get("/metrics")).text
        assert "eventledger_transaction_cache_following 1.0" in metrics
        assert 'eventledger_transaction_cache_follow_events_total{outcome="applied"}' in metrics


class FakeFeed:
    """A stream service's `/health` and `/events/subscribe`, fed by the test."""

    def __init__(self) -> None:
        self.head = 102
        self.subscriptions: list[dict[str, str]] = []
        self.sent: asyncio.Queue[str | None] = asyncio.Queue()

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "head_position": self.head})

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        self.subscriptions.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (data := await self.sent.get()) is not None:
            await response.write(f"data: {data}\n\n".encode())
        return response  # the feed ends


async def test_a_lost_feed_empties_the_cache_and_the_follower_subscribes_again_from_the_head() -> (
    None
):
    feed = FakeFeed()
    app = web.Application()
    app.router.add_get("/health", feed.health)
    app.router.add_get("/events/subscribe", feed.subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cache = AccountCache()
    follower = LogFollower(f"http://127.0.0.1:{port}", cache, min_delay=0.01, max_delay=0.05)
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: follower.connected, "subscribed")
        assert feed.subscriptions == [{"after": "102", "stream_prefix": "account-"}]
        cache.put(fold_recorded(initial_state("a"), [opened(), deposit(2, 50)]))
        feed.sent.put_nowait(sse_data(deposit(3, 25)))
        await until(lambda: getattr(cache.peek("a"), "version", 0) == 3, "followed")

        feed.head = 500
        feed.sent.put_nowait(None)
        await until(lambda: len(feed.subscriptions) == 2, "subscribed again")
        assert len(cache) == 0  # nothing cached while the feed was away is vouched for
        assert feed.subscriptions[1] == {"after": "500", "stream_prefix": "account-"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        feed.sent.put_nowait(None)
        await runner.cleanup()


class CountingClient(StreamClient):
    """A stream client that remembers where each stream read started."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[tuple[str, int]] = []

    async def read_stream(self, stream: str, **options: Any) -> StreamSlice:
        self.reads.append((stream, options.get("from_version", 1)))
        return await super().read_stream(stream, **options)


async def test_a_conflict_reads_only_the_events_after_the_version_held_and_does_not_wait() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.open()
        other = await ledger.another_instance()
        waits: list[int] = []

        async def backoff(attempt: int) -> None:
            waits.append(attempt)

        async with CountingClient(ledger.stream.url) as client:
            handler = CommandHandler(client, backoff=backoff)
            await handler.deposit(Deposit(account_id, str(uuid.uuid4()), 5, None), ids())
            for _ in range(3):  # another instance writes: the state held here is stale
                await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
            client.reads.clear()
            result = await handler.deposit(Deposit(account_id, str(uuid.uuid4()), 1, None), ids())
        assert result.balance == 306
        stream = f"account-{account_id}"
        assert client.reads == [(stream, 3)]  # only versions 3.. after the conflict at 2
        assert waits == []  # decided again at once


class ConflictingClient(StreamClient):
    """A stream client whose first `conflicts` appends meet another writer."""

    def __init__(self, url: str, conflicts: int) -> None:
        super().__init__(url)
        self.conflicts = conflicts

    async def append(
        self, stream: str, *, expected_version: int | StreamState, events: Any
    ) -> AppendResult:
        if self.conflicts > 0:
            self.conflicts -= 1
            raise WrongExpectedVersion("test", stream=stream, actual_version=None)
        new: list[NewEvent] = list(events)
        return await super().append(stream, expected_version=expected_version, events=new)


async def test_only_repeated_conflicts_back_off_and_contention_refuses_nothing() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.open()
        waits: list[int] = []
        counted: list[str] = []

        async def backoff(attempt: int) -> None:
            waits.append(attempt)

        async with ConflictingClient(ledger.stream.url, conflicts=4) as client:
            handler = CommandHandler(client, backoff=backoff, on_retry=counted.append)
            result = await handler.deposit(Deposit(account_id, str(uuid.uuid4()), 7, None), ids())
        assert result.balance == 7
        assert counted == ["deposit"] * 4
        assert waits == [2, 3, 4]  # the first retry at once, then jittered waits


class LookupCountingClient(CountingClient):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.lookups = 0

    async def get_event(self, event_id: uuid.UUID) -> Any:
        self.lookups += 1
        return await super().get_event(event_id)


def keyed(key: str, account_id: str, amount: int) -> CommandIds:
    path = f"/accounts/{account_id}/deposits"
    return CommandIds(
        key=key,
        secret=IDEMPOTENCY_SECRET,
        request_fingerprint=fingerprint(
            "POST", path, {"amount": amount, "reference": None}, IDEMPOTENCY_SECRET
        ),
        command="deposit",
    )


async def test_a_keyed_conflict_learns_from_the_caught_up_events_without_a_lookup() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.open()
        other = await ledger.another_instance()
        async with LookupCountingClient(ledger.stream.url) as client:
            handler = CommandHandler(client)
            await handler.deposit(Deposit(account_id, str(uuid.uuid4()), 1, None), ids())
            await other.post(f"/accounts/{account_id}/deposits", json={"amount": 100})
            key = uuid.uuid4().hex
            result = await handler.deposit(
                Deposit(account_id, keyed(key, account_id, 5).transaction_id, 5, None),
                keyed(key, account_id, 5),
            )
            assert (result.balance, result.replayed, client.lookups) == (106, False, 0)

            # The same key written meanwhile by the other instance: its answer is ours.
            key = uuid.uuid4().hex
            first = await other.post(
                f"/accounts/{account_id}/deposits",
                json={"amount": 7},
                headers={"Idempotency-Key": key},
            )
            assert first.status_code == 201, first.text
            again = await handler.deposit(
                Deposit(account_id, keyed(key, account_id, 7).transaction_id, 7, None),
                keyed(key, account_id, 7),
            )
        assert again.replayed and again.balance == first.json()["balance"] == 113
        assert await ledger.balance(account_id) == 113
