"""Independent readers of one log: a second accounting instance, a live subscriber."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    ServiceProcess,
    System,
    all_pages,
    min_position,
    new_id,
    sse_events,
)

pytestmark = pytest.mark.slow

WRITERS = 32
APPENDS_PER_WRITER = 10
EVENTS_PER_APPEND = 2


@pytest.fixture
def second_accounting(system: System, tmp_path: Path) -> Iterator[ServiceProcess]:
    extra = ["--stream-url", system.stream.url]
    process = ServiceProcess("accounting", tmp_path / "empty", tmp_path / "logs", extra)
    try:
        yield process.start().wait_healthy()
    finally:
        process.stop()


async def test_a_second_accounting_instance_on_an_empty_data_dir_equals_the_first(
    system: System, second_accounting: ServiceProcess, client: httpx.AsyncClient
) -> None:
    # Some accounts of its own, so that there is something to compare even when run alone.
    tx = system.transaction.url
    mine = [new_id("replica") for _ in range(3)]
    for number, account in enumerate(mine, start=1):
        response = await client.post(
            f"{tx}/accounts", json={"account_id": account, "currency": "EUR"}
        )
        assert response.status_code == 201
        for _ in range(number):
            response = await client.post(f"{tx}/accounts/{account}/deposits", json={"amount": 7})
            assert response.status_code == 201
    transfer = {"from_account": mine[2], "to_account": mine[0], "amount": 5}
    assert (await client.post(f"{tx}/transfers", json=transfer)).status_code == 201

    head = system.head_position()
    headers = min_position(head)

    async def everything(base: str) -> tuple[list[dict[str, Any]], list[Any]]:
        accounts = await all_pages(
            client, f"{base}/accounts", params={"limit": 100}, headers=headers
        )
        histories = [
            await all_pages(
                client,
                f"{base}/accounts/{account['account_id']}/transactions",
                params={"limit": 100},
                headers=headers,
                cursor="before",
            )
            for account in accounts[:20] + [a for a in accounts if a["account_id"] in mine]
        ]
        return accounts, histories

    first, second = await asyncio.gather(
        everything(system.accounting.url), everything(second_accounting.url)
    )
    assert {a["account_id"] for a in first[0]} >= set(mine)
    assert second == first


async def test_a_subscriber_sees_every_event_of_32_concurrent_writers_once_and_in_order(
    system: System, client: httpx.AsyncClient
) -> None:
    stream_url = system.stream.url
    prefix = f"e2e-sse-{uuid.uuid4().hex[:12]}-"
    after = system.head_position()
    total = WRITERS * APPENDS_PER_WRITER * EVENTS_PER_APPEND
    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def subscriber() -> None:
        params = {"after": after, "stream_prefix": prefix, "heartbeat": 1}
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as own:
            ready.set()
            async for event_id, event_type, envelope in sse_events(
                own, f"{stream_url}/events/subscribe", params
            ):
                assert event_id == str(envelope["position"])
                assert event_type == envelope["type"]
                seen.append(envelope)
                if len(seen) == total:
                    return

    async def writer(number: int) -> list[str]:
        stream, ids = f"{prefix}{number}", []
        for _ in range(APPENDS_PER_WRITER):
            events = [
                {"id": str(uuid.uuid4()), "type": "E2eTick", "data": {"writer": number}}
                for _ in range(EVENTS_PER_APPEND)
            ]
            response = await client.post(
                f"{stream_url}/streams/{stream}",
                json={"expected_version": "any", "events": events},
            )
            assert response.status_code == 201, response.text
            ids += [e["id"] for e in events]
        return ids

    following = asyncio.create_task(subscriber())
    await ready.wait()
    written = await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    await asyncio.wait_for(following, timeout=30.0)

    positions = [e["position"] for e in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert len({e["id"] for e in seen}) == len(seen) == total
    assert sorted(e["id"] for e in seen) == sorted(i for ids in written for i in ids)
    for number in range(WRITERS):
        versions = [e["stream_version"] for e in seen if e["stream"] == f"{prefix}{number}"]
        assert versions == list(range(1, APPENDS_PER_WRITER * EVENTS_PER_APPEND + 1))
