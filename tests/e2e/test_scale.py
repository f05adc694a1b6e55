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


@pytest.fixture(params=["lease", "each"])
def scaled_out(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[ServiceProcess]]:
    """Two stream instances on one fresh database; two transaction instances, one on each,
    sharing one data dir (so one idempotency secret, as an installation's instances must).
    "lease": the stream instances elect a writer and the other hands it its appends
    (--advertise-url); "each": both append themselves."""
    with ExitStack() as stack:
        store = stack.enter_context(fresh_postgres_database(postgres_url))
        logs = tmp_path / "logs"
        streams = [
            ServiceProcess(
                "stream",
                tmp_path / f"stream{i}",
                logs,
                ["--store", store],
                advertise=request.param == "lease",
            )
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
    if stream_a.advertise:
        # One of them wrote, and the other handed it its appends (none came back to it).
        handed = [forwarded(stream, "answered") for stream in (stream_a, stream_b)]
        assert sorted(handed)[0] == 0 and sorted(handed)[1] > 0, handed
        assert forwarded(stream_a, "appended_here") == forwarded(stream_b, "appended_here") == 0
        # Both transaction instances follow the writer's feed (rows there first), not their own.
        writer, other = (stream_a, stream_b) if lease_held(stream_a) else (stream_b, stream_a)
        wait_for(
            lambda: (subscribers(writer), subscribers(other)) == (2, 0),
            timeout=10,
            what="both transaction instances subscribed at the writer",
        )


def subscribers(stream: ServiceProcess) -> float:
    prefix = "eventledger_stream_subscribers "
    for line in HTTP.get(f"{stream.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    raise AssertionError(f"{stream.url}/metrics has no {prefix.strip()}")


def forwarded(stream: ServiceProcess, outcome: str) -> float:
    """The stream instance's POST /appends handed to the writer, by outcome."""
    prefix = f'eventledger_stream_forwarded_appends_total{{outcome="{outcome}"}} '
    for line in HTTP.get(f"{stream.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    raise AssertionError(f"{stream.url}/metrics has no {prefix.strip()}")


def lease_held(stream: ServiceProcess) -> bool:
    metrics = HTTP.get(f"{stream.url}/metrics").text
    return "eventledger_stream_writer_lease_held 1.0" in metrics


async def test_appends_go_on_when_the_writing_stream_instance_is_killed(
    postgres_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """Two stream instances elect a writer; kill -9 it while commands keep coming through the
    other: every command is acknowledged (a 503 is sent again with its key), each once in
    the log, and the survivor takes the lease."""
    with ExitStack() as stack:
        store = stack.enter_context(fresh_postgres_database(postgres_url))
        logs = tmp_path / "logs"
        streams = [
            ServiceProcess("stream", tmp_path / f"s{i}", logs, ["--store", store], advertise=True)
            for i in range(2)
        ]
        for stream in streams:
            stack.callback(stream.stop)
            stream.start().wait_healthy()
        writer = wait_for(
            lambda: next((s for s in streams if lease_held(s)), None),
            timeout=10,
            what="a stream instance holds the writer lease",
        )
        (survivor,) = [s for s in streams if s is not writer]
        tx = ServiceProcess("transaction", tmp_path / "tx", logs, ["--stream-url", survivor.url])
        stack.callback(tx.stop)
        tx.start().wait_healthy()
        wait_for(partial(following, tx), timeout=10, what="the transaction service follows")

        accounts = [new_id("fail") for _ in range(4)]
        for account in accounts:
            body = {"account_id": account, "currency": "EUR"}
            response = await send(client, [tx.url], "/accounts", body, uuid.uuid4().hex)
            assert response.status_code == 201, response.text
        accepted: Counter[str] = Counter()
        keys: set[str] = set()

        async def deposits(count: int) -> None:
            async def one(number: int) -> None:
                account, key = accounts[number % len(accounts)], uuid.uuid4().hex
                path = f"/accounts/{account}/deposits"
                response = await send(client, [tx.url], path, {"amount": 5}, key)
                assert response.status_code == 201, response.text
                accepted[account] += 5
                keys.add(key)

            await asyncio.gather(*(one(n) for n in range(count)))

        await deposits(40)
        assert forwarded(survivor, "answered") > 0  # handed to the writer while it lived

        killed = asyncio.ensure_future(asyncio.to_thread(writer.kill))
        await deposits(80)  # during and after the kill
        await killed
        wait_for(partial(lease_held, survivor), timeout=15, what="the survivor takes the lease")
        # The transaction service follows the log again, at the instance that writes now.
        wait_for(partial(following, tx), timeout=15, what="the follower is back")
        assert subscribers(survivor) == 1
        await deposits(40)

        events = await log_events(client, survivor.url, stream_prefix="account-fail-")
        money = [e for e in events if e["type"] == "MoneyDeposited"]
        assert len(money) == len(keys) == 160
        assert len({e["data"]["transaction_id"] for e in money}) == 160
        totals: Counter[str] = Counter()
        for event in money:
            totals[event["data"]["account_id"]] += event["data"]["amount"]
        assert totals == accepted
