"""The scope table (API.md, "Security"), bearer headers, the loopback and origin rules, the
security settings, and idempotency ids under an installation's secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventledger.config import ConfigError, load_settings, normalise_origin
from eventledger.credentials import SCOPES
from eventledger.services.auth import OPEN_PATHS, _bearer_token, required_scope
from eventledger.services.browser import is_loopback, loopback_hosts
from eventledger.services.transaction.idempotency import derived_id

SERVICES = ("stream", "transaction", "accounting", "statistics")

SCOPE_TABLE = [
    ("stream", "GET", "/streams/account-a", "events:read"),
    ("stream", "GET", "/events", "events:read"),
    ("stream", "GET", "/events/subscribe", "events:read"),
    ("stream", "HEAD", "/events/0f8c", "events:read"),
    ("stream", "POST", "/streams/account-a", "events:append"),
    ("stream", "POST", "/batches", "events:append"),
    ("stream", "POST", "/admin/anything", "admin"),
    ("transaction", "POST", "/accounts", "ledger:write"),
    ("transaction", "POST", "/accounts/a/deposits", "ledger:write"),
    ("transaction", "POST", "/transfers", "ledger:write"),
    ("transaction", "POST", "/accounts/a/close", "ledger:write"),
    ("transaction", "GET", "/accounts", "ledger:read"),
    ("accounting", "GET", "/accounts/a/balance", "ledger:read"),
    ("accounting", "POST", "/admin/rebuild", "admin"),
    ("accounting", "POST", "/admin/skip", "admin"),
    ("accounting", "GET", "/admin/parked", "admin"),
    ("accounting", "DELETE", "/accounts/a", "admin"),
    ("statistics", "GET", "/stats/daily", "ledger:read"),
    ("statistics", "POST", "/admin/park", "admin"),
    *[(service, "GET", "/metrics", "metrics") for service in SERVICES],
    *[(service, "GET", path, None) for service in SERVICES for path in sorted(OPEN_PATHS)],
]


@pytest.mark.parametrize(("service", "method", "path", "scope"), SCOPE_TABLE)
def test_each_request_needs_the_scope_of_the_contracts_table(
    service: str, method: str, path: str, scope: str | None
) -> None:
    assert required_scope(service, method, path) == scope


@given(
    st.sampled_from(SERVICES),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    st.text(min_size=1, max_size=40).map(lambda text: "/" + text),
)
def test_every_request_but_health_and_the_documents_needs_a_known_scope(
    service: str, method: str, path: str
) -> None:
    scope = required_scope(service, method, path)
    assert (scope is None) == (path in OPEN_PATHS)
    assert scope is None or scope in SCOPES


def test_only_reads_of_the_log_and_appends_to_it_differ_on_the_stream_service() -> None:
    # Nothing that changes state is ever allowed by a read scope, on any service.
    for service in SERVICES:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert required_scope(service, method, "/x") not in ("events:read", "ledger:read")


BEARERS = [
    ([(b"authorization", b"Bearer abc.DEF-123_~+/=")], "abc.DEF-123_~+/="),
    ([(b"authorization", b"bearer   abc")], "abc"),
    ([], None),
    ([(b"authorization", b"Basic YWxhZGRpbjpvcGVu")], None),
    ([(b"authorization", b"Bearer")], None),
    ([(b"authorization", b"Bearer a b")], None),
    ([(b"authorization", b"Bearer " + b"a" * 600)], None),
    ([(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")], None),
]


@pytest.mark.parametrize(("headers", "token"), BEARERS)
def test_a_token_is_read_only_from_one_well_formed_bearer_header(
    headers: list[tuple[bytes, bytes]], token: str | None
) -> None:
    found, why = _bearer_token(headers)
    assert found == token
    assert (why is None) == (token is not None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("ledger.example", False),
    ],
)
def test_a_loopback_bind_is_told_from_one_others_can_reach(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_on_a_loopback_bind_the_host_header_must_name_the_bound_address() -> None:
    assert loopback_hosts("127.0.0.1", 8001) == {
        "127.0.0.1:8001",
        "localhost:8001",
        "[::1]:8001",
    }
    assert "[::1]:8001" in (loopback_hosts("::1", 8001) or ())
    assert "127.0.0.2:8001" in (loopback_hosts("127.0.0.2", 8001) or ())
    assert loopback_hosts("0.0.0.0", 8001) is None


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("http://127.0.0.1:8005", "http://127.0.0.1:8005"),
        ("HTTPS://Console.Example/", "https://console.example"),
    ],
)
def test_a_cors_origin_is_kept_as_browsers_send_it(origin: str, normal: str) -> None:
    assert normalise_origin(origin) == normal


@pytest.mark.parametrize(
    "origin", ["*", "null", "console.example", "http://a.example/path", "ftp://a.example"]
)
def test_a_cors_origin_that_is_no_origin_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError, match="CORS origin"):
        normalise_origin(origin, "--cors-origin")


def test_security_settings_come_from_flags_over_the_environment() -> None:
    env = {
        "EVENTLEDGER_AUTH_FILE": "/etc/ledger/auth.json",
        "EVENTLEDGER_STREAM_TOKEN": "t" * 43,
        "EVENTLEDGER_CORS_ORIGINS": "http://a.example:1, http://b.example",
        "EVENTLEDGER_IDEMPOTENCY_SECRET": "s" * 32,
    }
    settings = load_settings({}, env)
    assert str(settings.auth_file) == "/etc/ledger/auth.json"
    assert settings.stream_token == "t" * 43
    assert settings.cors_origins == ("http://a.example:1", "http://b.example")
    assert settings.idempotency_secret == "s" * 32
    assert "t" * 43 not in repr(settings) and "s" * 32 not in repr(settings)
    flagged = load_settings({"cors_origin": ["http://c.example"], "stream_token_file": "f"}, env)
    assert flagged.cors_origins == ("http://c.example",)
    assert flagged.stream_token is None and str(flagged.stream_token_file) == "f"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"insecure_no_auth": "1"}, {"EVENTLEDGER_AUTH_FILE": "a.json"}, "contradict"),
        ({}, {"EVENTLEDGER_STREAM_TOKEN": "short"}, "EVENTLEDGER_STREAM_TOKEN does not hold"),
        ({}, {"EVENTLEDGER_IDEMPOTENCY_SECRET": "short"}, "at least 32 characters"),
        ({}, {"EVENTLEDGER_CORS_ORIGINS": "*"}, "EVENTLEDGER_CORS_ORIGINS"),
    ],
)
def test_a_bad_security_setting_is_refused_by_name_without_echoing_a_token(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load_settings(flags, env)
    for secret in ("EVENTLEDGER_STREAM_TOKEN", "EVENTLEDGER_IDEMPOTENCY_SECRET"):
        assert secret not in env or repr(env[secret]) not in str(refused.value)


def test_idempotency_ids_are_stable_under_one_secret_and_differ_under_another() -> None:
    first = derived_id(b"secret-one" * 4, "key-1", "0")
    assert first == derived_id(b"secret-one" * 4, "key-1", "0")
    assert first != derived_id(b"secret-two" * 4, "key-1", "0")
    assert first != derived_id(b"secret-one" * 4, "key-1", "1")
    assert first != derived_id(b"secret-one" * 4, "key-2", "0")
    assert first.version == 8 and first.variant == "specified in RFC 4122"
