"""The command side scaled out (issue 12): two stream instances on one PostgreSQL database,
two transaction instances, concurrent keyed commands round-robin over them. Money and
idempotency hold as with one of each."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    HTTP,
    ServiceProcess,
    fresh_postgres_database,
    log_events,
    new_id,
    wait_for,
)

pytestmark = pytest.mark.slow

ACCOUNTS = 12
WORKERS = 16
COMMANDS_PER_WORKER = 25
TWICE_EVERY = 8  # every 8th command is sent to both instances at once, with one key


@pytest.fixture
def scaled_out(postgres_url: str, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Two stream instances on one fresh database; two transaction instances, one on each,
    sharing one data dir (so one idempotency secret, as an installation's instances must)."""
    with ExitStack() as stack:
        store = stack.enter_context(fresh_postgres_database(postgres_url))
        logs = tmp_path / "logs"
        streams = [
            ServiceProcess("stream", tmp_path / f"stream{i}", logs, ["--store", store])
            for i in range(2)
        ]
        transactions = [
            ServiceProcess("transaction", tmp_path / "transaction", logs, ["--stream-url", s.url])
            for s in streams
        ]
        for process in (*streams, *transactions):
            stack.callback(process.stop)
        for stream in streams:
            stream.start().wait_healthy()
        for process in transactions:
            process.start().wait_healthy()
        # Each follows the log before the load starts (its live feed is subscribed).
        for process in transactions:
            wait_for(partial(following, process), timeout=10, what=f"{process.url} follows")
        yield [*streams, *transactions]


def following(process: ServiceProcess) -> bool:
    metrics = HTTP.get(f"{process.url}/metrics").text
    return "eventledger_transaction_cache_following 1.0" in metrics


async def send(
    client: httpx.AsyncClient, urls: list[str], path: str, body: dict[str, Any], key: str
) -> httpx.Response:
    """POST with an Idempotency-Key, sent again (to the next instance) while it answers 503."""
    for attempt in range(40):
        response = await client.post(
            urls[attempt % len(urls)] + path, json=body, headers={"Idempotency-Key": key}
        )
        if response.status_code != 503:
            return response
    raise AssertionError(f"{path}: 503 forty times")


async def test_two_transaction_and_two_stream_instances_keep_every_cent_and_every_key_once(
    scaled_out: list[ServiceProcess], client: httpx.AsyncClient
) -> None:
    stream_a, stream_b, tx_a, tx_b = scaled_out
    urls = [tx_a.url, tx_b.url]
    accounts = [new_id("scale") for _ in range(ACCOUNTS)]
    for number, account in enumerate(accounts):
        body = {"account_id": account, "currency": "EUR"}
        response = await send(client, urls[number % 2 :], "/accounts", body, uuid.uuid4().hex)
        assert response.status_code == 201, response.text

    accepted: Counter[str] = Counter()
    answers: dict[str, list[dict[str, Any]]] = {}  # key -> every answer given to it

    async def worker(number: int) -> None:
        rng = random.Random(number)
        for turn in range(COMMANDS_PER_WORKER):
            account, amount, key = rng.choice(accounts), rng.randint(1, 1000), uuid.uuid4().hex
            path, body = f"/accounts/{account}/deposits", {"amount": amount}
            mine = urls[(number + turn) % 2 :] + urls[: (number + turn) % 2]
            responses: list[httpx.Response]
            if turn % TWICE_EVERY == 0:  # the same key on both instances at the same moment
                responses = list(
                    await asyncio.gather(
                        send(client, mine, path, body, key),
                        send(client, mine[::-1], path, body, key),
                    )
                )
            else:
                responses = [await send(client, mine, path, body, key)]
            for response in responses:
                assert response.status_code in (200, 201), response.text
            answers[key] = [r.json() for r in responses]
            accepted[account] += amount

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))

    # One answer per key, whichever instance gave it, and one event set per key in the log.
    for key, given in answers.items():
        assert all(a == given[0] for a in given), (key, given)
    events = await log_events(client, stream_b.url, stream_prefix="account-scale-")
    deposits = [e for e in events if e["type"] == "MoneyDeposited"]
    by_transaction = Counter(e["data"]["transaction_id"] for e in deposits)
    assert len(deposits) == len(answers) == WORKERS * COMMANDS_PER_WORKER
    assert set(by_transaction.values()) == {1}
    assert set(by_transaction) == {given[0]["transaction_id"] for given in answers.values()}

    # Every acknowledged deposit is in the log where its answer says; balances add up.
    at = {e["position"]: e for e in deposits}
    for given in answers.values():
        event = at[given[0]["position"]]
        assert event["data"]["transaction_id"] == given[0]["transaction_id"]
    mine = {account: 0 for account in accounts}
    for event in deposits:
        if event["data"]["account_id"] in mine:
            mine[event["data"]["account_id"]] += event["data"]["amount"]
    assert mine == {account: accepted[account] for account in accounts}
    # Both stream instances serve the same log, in the same order.
    assert await log_events(client, stream_a.url, stream_prefix="account-scale-") == events
