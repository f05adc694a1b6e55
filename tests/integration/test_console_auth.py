"""The console's sign-in in process: the console built by the composition root (its Host and
Origin rules included) with an auth file, its services pointed at a closed port (a request
that gets past the guard answers 502 `upstream-unavailable`, which is how these tests see it
got through)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from eventledger import bootstrap
from eventledger.config import SERVICES, Settings
from eventledger.credentials import add_token, revoke_token
from eventledger.services.console.sessions import FAILURES_ALLOWED, SESSION_COOKIE

CONSOLE = "http://127.0.0.1:8005"  # the Host the console answers to on its default port
CLOSED = "http://127.0.0.1:9"  # nothing listens there: upstream calls fail at once
USERS = {
    "cli": ["events:read", "ledger:read", "ledger:write", "admin", "metrics"],
    "reader": ["ledger:read"],
    "streamer": ["events:read"],
}


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    auth_file = tmp_path / "auth.json"
    return {name: add_token(auth_file, name, scopes) for name, scopes in USERS.items()}


@asynccontextmanager
async def console(tmp_path: Path, *, auth: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    settings = replace(
        Settings(data_dir=tmp_path / "data"),
        auth_file=tmp_path / "auth.json" if auth else None,
        insecure_no_auth=not auth,
        service_urls={name: CLOSED for name in SERVICES},
    )
    app = bootstrap.build_app("console", settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=CONSOLE) as http,
    ):
        yield http


async def sign_in(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/api/session", json={"token": token})


def assert_problem(answer: httpx.Response, status: int, type: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == type


async def test_without_a_session_the_api_answers_401_and_pages_lead_to_the_sign_in(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        for path in ("/api/accounts", "/api/readmodels", "/api/events/recent", "/api/session"):
            assert_problem(await http.get(path), 401, "unauthenticated")
        command = await http.post("/api/commands/open", json={"currency": "EUR"})
        assert_problem(command, 401, "unauthenticated")
        assert_problem(
            await http.post("/api/readmodels/accounting/rebuild", json={}), 401, "unauthenticated"
        )
        for page in ("/", "/statistics", "/readmodels", "/accounts/alice"):
            answer = await http.get(page)
            assert answer.status_code == 303
            assert answer.headers["location"] == f"/signin?next={page}"
        # What needs no session: the sign-in page, the assets, /health.
        signin = await http.get("/signin")
        assert signin.status_code == 200 and 'id="signin-form"' in signin.text
        assert (await http.get("/static/console.js")).status_code == 200
        assert (await http.get("/health")).status_code == 200


async def test_a_signed_in_session_gets_through_with_a_cookie_that_scripts_cannot_read(
    tmp_path: Path, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with console(tmp_path) as http:
        answer = await sign_in(http, tokens["cli"])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "cli", "scopes": sorted(USERS["cli"])}
        cookie = answer.headers["set-cookie"]
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain HTTP here; over TLS it is Secure
        session = cookie.split(";")[0].partition("=")[2]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and len(session) >= 43  # 256 bits
        assert tokens["cli"] not in answer.text and tokens["cli"] not in cookie
        who = await http.get("/api/session")
        assert who.json() == {"auth": True, "name": "cli", "scopes": sorted(USERS["cli"])}
        # Past the guard: the (absent) accounting service is asked, and does not answer.
        assert_problem(await http.get("/api/accounts"), 502, "upstream-unavailable")
        command = await http.post("/api/commands/open", json={"currency": "EUR"})
        assert_problem(command, 502, "upstream-unavailable")
        page = await http.get("/")
        assert page.status_code == 200 and 'id="command-form"' in page.text
        assert "signed in as <strong>cli</strong>" in page.text
        assert 'id="open-banner"' not in page.text
    assert tokens["cli"] not in caplog.text and "'cli' signed in" in caplog.text


async def test_a_read_only_principal_may_not_command_nor_rebuild_and_sees_no_form(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        assert (await sign_in(http, tokens["reader"])).status_code == 200
        command = await http.post("/api/commands/deposit", json={"account_id": "a", "amount": 5})
        assert_problem(command, 403, "forbidden")
        assert command.json()["missing_scope"] == "ledger:write"
        for action in ("rebuild", "skip", "park"):
            refused = await http.post(f"/api/readmodels/accounting/{action}", json={})
            assert_problem(refused, 403, "forbidden")
            assert refused.json()["missing_scope"] == "admin"
        page = await http.get("/")
        assert 'id="command-form"' not in page.text and 'id="read-only"' in page.text
        assert 'data-scopes="ledger:read"' in page.text
        assert_problem(await http.get("/api/accounts"), 502, "upstream-unavailable")


async def test_a_token_without_ledger_read_cannot_sign_in(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        refused = await sign_in(http, tokens["streamer"])
        assert_problem(refused, 403, "forbidden")
        assert "set-cookie" not in refused.headers


async def test_wrong_tokens_get_401_and_past_ten_a_minute_429_even_for_a_right_one(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        for guess in range(FAILURES_ALLOWED):
            wrong = await sign_in(http, f"guess-{guess}-" + "x" * 40)
            assert_problem(wrong, 401, "unauthenticated")
            assert "guess-" not in wrong.text  # never echoed
        assert_problem(await sign_in(http, "not a token!"), 429, "too-many-sign-ins")
        blocked = await sign_in(http, tokens["cli"])
        assert_problem(blocked, 429, "too-many-sign-ins")
        assert 1 <= int(blocked.headers["Retry-After"]) <= 61
        assert "set-cookie" not in blocked.headers
        assert_problem(await http.get("/api/accounts"), 401, "unauthenticated")


async def test_bad_sign_in_bodies_are_refused_and_make_no_session(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        json_type = {"Content-Type": "application/json"}
        assert_problem(
            await http.post("/api/session", content=b"{", headers=json_type), 400, "malformed-json"
        )
        for body in (
            {},
            {"token": 5},
            {"token": ""},
            {"token": "x" * 1025},
            {"token": "a", "b": 1},
        ):
            assert (await http.post("/api/session", json=body)).status_code == 422, body
        form = await http.post(
            "/api/session",
            content=f"token={tokens['cli']}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 415
        assert_problem(await http.get("/api/accounts"), 401, "unauthenticated")


async def test_sign_out_ends_the_session_on_the_server(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        await sign_in(http, tokens["cli"])
        stolen = http.cookies[SESSION_COOKIE]
        out = await http.delete("/api/session", headers={"Content-Type": "application/json"})
        assert out.status_code == 204
        assert "max-age=0" in out.headers["set-cookie"].lower()
        assert_problem(await http.get("/api/accounts"), 401, "unauthenticated")
        # The old cookie, replayed, is worth nothing: the session is gone server-side.
        replayed = await http.get("/api/accounts", headers={"Cookie": f"{SESSION_COOKIE}={stolen}"})
        assert_problem(replayed, 401, "unauthenticated")


async def test_a_revoked_token_ends_its_sessions(tmp_path: Path, tokens: dict[str, str]) -> None:
    async with console(tmp_path) as http:
        await sign_in(http, tokens["reader"])
        revoke_token(tmp_path / "auth.json", "reader")
        for _ in range(100):  # the auth file is re-read within a second (services/auth.py)
            answer = await http.get("/api/accounts")
            if answer.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert_problem(answer, 401, "unauthenticated")


async def test_other_origins_are_refused_even_with_a_session(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    async with console(tmp_path) as http:
        await sign_in(http, tokens["cli"])
        evil = {"Origin": "http://evil.example"}
        command = await http.post("/api/commands/open", json={"currency": "EUR"}, headers=evil)
        assert_problem(command, 403, "forbidden-origin")
        assert_problem(await sign_in_from(http, tokens["cli"], evil), 403, "forbidden-origin")
        typeless = await http.post(
            "/api/commands/open",
            content=b'{"currency": "EUR"}',
            headers={"Content-Type": "text/plain"},
        )
        assert typeless.status_code == 415
        assert (
            await http.get("/api/accounts", headers={"Host": "evil.example:8005"})
        ).status_code == 421


async def sign_in_from(
    http: httpx.AsyncClient, token: str, headers: dict[str, str]
) -> httpx.Response:
    return await http.post("/api/session", json={"token": token}, headers=headers)


async def test_without_an_auth_file_the_console_is_open_and_says_so(tmp_path: Path) -> None:
    async with console(tmp_path, auth=False) as http:
        page = await http.get("/")
        assert page.status_code == 200 and 'id="open-banner"' in page.text
        assert 'id="command-form"' in page.text
        who = await http.get("/api/session")
        assert who.json()["auth"] is False and "admin" in who.json()["scopes"]
        assert_problem(await http.get("/api/accounts"), 502, "upstream-unavailable")
        assert_problem(await sign_in(http, "x" * 43), 409, "no-sign-in")
        assert 'id="signin-form"' not in (await http.get("/signin")).text
