"""The accounting queries are served by lean routes in front of the documented FastAPI routes
(`GET /accounts/{id}` its own, the others `serve_text_routes_directly`): every request gets
exactly the answer the documented route gives (status, headers, body), and the OpenAPI
document still shows the documented routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from eventledger.services.accounting.app import create_app
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import Ledger, OpenDB, StreamServer, caught_up

clock, stream, log = support.clock, support.stream, support.log
open_db = support.open_db_fixture("accounting")

REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/accounts/acc-1", {}),
    ("GET", "/accounts/acc-1?min_position=1", {}),
    ("GET", "/accounts/acc-1", {"X-Min-Position": "2"}),
    ("GET", "/accounts/acc-1?min_position=99", {}),  # not caught up: 503
    ("GET", "/accounts/acc-1?min_position=1&min_position=99", {}),  # the last one counts
    ("GET", "/accounts/acc-1?min_position=", {}),
    ("GET", "/accounts/acc-1?min_position=1.0", {}),
    ("GET", "/accounts/acc-1", {"X-Min-Position": "+1"}),
    ("GET", "/accounts/acc-1", {"X-Min-Position": "x"}),
    ("GET", "/accounts/acc-1?min_position=-1", {"X-Min-Position": "x"}),  # header first
    ("GET", "/accounts/acc-1?min_position=99999999999999999999", {}),
    ("GET", "/accounts/nobody", {}),
    ("GET", "/accounts/-bad", {}),
    ("GET", "/accounts/-bad?min_position=x", {}),  # the position is checked first
    ("GET", "/accounts/" + "a" * 65, {}),
    ("GET", "/accounts/acc%2F1", {}),
    ("GET", "/accounts/acc-1/", {}),
    ("GET", "/accounts/acc-1?unknown=1", {}),
    ("HEAD", "/accounts/acc-1", {}),
    ("POST", "/accounts/acc-1", {}),
    ("DELETE", "/accounts/acc-1", {}),
    ("GET", "/accounts/acc-1/transactions", {}),
    ("GET", "/accounts/acc-1/transactions?limit=1", {"X-Min-Position": "2"}),
    ("GET", "/accounts/acc-1/transactions?limit=1&limit=5&before=cDI", {}),
    ("GET", "/accounts/acc-1/transactions?limit=", {}),
    ("GET", "/accounts/acc-1/transactions?limit=0", {"X-Min-Position": "x"}),  # position first
    ("GET", "/accounts/acc-1/transactions?before=zzz", {}),
    ("GET", "/accounts/nobody/transactions", {}),
    ("GET", "/accounts/acc-1/transactions?min_position=99", {}),
    ("HEAD", "/accounts/acc-1/transactions", {}),
    ("POST", "/accounts/acc-1/transactions", {}),
    ("GET", "/accounts/acc-1/balance?at_position=2", {}),
    ("GET", "/accounts/acc-1/balance?at=2026-11-27T10:00:00Z", {}),
    ("GET", "/accounts/acc-1/balance", {}),
    ("GET", "/accounts/acc-1/balance?at=yesterday", {}),
    ("GET", "/accounts/acc-1/balance?at_position=1&at=2026-11-27T10:00:00Z", {}),
    ("GET", "/accounts/acc-1/pending?limit=2&after=cDE", {}),
    ("GET", "/accounts/-bad/pending", {}),
    ("GET", "/accounts?limit=1", {}),
    ("GET", "/accounts?after=acc-0&limit=1001", {}),
    ("GET", "/accounts?after=%20", {}),
    ("GET", "/accounts?limit=1", {"X-Min-Position": "99"}),
]


def documented_only(app: FastAPI) -> FastAPI:
    """The same app without the lean routes: what the documented routes answer alone."""
    documented = {r.path for r in app.router.routes if isinstance(r, APIRoute)}
    app.router.routes[:] = [
        r for r in app.router.routes if isinstance(r, APIRoute) or r.path not in documented
    ]
    return app


def test_every_query_route_has_a_lean_route_in_front(open_db: OpenDB) -> None:
    app = create_app(stream_url="http://127.0.0.1:9", open_db=open_db)
    documented = {r.path for r in app.router.routes if isinstance(r, APIRoute)}
    fronted = {r.path for r in app.router.routes if not isinstance(r, APIRoute)} & documented
    assert fronted == {
        "/accounts",
        "/accounts/{account_id}",
        "/accounts/{account_id}/balance",
        "/accounts/{account_id}/pending",
        "/accounts/{account_id}/transactions",
    }
    assert fronted <= documented


@pytest.fixture
async def apps(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    await log.open("acc-1")
    head = await log.deposit("acc-1", 70)
    lean = create_app(stream_url=stream.url, open_db=open_db, min_position_wait=0.2)
    plain = documented_only(
        create_app(stream_url=stream.url, open_db=open_db, min_position_wait=0.2)
    )
    async with support.serving(lean) as a, support.serving(plain) as b:
        await caught_up(lean, head)
        await caught_up(plain, head)
        yield a, b


async def test_the_lean_route_answers_every_request_as_the_documented_route(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    lean, plain = apps
    for method, path, headers in REQUESTS:
        ours = await lean.request(method, path, headers=headers)
        theirs = await plain.request(method, path, headers=headers)
        assert ours.status_code == theirs.status_code, (method, path, headers)
        assert ours.content == theirs.content, (method, path, headers)
        assert ours.headers.get("content-type") == theirs.headers.get("content-type")
        assert ours.headers.get("allow") == theirs.headers.get("allow")
        assert ours.headers.get("retry-after") == theirs.headers.get("retry-after")


async def test_the_openapi_document_still_shows_the_documented_route(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    lean, plain = apps
    ours = (await lean.get("/openapi.json")).json()
    assert ours == (await plain.get("/openapi.json")).json()
    parameters = ours["paths"]["/accounts/{account_id}"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"account_id", "x-min-position", "min_position"}
