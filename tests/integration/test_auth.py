"""Security in process: services built by the composition root with an auth file, the
credentials files `eventledger up` and `eventledger token` write, and the start-up checks."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from eventledger import bootstrap
from eventledger.config import ConfigError, Settings
from eventledger.credentials import (
    INTERNAL_CALLERS,
    AuthFileError,
    add_token,
    idempotency_secret,
    load_auth_file,
    provision,
    revoke_token,
    token_digest,
)
from eventledger.services.auth import PRINCIPAL, AuthFileAuthenticator

STREAM = "http://127.0.0.1:8002"  # the Host the stream service answers to on its default port


def settings_for(tmp_path: Path, **changes: object) -> Settings:
    base = Settings(data_dir=tmp_path / "data", store="memory://")
    return replace(base, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(app: FastAPI, base_url: str = STREAM) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as http,
    ):
        yield http


def whoami(app: FastAPI) -> FastAPI:
    """`app` with a route that answers the principal the auth middleware put in the scope."""

    @app.get("/whoami")
    async def _whoami(request: Request) -> dict[str, str | None]:
        return {"principal": request.scope.get(PRINCIPAL)}

    return app


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    auth_file = tmp_path / "auth.json"
    return {
        "writer": add_token(auth_file, "writer", ["events:read", "events:append"]),
        "reader": add_token(auth_file, "reader", ["events:read"]),
        "ops": add_token(auth_file, "ops", ["metrics"]),
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_secured_service_names_the_caller_to_the_middleware_inside_it(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, auth_file=tmp_path / "auth.json")
    app = whoami(bootstrap.build_app("stream", settings))
    async with serving(app) as http:
        assert (await http.get("/whoami")).status_code == 401
        answer = await http.get("/whoami", headers=bearer(tokens["reader"]))
        assert answer.json() == {"principal": "reader"}
        append = {"expected_version": "any", "events": [{"type": "Probe", "data": {}}]}
        refused = await http.post("/streams/probe-1", json=append, headers=bearer(tokens["reader"]))
        assert refused.status_code == 403
        assert refused.headers["www-authenticate"].endswith('scope="events:append"')
        written = await http.post("/streams/probe-1", json=append, headers=bearer(tokens["writer"]))
        assert written.status_code == 201, written.text
        metrics = (await http.get("/metrics", headers=bearer(tokens["ops"]))).text
        assert 'eventledger_http_refused_total{reason="unauthenticated",service="stream"} 1.0' in (
            metrics
        )
        assert 'reason="forbidden"' in metrics
        for token in tokens.values():
            assert token not in metrics


async def test_an_open_service_leaves_the_principal_unset(tmp_path: Path) -> None:
    app = whoami(bootstrap.build_app("stream", settings_for(tmp_path)))
    async with serving(app) as http:
        assert (await http.get("/whoami")).json() == {"principal": None}


async def test_the_openapi_document_shows_the_bearer_scheme_and_each_operations_scope(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    secured = bootstrap.build_app(
        "stream", settings_for(tmp_path, auth_file=tmp_path / "auth.json")
    )
    async with serving(secured) as http:
        document = (await http.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    append = document["paths"]["/streams/{stream}"]["post"]
    assert append["security"] == [{"bearer": ["events:append"]}]
    assert {"401", "403"} <= set(append["responses"])
    assert document["paths"]["/events"]["get"]["security"] == [{"bearer": ["events:read"]}]
    assert document["paths"]["/health"]["get"]["security"] == []

    open_app = bootstrap.build_app("stream", settings_for(tmp_path / "open"))
    async with serving(open_app) as http:
        assert "securitySchemes" not in (await http.get("/openapi.json")).json()["components"]


async def test_the_host_and_origin_rules_come_before_authentication(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    settings = settings_for(
        tmp_path, auth_file=tmp_path / "auth.json", cors_origins=("http://console.example",)
    )
    app = bootstrap.build_app("stream", settings)
    async with serving(app, base_url="http://rebound.example:8002") as http:
        misdirected = await http.get("/events", headers=bearer(tokens["reader"]))
        assert misdirected.status_code == 421
    async with serving(app) as http:
        preflight = await http.options(
            "/events",
            headers={"Origin": "http://console.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204  # a preflight carries no token
        assert preflight.headers["access-control-allow-origin"] == "http://console.example"
        foreign = await http.get("/events", headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["type"] == "forbidden-origin"


async def test_a_bodiless_operator_request_must_be_sent_as_json_too(tmp_path: Path) -> None:
    app = bootstrap.build_app("stream", settings_for(tmp_path))
    async with serving(app) as http:
        for headers in ({}, {"Content-Type": "text/plain"}):
            response = await http.post("/batches", headers=headers)
            assert response.status_code == 415, response.text
            assert response.json()["type"] == "unsupported-media-type"


def test_an_auth_file_others_may_write_is_refused_at_start(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    add_token(auth_file, "writer", ["events:append"])
    os.chmod(auth_file, 0o664)
    with pytest.raises(AuthFileError, match=f"auth file {auth_file}: other users may write it"):
        bootstrap.build_app("stream", settings_for(tmp_path, auth_file=auth_file))


def test_an_invalid_auth_file_stops_the_start_naming_the_file(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text('{"tokens": [{"name": "x", "sha256": "00", "scopes": ["admin"]}]}')
    os.chmod(auth_file, 0o600)
    with pytest.raises(AuthFileError, match=re.escape("tokens[0].sha256")):
        bootstrap.build_app("stream", settings_for(tmp_path, auth_file=auth_file))


def test_a_service_runs_open_only_on_a_loopback_address_or_when_told_to(tmp_path: Path) -> None:
    loopback = settings_for(tmp_path)
    assert "running open on the loopback address" in (bootstrap.check_exposure(loopback) or "")
    for host in ("0.0.0.0", "192.0.2.1", "::", "ledger.example"):
        with pytest.raises(ConfigError, match=f"refusing to listen on {host}"):
            bootstrap.check_exposure(replace(loopback, host=host))
    insecure = replace(loopback, host="0.0.0.0", insecure_no_auth=True)
    assert "WITHOUT AUTHENTICATION" in (bootstrap.check_exposure(insecure) or "")
    add_token(loopback.default_auth_file(), "x", ["admin"])  # `up`'s auth file, found there
    assert bootstrap.check_exposure(replace(loopback, host="0.0.0.0")) is None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_provisions_least_privilege_tokens_in_private_files_and_reuses_them(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    first = provision(settings)
    assert first.created == tuple(INTERNAL_CALLERS)
    assert mode(settings.data_dir) == 0o700
    assert mode(settings.token_file("cli").parent) == 0o700
    assert mode(first.auth_file) == 0o600
    entries = {entry.name: entry for entry in load_auth_file(first.auth_file)}
    for name, scopes in INTERNAL_CALLERS.items():
        path = first.token_files[name]
        assert mode(path) == 0o600
        assert entries[name].scopes == frozenset(scopes)
        assert entries[name].sha256 == token_digest(path.read_text().strip())
    assert entries["accounting"].scopes == {"events:read"}
    assert "events:append" not in entries["statistics"].scopes
    assert path.read_text().strip() not in first.auth_file.read_text()

    before = {name: path.read_text() for name, path in first.token_files.items()}
    again = provision(settings)
    assert again.created == ()
    assert {name: path.read_text() for name, path in again.token_files.items()} == before

    first.token_files["statistics"].write_text("lost-and-rewritten-by-hand-0000\n")
    repaired = provision(settings)
    assert repaired.created == ("statistics",)


def test_token_create_refuses_a_name_twice_and_revoke_removes_it(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    token = add_token(auth_file, "payroll", ["ledger:write"])
    assert len(token) >= 43 and mode(auth_file) == 0o600
    with pytest.raises(ValueError, match="already has a token named 'payroll'"):
        add_token(auth_file, "payroll", ["ledger:read"])
    with pytest.raises(ValueError, match="unknown scope 'everything'"):
        add_token(auth_file, "other", ["everything"])
    revoke_token(auth_file, "payroll")
    assert json.loads(auth_file.read_text()) == {"tokens": []}
    with pytest.raises(ValueError, match="no token named 'payroll'"):
        revoke_token(auth_file, "payroll")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".auth.json.lock", "auth.json"]


def test_the_idempotency_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    secret = idempotency_secret(settings)
    assert len(secret) == 32
    assert mode(settings.idempotency_secret_file()) == 0o600
    assert idempotency_secret(settings) == secret
    given = replace(settings, idempotency_secret="x" * 40)
    assert idempotency_secret(given) == b"x" * 40


def test_a_created_or_revoked_token_counts_within_a_second_without_a_restart(
    tmp_path: Path,
) -> None:
    auth_file = tmp_path / "auth.json"
    old = add_token(auth_file, "old", ["ledger:read"])
    now = [0.0]
    authenticator = AuthFileAuthenticator(auth_file, clock=lambda: now[0])
    new = add_token(auth_file, "new", ["ledger:read"])
    revoke_token(auth_file, "old")
    assert authenticator.identify(new) is None  # not looked at again yet
    now[0] += AuthFileAuthenticator.RECHECK_SECONDS
    found = authenticator.identify(new)
    assert found is not None and found.name == "new"
    assert authenticator.identify(old) is None

    auth_file.write_text("{not json")  # a broken edit: the last valid tokens stay in use
    now[0] += AuthFileAuthenticator.RECHECK_SECONDS
    assert authenticator.identify(new) is not None
