"""Security over real processes (API.md, "Security"; docs/security.md): tokens and scopes on
every endpoint of every service, least privilege between the services, no way in through a
browser (Content-Type, Origin, Host), idempotency ids only the command side can compute, and
no token value in any log.

The system here runs as `eventledger up` runs it: one auth file for all four services, each
service presenting its own token to the stream service. Users hold one token per scope
(`only-events.read`) and one per scope with every other scope (`all-but-events.read`).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger.credentials import SCOPES
from tests.e2e.harness import (
    PROBLEM_JSON,
    STARTED,
    Credentials,
    ServiceProcess,
    System,
    cli_env,
    make_credentials,
    new_id,
    problem_type,
    start_system,
    wait_for,
)

pytestmark = pytest.mark.slow

CONSOLE = "http://console.example:8005"  # the one origin configured for CORS
EVIL = "http://evil.example"


def only(scope: str) -> str:
    """The name of the user token with `scope` alone."""
    return "only-" + scope.replace(":", ".")


def all_but(scope: str) -> str:
    """The name of the user token with every scope but `scope`."""
    return "all-but-" + scope.replace(":", ".")


USERS: dict[str, list[str]] = {
    **{only(scope): [scope] for scope in SCOPES},
    **{all_but(scope): [s for s in SCOPES if s != scope] for scope in SCOPES},
    "teller": ["ledger:write", "ledger:read"],
}
HTTP = httpx.Client(timeout=10.0)


@dataclass
class Secured:
    system: System
    credentials: Credentials
    ids: dict[str, str]

    def url(self, service: str, path: str) -> str:
        base = getattr(self.system, service).url
        return base + path.format(**self.ids)

    def bearer(self, name: str) -> dict[str, str]:
        return self.credentials.bearer(name)


@pytest.fixture(scope="module")
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    credentials = make_credentials(root / "credentials", USERS)
    with ExitStack() as stack:
        system = start_system(
            request,
            stack,
            root,
            suite_store,
            credentials=credentials,
            extra_args=["--cors-origin", CONSOLE],
        )
        yield Secured(system, credentials, _seed(system, credentials))
    HTTP.close()


def _seed(system: System, credentials: Credentials) -> dict[str, str]:
    """Accounts and a stream for the endpoints to act on, written with the CLI's token."""
    cli = credentials.bearer("cli")
    ids = {
        "a": new_id("sec"),
        "b": new_id("sec"),
        "c": new_id("sec"),
        "stream": f"probe-{uuid.uuid4().hex[:12]}",
    }
    tx = system.transaction.url
    for account in ("a", "b", "c"):
        body = {"account_id": ids[account], "currency": "EUR"}
        assert HTTP.post(f"{tx}/accounts", json=body, headers=cli).status_code == 201
    deposit = HTTP.post(f"{tx}/accounts/{ids['a']}/deposits", json={"amount": 10_000}, headers=cli)
    assert deposit.status_code == 201, deposit.text
    ids["position"] = str(deposit.json()["position"])
    appended = HTTP.post(
        f"{system.stream.url}/streams/{ids['stream']}",
        json={"expected_version": "any", "events": [{"type": "Probe", "data": {"n": 0}}]},
        headers=cli,
    )
    assert appended.status_code == 201, appended.text
    stored = HTTP.get(f"{system.stream.url}/streams/{ids['stream']}", headers=cli).json()
    ids["event"] = stored["events"][0]["id"]
    return ids


@dataclass(frozen=True)
class Call:
    service: str
    method: str
    path: str
    scope: str
    body: Any = None
    ok: int = 200

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path}"


PROBE = {"expected_version": "any", "events": [{"type": "Probe", "data": {"n": 1}}]}
CALLS = [
    Call("stream", "POST", "/streams/{stream}", "events:append", PROBE, 201),
    Call(
        "stream",
        "POST",
        "/batches",
        "events:append",
        {"appends": [{"stream": "{stream}", **PROBE}]},
        201,
    ),
    Call("stream", "GET", "/streams/{stream}", "events:read"),
    Call("stream", "GET", "/events?after=0&limit=5", "events:read"),
    Call("stream", "GET", "/events/{event}", "events:read"),
    Call("stream", "GET", "/events/subscribe?after={position}", "events:read"),
    Call("stream", "GET", "/metrics", "metrics"),
    Call("transaction", "POST", "/accounts", "ledger:write", {"currency": "EUR"}, 201),
    Call("transaction", "POST", "/accounts/{a}/deposits", "ledger:write", {"amount": 5}, 201),
    Call("transaction", "POST", "/accounts/{a}/withdrawals", "ledger:write", {"amount": 2}, 201),
    Call(
        "transaction",
        "POST",
        "/transfers",
        "ledger:write",
        {"from_account": "{a}", "to_account": "{b}", "amount": 1},
        201,
    ),
    Call("transaction", "POST", "/accounts/{c}/close", "ledger:write", {}, 201),
    Call("transaction", "GET", "/metrics", "metrics"),
    Call("accounting", "GET", "/accounts?limit=5", "ledger:read"),
    Call("accounting", "GET", "/accounts/{a}", "ledger:read"),
    Call("accounting", "GET", "/accounts/{a}/transactions", "ledger:read"),
    Call("accounting", "GET", "/accounts/{a}/balance?at_position={position}", "ledger:read"),
    Call("accounting", "POST", "/admin/rebuild", "admin", {}, 202),
    Call("accounting", "GET", "/metrics", "metrics"),
    Call("statistics", "GET", "/stats", "ledger:read"),
    Call("statistics", "GET", "/stats/daily?from=2026-01-01&to=2026-12-31", "ledger:read"),
    Call("statistics", "POST", "/admin/rebuild", "admin", {}, 202),
    Call("statistics", "GET", "/metrics", "metrics"),
]
POSTS = [call for call in CALLS if call.method == "POST"]


