"""The console over HTTP (no browser needed), signed in as an operator: what it refuses, what
it never shows, and that its admin calls are made with the operator's token, never its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from eventledger.services.console.api import MAX_LIVE_FEEDS
from tests.browser.conftest import ADMIN, READER, signed_in_client
from tests.e2e.harness import (
    HTTP,
    Credentials,
    ServiceProcess,
    System,
    assert_problem,
    cli_env,
    free_port,
    new_id,
    problem_type,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def http(
    console_system: tuple[System, ServiceProcess], credentials: Credentials
) -> Iterator[httpx.Client]:
    """A client signed in as the operator (ledger:read, ledger:write, admin)."""
    with signed_in_client(console_system[1].url, credentials.tokens[ADMIN]) as client:
        yield client


def test_commands_from_another_origin_or_not_typed_json_are_refused_and_write_nothing(
    console_system: tuple[System, ServiceProcess], http: httpx.Client
) -> None:
    system, console = console_system
    head = system.head_position()
    body = {"currency": "EUR", "account_id": new_id("xo")}
    evil = http.post(
        f"{console.url}/api/commands/open", json=body, headers={"Origin": "http://evil.example"}
    )
    assert problem_type(evil) == "forbidden-origin"
    typeless = http.post(
        f"{console.url}/api/commands/open",
        content=b'{"currency": "EUR"}',
        headers={"Content-Type": "text/plain"},
    )
    assert problem_type(typeless) == "unsupported-media-type"
    rebound = http.get(f"{console.url}/api/accounts", headers={"Host": "evil.example:80"})
    assert rebound.status_code == 421
    assert system.head_position() == head


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/api/commands/deposit", {"account_id": "../admin", "amount": 5}, {}),
        ("/api/commands/deposit", {"account_id": "a", "amount": "5"}, {}),
        ("/api/commands/deposit", {"account_id": "a", "amount": 0}, {}),
        ("/api/commands/deposit", {"account_id": "a", "amount": 5, "extra": 1}, {}),
        ("/api/commands/transfer", {"from_account": "a", "to_account": "b", "amount": 1.0}, {}),
        ("/api/commands/open", {"currency": "EUR"}, {"Idempotency-Key": "bad key"}),
        ("/api/commands/close", {"account_id": "a"}, {}),
        ("/api/readmodels/stream/rebuild", {}, {}),
        ("/api/readmodels/accounting/rebuild", {"mode": "sideways"}, {}),
        ("/api/readmodels/accounting/cancel-rebuild", {"now": True}, {}),
    ],
)
def test_bad_input_gets_a_4xx_problem_and_writes_nothing(
    console_system: tuple[System, ServiceProcess],
    http: httpx.Client,
    path: str,
    body: dict[str, object],
    headers: dict[str, str],
) -> None:
    system, console = console_system
    head = system.head_position()
    assert_problem(http.post(console.url + path, json=body, headers=headers), 422)
    assert system.head_position() == head


def test_malformed_and_oversized_bodies_and_bad_parameters_are_refused(
    console_system: tuple[System, ServiceProcess], http: httpx.Client
) -> None:
    _, console = console_system
    json_type = {"Content-Type": "application/json"}
    url = f"{console.url}/api/commands/open"
    assert_problem(http.post(url, content=b"{", headers=json_type), 400)
    assert_problem(
        http.post(url, content=b'{"currency":"EUR","currency":"EUR"}', headers=json_type), 400
    )
    assert_problem(http.post(url, content=b" " * (1024 * 1024 + 1), headers=json_type), 413)
    assert_problem(http.get(f"{console.url}/api/accounts/a%20b"), 422)
    assert_problem(http.get(f"{console.url}/api/accounts/a%2F..%2Fadmin"), 404)
    assert_problem(http.get(f"{console.url}/api/accounts/a?min_position=1e3"), 422)
    assert_problem(http.get(f"{console.url}/api/events/recent?limit=-1"), 422)
    assert_problem(http.get(f"{console.url}/api/stats/daily?from=yesterday"), 422)


def test_a_retried_command_with_the_same_key_is_answered_once(
    console_system: tuple[System, ServiceProcess], http: httpx.Client
) -> None:
    system, console = console_system
    account = new_id("idem")
    opened = http.post(
        f"{console.url}/api/commands/open", json={"currency": "EUR", "account_id": account}
    )
    assert opened.status_code == 201, opened.text
    key = {"Idempotency-Key": new_id("key")}
    deposit = {"account_id": account, "amount": 300}
    first = http.post(f"{console.url}/api/commands/deposit", json=deposit, headers=key)
    head = system.head_position()
    again = http.post(f"{console.url}/api/commands/deposit", json=deposit, headers=key)
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["position"] == first.json()["position"]
    assert [e["type"] for e in first.json()["events"]] == ["MoneyDeposited"]
    assert system.head_position() == head


def test_no_token_reaches_the_browser_and_admin_calls_are_the_operators_own(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, http: httpx.Client
) -> None:
    system, console = console_system
    own, operator = credentials.tokens["console"], credentials.tokens[ADMIN]
    for path in (
        "/",
        "/readmodels",
        "/statistics",
        "/signin",
        "/static/console.js",
        "/api/readmodels",
        "/api/events/recent",
        "/api/accounts",
        "/api/session",
        "/health",
    ):
        answer = http.get(console.url + path)
        assert answer.status_code == 200, (path, answer.text)
        for token in (own, operator):
            assert token not in answer.text and token not in answer.headers.get("set-cookie", "")
    # A rebuild is made with the signed-in operator's token (kept server-side): the read
    # model accepts it and records who asked; the console's own token has no `admin`.
    started = http.post(f"{console.url}/api/readmodels/statistics/rebuild", json={})
    assert started.status_code == 202, started.text
    assert started.json()["rebuilding"] is True
    wait_for(
        lambda: HTTP.get(f"{system.statistics.url}/health").status_code == 200,
        timeout=60.0,
        what="the statistics rebuild to end",
    )
    # Cancelling when no blue/green rebuild goes on is the read model's own 409, relayed.
    nothing = http.post(f"{console.url}/api/readmodels/statistics/cancel-rebuild", json={})
    assert nothing.status_code == 409 and problem_type(nothing) == "not-rebuilding"
    # A principal who may only read cannot, and sees no button for it.
    with signed_in_client(console.url, credentials.tokens[READER]) as reader:
        refused = reader.post(f"{console.url}/api/readmodels/statistics/rebuild", json={})
        assert problem_type(refused) == "forbidden" and refused.json()["missing_scope"] == "admin"
        command = reader.post(f"{console.url}/api/commands/open", json={"currency": "EUR"})
        assert problem_type(command) == "forbidden"
        assert 'id="command-form"' not in reader.get(f"{console.url}/").text
    for token in (own, operator, credentials.tokens[READER]):
        assert token not in console.log_text()
    # /metrics needs the metrics scope, as a bearer token (not a session).
    assert httpx.get(f"{console.url}/metrics").status_code == 401
    assert httpx.get(f"{console.url}/metrics", headers=credentials.bearer(ADMIN)).status_code == 403
    metrics = httpx.get(f"{console.url}/metrics", headers=credentials.bearer("console"))
    assert metrics.status_code == 200 and "eventledger_http_requests" in metrics.text


def test_without_a_session_the_console_answers_401_and_its_pages_lead_to_the_sign_in(
    console_system: tuple[System, ServiceProcess],
) -> None:
    system, console = console_system
    head = system.head_position()
    command = httpx.post(f"{console.url}/api/commands/open", json={"currency": "EUR"})
    assert problem_type(command) == "unauthenticated" and command.status_code == 401
    assert httpx.get(f"{console.url}/api/events/live").status_code == 401
    page = httpx.get(f"{console.url}/readmodels")
    assert page.status_code == 303 and page.headers["location"] == "/signin?next=/readmodels"
    assert system.head_position() == head


def test_the_console_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventledger",
            "serve",
            "console",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60.0,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr + done.stdout


def test_live_logs_are_capped_and_a_closed_one_frees_its_place(
    console_system: tuple[System, ServiceProcess], credentials: Credentials
) -> None:
    _, console = console_system
    url = f"{console.url}/api/events/live"
    timeout = httpx.Timeout(10.0, read=None)
    token = credentials.tokens[ADMIN]
    with signed_in_client(console.url, token, timeout=timeout) as http, ExitStack() as feeds:
        opened = [feeds.enter_context(http.stream("GET", url)) for _ in range(MAX_LIVE_FEEDS)]
        assert {feed.status_code for feed in opened} == {200}
        assert opened[0].headers["content-type"].startswith("text/event-stream")
        refused = http.get(url)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert refused.json()["type"] == "too-many-subscribers"
    # Every tab closed: the console notices each disconnection and frees its place.
    with signed_in_client(console.url, token, timeout=timeout) as http:

        def one_more() -> bool:
            with http.stream("GET", url) as feed:
                return feed.status_code == 200

        wait_for(one_more, timeout=10.0, what="a place for a new live log")
