"""`GET /transactions/{id}/events` on the stream service: the account events of one
transaction, found through the store's index; bad ids and limits are problem documents."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.test_stream_api import new_app

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = new_app()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield c


async def open_account(client: httpx.AsyncClient, account: str) -> None:
    body = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    response = await client.post(
        f"/streams/account-{account}",
        json={
            "expected_version": 0,
            "events": [{"type": "AccountOpened", "schema_version": 2, "data": body}],
        },
    )
    assert response.status_code == 201, response.text


async def test_the_events_of_a_transfer_come_back_from_both_accounts(
    client: httpx.AsyncClient,
) -> None:
    a, b, tx = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    await open_account(client, a)
    await open_account(client, b)
    deposit = {"account_id": a, "transaction_id": str(uuid.uuid4()), "amount": 9, "reference": None}
    await client.post(
        f"/streams/account-{a}",
        json={"expected_version": 1, "events": [{"type": "MoneyDeposited", "data": deposit}]},
    )
    sent = {"account_id": a, "transaction_id": tx, "to_account": b, "amount": 5, "reference": None}
    got = {"account_id": b, "transaction_id": tx, "from_account": a, "amount": 5, "reference": None}
    response = await client.post(
        "/batches",
        json={
            "appends": [
                {"stream": f"account-{a}", "expected_version": 2,
                 "events": [{"type": "TransferSent", "data": sent}]},
                {"stream": f"account-{b}", "expected_version": 1,
                 "events": [{"type": "TransferReceived", "data": got}]},
            ]
        },
    )  # fmt: skip
    assert response.status_code == 201, response.text
    found = await client.get(f"/transactions/{tx}/events")
    assert found.status_code == 200
    body = found.json()
    assert body["transaction_id"] == tx
    assert [(e["stream"], e["type"], e["stream_version"]) for e in body["events"]] == [
        (f"account-{a}", "TransferSent", 3),
        (f"account-{b}", "TransferReceived", 2),
    ]
    assert all(e["hash"] and e["position"] for e in body["events"])
    limited = await client.get(f"/transactions/{tx}/events", params={"limit": 1})
    assert len(limited.json()["events"]) == 1


async def test_an_unknown_transaction_has_no_events(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/transactions/{uuid.uuid4()}/events")
    assert response.status_code == 200
    assert response.json()["events"] == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/transactions/not-a-uuid/events", {}),
        ("/transactions/6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB/events", {}),
        (f"/transactions/{uuid.uuid4()}/events", {"limit": 0}),
        (f"/transactions/{uuid.uuid4()}/events", {"limit": 1001}),
        (f"/transactions/{uuid.uuid4()}/events", {"limit": "1e3"}),
    ],
)
async def test_bad_ids_and_limits_are_422_problems(
    client: httpx.AsyncClient, path: str, params: dict[str, int | str]
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "validation-error"