def _body(call: Call, ids: dict[str, str]) -> Any:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.format(**ids)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    return fill(call.body)


def send(secured: Secured, call: Call, headers: dict[str, str]) -> httpx.Response:
    """The call with `headers`; a subscription's response is closed once its head arrived."""
    url = secured.url(call.service, call.path)
    body = None if call.method == "GET" else _body(call, secured.ids)
    with HTTP.stream(call.method, url, json=body, headers=headers) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
        return response


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_endpoint_refuses_a_request_without_a_valid_token(
    secured: Secured, call: Call
) -> None:
    for headers in (
        {},
        {"Authorization": f"Bearer {uuid.uuid4().hex}{uuid.uuid4().hex}"},
        {"Authorization": f"Basic {secured.credentials.tokens['cli']}"},
    ):
        response = send(secured, call, headers)
        assert response.status_code == 401, (headers.keys(), response.text)
        assert problem_type(response) == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_endpoint_refuses_a_token_without_its_scope(secured: Secured, call: Call) -> None:
    response = send(secured, call, secured.bearer(all_but(call.scope)))
    assert response.status_code == 403, response.text
    assert problem_type(response) == "forbidden"
    assert response.json()["missing_scope"] == call.scope
    assert call.scope in response.json()["detail"]


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_endpoint_serves_a_token_with_only_its_scope(secured: Secured, call: Call) -> None:
    response = send(secured, call, secured.bearer(only(call.scope)))
    assert response.status_code == call.ok, response.text


