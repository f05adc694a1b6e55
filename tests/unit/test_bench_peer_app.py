"""The HTTP peer of the benchmark (bench/peer_app.py) keeps the same account rules as ours:
otherwise the comparison would measure a different ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("eventsourcing")  # the `bench` extra

import httpx
from bench.peer_app import Ledger, create_app, ledger_env

from eventledger.credentials import token_digest

TOKEN = "peer-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    ledger = Ledger(env=ledger_env(sqlite=str(tmp_path / "peer.db"), postgres=None, schema=None))
    transport = httpx.ASGITransport(create_app(ledger, token_digest(TOKEN)))
    async with httpx.AsyncClient(transport=transport, base_url="http://peer") as client:
        yield client
    ledger.close()


async def _open(client: httpx.AsyncClient, account: str, **extra: object) -> None:
    response = await client.post(
        "/accounts", json={"account_id": account, "currency": "EUR", **extra}, headers=AUTH
    )
    assert response.status_code == 201, response.text


async def test_deposit_withdraw_and_read_keep_the_balance(client: httpx.AsyncClient) -> None:
    await _open(client, "a1")
    first = await client.post("/accounts/a1/deposits", json={"amount": 500}, headers=AUTH)
    assert first.status_code == 201
    assert first.json()["balance"] == 500
    second = await client.post("/accounts/a1/withdrawals", json={"amount": 200}, headers=AUTH)
    assert second.json()["balance"] == 300
    assert second.json()["position"] > first.json()["position"]
    account = (await client.get("/accounts/a1", headers=AUTH)).json()
    assert (account["balance"], account["version"], account["status"]) == (300, 3, "open")


async def test_refusals_are_problems_and_change_nothing(client: httpx.AsyncClient) -> None:
    await _open(client, "a1", overdraft_limit=100)
    await _open(client, "b1")
    refused = await client.post("/accounts/a1/withdrawals", json={"amount": 101}, headers=AUTH)
    assert (refused.status_code, refused.json()["type"]) == (409, "insufficient-funds")
    assert (
        await client.post("/accounts/a1/withdrawals", json={"amount": 100}, headers=AUTH)
    ).is_success
    assert (
        await client.post("/accounts", json={"account_id": "a1", "currency": "EUR"}, headers=AUTH)
    ).json()["type"] == "account-exists"
    assert (await client.get("/accounts/nope", headers=AUTH)).status_code == 404
    assert (
        await client.post("/accounts/a1/deposits", json={"amount": "10"}, headers=AUTH)
    ).status_code == 422
    assert (await client.post("/accounts/a1/close", headers=AUTH)).json()[
        "type"
    ] == "balance-not-zero"
    assert (await client.get("/accounts/a1", headers=AUTH)).json()["balance"] == -100


async def test_transfer_moves_money_atomically_and_close_needs_zero(
    client: httpx.AsyncClient,
) -> None:
    await _open(client, "a1")
    await _open(client, "b1")
    await client.post("/accounts/a1/deposits", json={"amount": 50}, headers=AUTH)
    too_much = {"from_account": "a1", "to_account": "b1", "amount": 51}
    assert (await client.post("/transfers", json=too_much, headers=AUTH)).status_code == 409
    moved = (await client.post("/transfers", json={**too_much, "amount": 50}, headers=AUTH)).json()
    assert (moved["from_balance"], moved["to_balance"]) == (0, 50)
    assert (await client.post("/accounts/a1/close", headers=AUTH)).status_code == 200
    closed = await client.post("/accounts/a1/deposits", json={"amount": 1}, headers=AUTH)
    assert closed.json()["type"] == "account-closed"


async def test_a_token_is_required_except_for_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/accounts/a1")).status_code == 401
    wrong = {"Authorization": "Bearer not-it"}
    assert (
        await client.post("/accounts", json={"account_id": "x", "currency": "EUR"}, headers=wrong)
    ).status_code == 401
