"""Forged paging cursors at the accounting service: a cursor decodes to a position, and one
past the signed 64-bit range (`p9999999999999999999`: 19 digits, like a real one) is a 422,
not the database's 500; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app as create_accounting
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import Ledger, OpenDB, StreamServer, caught_up, serving

clock, stream, log = support.clock, support.stream, support.log
open_db = support.open_db_fixture("readside")


@pytest.fixture
def app(stream: StreamServer, open_db: OpenDB) -> FastAPI:
    return create_accounting(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.3, head_poll_interval=0.05
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        yield c


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "forged",
    [
        cursor("p9999999999999999999"),
        cursor("p9223372036854775808"),
        cursor("p99999999999999999999"),
        cursor("p-1"),
        cursor("p"),
        cursor("x1"),
        cursor("p1\u00b2"),
        "p1",
        "\u00e9",
    ],
)
async def test_a_forged_cursor_is_refused_on_both_paged_routes(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger, forged: str
) -> None:
    await log.open("a")
    await caught_up(app, await log.deposit("a", 5))
    for path, name in (("/accounts/a/transactions", "before"), ("/accounts/a/pending", "after")):
        answer = await client.get(path, params={name: forged})
        assert answer.status_code == 422, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == "validation-error"


async def test_the_largest_position_is_still_a_cursor(
    app: FastAPI, client: httpx.AsyncClient, log: Ledger
) -> None:
    await log.open("a")
    await caught_up(app, await log.deposit("a", 5))
    largest = cursor("p9223372036854775807")
    history = await client.get("/accounts/a/transactions", params={"before": largest})
    assert history.status_code == 200, history.text
    assert [i["amount"] for i in history.json()["items"]] == [5]
    pending = await client.get("/accounts/a/pending", params={"after": largest})
    assert pending.status_code == 200 and pending.json()["items"] == [], pending.text
