"""The accounting read model on PersonalDataErased: it blanks the owner and every reference
it keeps for that account (history, pending transfers), applied live and in a rebuild, and
keeps the other account's side of a transfer. On SQLite and PostgreSQL read models."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import Ledger, OpenDB, StreamServer, caught_up, get

clock, stream, log, client = support.clock, support.stream, support.log, support.client
open_db = support.open_db_fixture("accounting")


@pytest.fixture
async def app(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_app(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.3, head_poll_interval=0.05
    )


async def forget(stream: StreamServer, account: str) -> int:
    async with (
        aiohttp.ClientSession(stream.url) as http,
        http.post(
            f"/admin/accounts/{account}/forget", headers={"Content-Type": "application/json"}
        ) as answer,
    ):
        assert answer.status == 201, await answer.text()
        position: int = (await answer.json())["position"]
        return position


async def references(client: httpx.AsyncClient, account: str) -> list[Any]:
    items = (await get(client, f"/accounts/{account}/transactions"))["items"]
    return [i["reference"] for i in items]


async def test_personal_data_erased_blanks_owner_and_references_and_keeps_balances(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, stream: StreamServer
) -> None:
    await log.append(
        "account-alice",
        (
            "AccountOpened",
            {"account_id": "alice", "currency": "EUR", "overdraft_limit": 0, "owner": "Alice"},
        ),
    )
    await log.open("bob")
    await log.deposit("alice", 500, reference="salary Dec")
    await log.deposit("bob", 700, reference="bob's own")
    head = await log.deposit("alice", 20, reference="gift from Ann")
    await caught_up(app, head)
    assert (await get(client, "/accounts/alice"))["owner"] == "Alice"
    assert await references(client, "alice") == ["gift from Ann", "salary Dec"]

    head = await forget(stream, "alice")
    await caught_up(app, head)
    account = await get(client, "/accounts/alice")
    assert account["owner"] is None and account["balance"] == 520 and account["version"] == 4
    assert await references(client, "alice") == [None, None]
    assert await references(client, "bob") == ["bob's own"]  # another account keeps its own

    # Money after the forget carries new personal data, readable again (a new key).
    head = await log.deposit("alice", 5, reference="after")
    await caught_up(app, head)
    assert await references(client, "alice") == ["after", None, None]

    # A rebuild from the log gives the same answers.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        rebuilt = await c.post("/admin/rebuild", headers={"Content-Type": "application/json"})
        assert rebuilt.status_code in (200, 202), rebuilt.text
    await caught_up(app, head)
    assert await references(client, "alice") == ["after", None, None]
    assert (await get(client, "/accounts/alice"))["owner"] is None