@pytest.mark.parametrize("service", ["stream", "transaction", "accounting", "statistics"])
def test_every_documented_operation_names_its_scope_and_needs_it(
    secured: Secured, service: str
) -> None:
    # The documents are open; every operation in them (the skip/park endpoints of the read
    # models too) shows the bearer scheme with a scope, and is refused without it.
    base = getattr(secured.system, service).url
    document = HTTP.get(f"{base}/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/health":
                assert operation["security"] == []
                continue
            scope = operation["x-required-scope"]
            assert operation["security"] == [{"bearer": [scope]}]
            concrete = path.replace("{", "").replace("}", "")  # any value: auth comes first
            json_body = None if method == "get" else {}
            denied = HTTP.request(method, base + concrete, json=json_body)
            assert denied.status_code == 401, (method, path, denied.text)
            lacking = secured.bearer(all_but(scope))
            refused = HTTP.request(method, base + concrete, json=json_body, headers=lacking)
            assert refused.status_code == 403, (method, path, refused.text)
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("service", ["stream", "transaction", "accounting", "statistics"])
def test_health_and_the_api_documents_need_no_token(secured: Secured, service: str) -> None:
    base = getattr(secured.system, service).url
    for path in ("/health", "/openapi.json", "/docs"):
        assert HTTP.get(base + path).status_code == 200, path


@pytest.mark.parametrize("reader", ["accounting", "statistics"])
def test_a_read_models_token_reads_the_log_but_cannot_append_or_read_balances(
    secured: Secured, reader: str
) -> None:
    token = secured.bearer(reader)
    stream = secured.system.stream.url
    assert HTTP.get(f"{stream}/events?after=0&limit=1", headers=token).status_code == 200
    account = f"account-{secured.ids['a']}"
    append = {"expected_version": "any", "events": [{"type": "MoneyDeposited", "data": {}}]}
    for url, body in (
        (f"{stream}/streams/{account}", append),
        (f"{stream}/batches", {"appends": [{"stream": account, **append}]}),
    ):
        response = HTTP.post(url, json=body, headers=token)
        assert response.status_code == 403, response.text
        assert response.json()["missing_scope"] == "events:append"
    accounting = secured.system.accounting.url
    assert HTTP.get(f"{accounting}/accounts", headers=token).status_code == 403


def test_a_users_ledger_write_token_cannot_append_to_the_stream_service_directly(
    secured: Secured,
) -> None:
    teller = secured.bearer("teller")
    stream = secured.system.stream.url
    before = secured.system.head_position()
    minted = {
        "expected_version": "any",
        "events": [{"type": "MoneyDeposited", "data": {"amount": 10**9}}],
    }
    response = HTTP.post(
        f"{stream}/streams/account-{secured.ids['b']}", json=minted, headers=teller
    )
    assert response.status_code == 403, response.text
    assert HTTP.get(f"{stream}/events", headers=teller).status_code == 403
    assert secured.system.head_position() == before
    # What the teller may do goes through the command side, with its rules.
    tx = secured.system.transaction.url
    deposit = HTTP.post(
        f"{tx}/accounts/{secured.ids['b']}/deposits", json={"amount": 3}, headers=teller
    )
    assert deposit.status_code == 201, deposit.text


def test_the_transaction_services_token_cannot_operate_the_read_models(secured: Secured) -> None:
    token = secured.bearer("transaction")
    accounting = secured.system.accounting.url
    assert HTTP.post(f"{accounting}/admin/rebuild", json={}, headers=token).status_code == 403
    assert HTTP.get(f"{accounting}/accounts", headers=token).status_code == 403


@pytest.mark.parametrize("call", POSTS, ids=str)
def test_a_request_that_changes_state_must_be_sent_as_json(secured: Secured, call: Call) -> None:
    token = secured.bearer(only(call.scope))
    url = secured.url(call.service, call.path)
    payload = json.dumps(_body(call, secured.ids)).encode()
    before = secured.system.head_position()
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = dict(token)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = HTTP.post(url, content=payload, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert problem_type(response) == "unsupported-media-type"
    assert secured.system.head_position() == before


@pytest.mark.parametrize("service", ["stream", "transaction", "accounting", "statistics"])
def test_a_page_of_another_origin_is_refused_even_with_a_token(
    secured: Secured, service: str
) -> None:
    base = getattr(secured.system, service).url
    cli = secured.bearer("cli")
    before = secured.system.head_position()
    read = HTTP.get(f"{base}/metrics", headers={**cli, "Origin": EVIL})
    assert read.status_code == 403 and problem_type(read) == "forbidden-origin"
    preflight = HTTP.options(
        f"{base}/admin/rebuild",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    post = next(call for call in POSTS if call.service == service)
    write = HTTP.post(
        secured.url(service, post.path),
        json=_body(post, secured.ids),
        headers={**cli, "Origin": EVIL},
    )
    assert write.status_code == 403, write.text
    assert secured.system.head_position() == before


def test_a_configured_origin_and_the_services_own_origin_are_served(secured: Secured) -> None:
    base = secured.system.accounting.url
    preflight = HTTP.options(
        f"{base}/accounts",
        headers={
            "Origin": CONSOLE,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == CONSOLE
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    cli = secured.bearer("cli")
    read = HTTP.get(f"{base}/accounts", headers={**cli, "Origin": CONSOLE})
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == CONSOLE
    own = HTTP.get(f"{base}/accounts", headers={**cli, "Origin": base})  # its /docs page
    assert own.status_code == 200


@pytest.mark.parametrize("service", ["stream", "transaction", "accounting", "statistics"])
def test_a_request_naming_another_host_is_refused(secured: Secured, service: str) -> None:
    process: ServiceProcess = getattr(secured.system, service)
    for host in (f"evil.example:{process.port}", f"127.0.0.1:{process.port + 1}", "localhost"):
        response = HTTP.get(f"{process.url}/health", headers={"Host": host})
        assert response.status_code == 421, (host, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
    for host in (f"localhost:{process.port}", f"127.0.0.1:{process.port}"):
        assert HTTP.get(f"{process.url}/health", headers={"Host": host}).status_code == 200


def test_idempotency_ids_depend_on_the_installations_secret_and_survive_a_restart(
    secured: Secured, tmp_path: Path
) -> None:
    system, cli = secured.system, secured.bearer("cli")
    key = f"sec-key-{uuid.uuid4()}"
    headers = {**cli, "Idempotency-Key": key}
    path = f"/accounts/{secured.ids['a']}/deposits"
    first = HTTP.post(system.transaction.url + path, json={"amount": 7}, headers=headers)
    assert first.status_code == 201, first.text

    # Another installation (its own data dir, so its own secret) derives other ids.
    other = ServiceProcess(
        "transaction", tmp_path / "other", tmp_path / "logs", system.transaction.extra_args
    )
    try:
        other.start().wait_healthy()
        elsewhere = HTTP.post(other.url + path, json={"amount": 7}, headers=headers)
        assert elsewhere.status_code == 201, elsewhere.text
    finally:
        other.stop()
    assert elsewhere.json()["transaction_id"] != first.json()["transaction_id"]
    log = HTTP.get(f"{system.stream.url}/streams/account-{secured.ids['a']}", headers=cli).json()[
        "events"
    ]
    ids = [event["id"] for event in log if event["metadata"].get("idempotency_key") == key]
    assert len(ids) == 2 and ids[0] != ids[1]

    # The secret persists: after a restart the key still answers its first response.
    system.transaction.restart()
    again = HTTP.post(system.transaction.url + path, json={"amount": 7}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["transaction_id"] == first.json()["transaction_id"]


def test_the_cli_presents_eventledger_token_and_says_what_to_do_without_one(
    secured: Secured, tmp_path: Path
) -> None:
    system = secured.system
    ports = {f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services}

    def eventledger(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eventledger", *args],
            env=cli_env(**ports, EVENTLEDGER_DATA_DIR=str(tmp_path / "none"), **env),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    refused = eventledger("open", "--currency", "EUR")
    assert refused.returncode == 1
    assert "Authentication required" in refused.stderr
    assert "EVENTLEDGER_TOKEN" in refused.stderr
    token = secured.credentials.tokens["cli"]
    opened = eventledger("open", "--currency", "EUR", EVENTLEDGER_TOKEN=token)
    assert opened.returncode == 0, opened.stderr
    rebuilt = eventledger("rebuild", "statistics", EVENTLEDGER_TOKEN=token)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert token not in opened.stdout + opened.stderr + refused.stderr


def test_a_token_issued_or_revoked_while_the_services_run_counts_within_seconds(
    secured: Secured,
) -> None:
    auth_file = str(secured.credentials.auth_file)

    def token_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eventledger", "token", *args, "--auth-file", auth_file],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    created = token_command("create", "--name", "auditor-2026-12", "--scope", "ledger:read")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 43 and token not in created.stderr
    url = secured.url("accounting", "/accounts/{a}")
    auditor = {"Authorization": f"Bearer {token}"}
    wait_for(
        lambda: HTTP.get(url, headers=auditor).status_code == 200,
        timeout=10.0,
        what="the new token to be accepted",
    )
    revoked = token_command("revoke", "--name", "auditor-2026-12")
    assert revoked.returncode == 0, revoked.stderr
    wait_for(
        lambda: HTTP.get(url, headers=auditor).status_code == 401,
        timeout=10.0,
        what="the revoked token to be refused",
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_a_service_serves_https_with_its_own_tls_options(secured: Secured, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x"]
    names = ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        ["openssl", *request, *names, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    auth = ["--auth-file", str(secured.credentials.auth_file)]
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    stream = ServiceProcess("stream", tmp_path / "data", tmp_path / "logs", auth + tls)
    https = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5.0)
    base = stream.url.replace("http://", "https://")

    def healthy() -> bool:
        try:
            return https.get(f"{base}/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        stream.start()
        wait_for(healthy, timeout=30.0, what=f"https /health\n{stream.log_tail()}")
        assert https.get(f"{base}/events").status_code == 401
        reader = secured.bearer("accounting")
        assert https.get(f"{base}/events", headers=reader).status_code == 200
        with pytest.raises(httpx.TransportError):
            HTTP.get(f"{stream.url}/events", headers=reader)  # no plain HTTP beside it
    finally:
        https.close()
        stream.stop()


def test_a_non_loopback_bind_without_an_auth_file_refuses_to_start(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: were the check ever skipped, the
    # bind would fail rather than listen. The refusal comes before any bind.
    result = subprocess.run(
        [sys.executable, "-m", "eventledger", "serve", "stream", "--host", "192.0.2.1"],
        env=cli_env(EVENTLEDGER_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 192.0.2.1 without an auth file" in result.stderr
    assert "--insecure-no-auth" in result.stderr
    assert not (tmp_path / "data").exists()


def test_no_token_value_appears_in_any_service_log(secured: Secured) -> None:
    # Last in this module: every service process of the session so far, this module's
    # included (their 401s, 403s, restarts and stops), against every token of this module;
    # each token is also presented to every service here, and a mangled copy of it.
    for token in secured.credentials.tokens.values():
        for process in secured.system.services:
            for presented in (token, token[:-1], f"{token} {token}"):
                HTTP.get(f"{process.url}/metrics", headers={"Authorization": f"Bearer {presented}"})
    leaks = [
        (process.log_path.name, name)
        for process in STARTED
        for name, token in secured.credentials.tokens.items()
        if token in process.log_text()
    ]
    assert leaks == []
    assert len(STARTED) >= 4
