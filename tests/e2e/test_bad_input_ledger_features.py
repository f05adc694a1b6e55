"""Bad input at the doors issue 11 added (two-phase transfers, reversals, erasure), over real
processes: every case answers its 4xx problem document with a stable `type`, and changes
nothing: the log's head is where it was, and both read models are still `ok`, at the head
(none halted). Then the scopes each new route needs, on a system with tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.harness import (
    Credentials,
    System,
    assert_problem,
    make_credentials,
    new_id,
    problem_type,
    start_system,
    wait_for,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Bad:
    """One bad request. `{a}` etc. in the path and body are filled in from the world."""

    service: str
    method: str
    path: str
    body: bytes | None = b"{}"
    status: int = 422
    type: str = "validation-error"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def raw(value: object) -> bytes:
    return json.dumps(value).encode()


# Path ids no route may take: too long, not ASCII, dot segments, control characters, other
# spellings of a UUID, an emoji, an encoded slash. (`..` unencoded is normalised away by the
# client, so it is sent encoded.)
BAD_TRANSACTION_IDS = {
    "too long": "x" * 200,
    "unicode": "%C3%BC",
    "dot dot": "%2e%2e",
    "NUL": "%00",
    "newline": "%0a",
    "upper case": "{H_UPPER}",
    "braces": "%7B{h}%7D",
    "emoji": "%F0%9F%92%B0",
}
BAD_ACCOUNT_IDS = {
    "65 characters": "a" * 65,
    "unicode": "k%C3%B6nt",
    "dot dot": "%2e%2e",
    "NUL": "a%00",
    "newline": "a%0a",
    "leading dash": "-a",
}


def cases() -> Iterator[tuple[str, Bad]]:
    for name, tid in BAD_TRANSACTION_IDS.items():
        for what, method, path in [
            ("post", "POST", "/transfers/{tid}/post"),
            ("void", "POST", "/transfers/{tid}/void"),
            ("read transfer", "GET", "/transfers/{tid}"),
            ("reverse", "POST", "/transactions/{tid}/reverse"),
        ]:
            body = b"{}" if method == "POST" else None
            yield (
                f"{what}: id {name}",
                Bad(
                    "transaction", method, path.format(tid=tid), body, 422, "invalid-transaction-id"
                ),
            )
        yield (
            f"transaction events: id {name}",
            Bad("stream", "GET", f"/transactions/{tid}/events", None),
        )
    for name, aid in BAD_ACCOUNT_IDS.items():
        yield (
            f"forget: id {name}",
            Bad("transaction", "POST", f"/accounts/{aid}/forget", None, 422, "invalid-account-id"),
        )
        yield f"pending: id {name}", Bad("accounting", "GET", f"/accounts/{aid}/pending", None)
        yield (
            f"admin forget: id {name}",
            Bad("stream", "POST", f"/admin/accounts/{aid}/forget", raw({"expected_version": 1})),
        )

    post = "/transfers/{h}/post"
    for name, body in [
        ('"10"', b'{"amount": "10"}'),
        ("10.0", b'{"amount": 10.0}'),
        ("true", b'{"amount": true}'),
        ("1e3", b'{"amount": 1e3}'),
        ("null", b'{"amount": null}'),
        ("0", b'{"amount": 0}'),
        ("negative", b'{"amount": -1}'),
        ("2^53", raw({"amount": 2**53})),
        ("2^63", raw({"amount": 2**63})),
        ("an object", b'{"amount": {"value": 1}}'),
        ("an unknown key", b'{"amount": 1, "memo": "x"}'),
        ("a reference", b'{"amount": 1, "reference": "x"}'),
        ("not an object", b"[1]"),
    ]:
        yield f"post amount {name}", Bad("transaction", "POST", post, body)
    yield (
        "post above the hold",
        Bad("transaction", "POST", post, b'{"amount": 101}', 422, "amount-exceeds-hold"),
    )
    yield (
        "post duplicate keys",
        Bad("transaction", "POST", post, b'{"amount": 1, "amount": 2}', 400, "malformed-json"),
    )
    yield (
        "post nested 5000 deep",
        Bad(
            "transaction",
            "POST",
            post,
            b'{"amount": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            400,
            "malformed-json",
        ),
    )
    yield (
        "post 2 MiB",
        Bad(
            "transaction", "POST", post, b'{"r": "' + b"x" * 2 * MIB + b'"}', 413, "body-too-large"
        ),
    )
    yield (
        "post as text/plain",
        Bad(
            "transaction",
            "POST",
            post,
            b"{}",
            415,
            "unsupported-media-type",
            {"Content-Type": "text/plain"},
        ),
    )
    void = "/transfers/{h}/void"
    for name, body in [
        ("an amount", b'{"amount": 1}'),
        ("a reason", b'{"reason": "expired"}'),
        ("null", b"null"),
    ]:
        yield f"void with {name}", Bad("transaction", "POST", void, body)
    yield (
        "void duplicate keys",
        Bad("transaction", "POST", void, b'{"a": 1, "a": 2}', 400, "malformed-json"),
    )
    yield (
        "void 2 MiB",
        Bad(
            "transaction", "POST", void, b'{"r": "' + b"x" * 2 * MIB + b'"}', 413, "body-too-large"
        ),
    )

    hold = {"from_account": "{a}", "to_account": "{b}", "amount": 1, "pending": True}
    for name, extra in [
        ("timeout 0", {"timeout_seconds": 0}),
        ("timeout 30 days + 1 s", {"timeout_seconds": 2_592_001}),
        ("timeout 2^63", {"timeout_seconds": 2**63}),
        ("timeout as text", {"timeout_seconds": "60"}),
        ("timeout 60.0", {"timeout_seconds": 60.0}),
        ("timeout true", {"timeout_seconds": True}),
        ("timeout null", {"timeout_seconds": None}),
        ("pending as text", {"pending": "true"}),
        ("pending 1", {"pending": 1}),
        ("pending null", {"pending": None}),
        ("an expires_at of its own", {"expires_at": "2030-01-01T00:00:00Z"}),
        ("amount 2^53", {"amount": 2**53}),
        ("amount 0", {"amount": 0}),
    ]:
        yield f"hold with {name}", Bad("transaction", "POST", "/transfers", raw({**hold, **extra}))
    for name, extra, status, type_ in [
        (
            "a timeout without pending",
            {"pending": False, "timeout_seconds": 60},
            422,
            "invalid-expires-at",
        ),
        ("a closed receiver", {"to_account": "{c}"}, 409, "account-closed"),
        ("a closed sender", {"from_account": "{c}"}, 409, "account-closed"),
        ("two currencies", {"to_account": "{u}"}, 409, "currency-mismatch"),
        ("one account twice", {"to_account": "{a}"}, 422, "same-account-transfer"),
        ("more than is available", {"amount": 10**9}, 409, "insufficient-funds"),
        ("an unknown receiver", {"to_account": "nobody-at-all"}, 404, "account-not-found"),
    ]:
        yield (
            f"hold with {name}",
            Bad("transaction", "POST", "/transfers", raw({**hold, **extra}), status, type_),
        )
    yield (
        "hold timeout 1e3",
        Bad("transaction", "POST", "/transfers", raw(hold)[:-1] + b', "timeout_seconds": 1e3}'),
    )

    for kind in ("d", "w", "t", "r", "unknown"):
        for action in ("post", "void"):
            yield (
                f"{action} of a {kind}",
                Bad(
                    "transaction",
                    "POST",
                    f"/transfers/{{{kind}}}/{action}",
                    b"{}",
                    404,
                    "transfer-not-found",
                ),
            )
    for action in ("post", "void"):
        yield (
            f"{action} of a voided hold",
            Bad(
                "transaction",
                "POST",
                f"/transfers/{{v}}/{action}",
                b"{}",
                409,
                "transfer-not-pending",
            ),
        )
    for kind, status, type_ in [
        ("r", 409, "not-reversible"),
        ("v", 409, "not-reversible"),
        ("h", 409, "transfer-pending"),
        ("reversed", 409, "already-reversed"),
        ("unknown", 404, "transaction-not-found"),
    ]:
        yield (
            f"reverse of a {kind}",
            Bad("transaction", "POST", f"/transactions/{{{kind}}}/reverse", b"{}", status, type_),
        )
    reverse = "/transactions/{t}/reverse"
    for name, body, status, type_ in [
        ("an unknown key", b'{"reason": "x"}', 422, "validation-error"),
        ("a numeric reference", b'{"reference": 5}', 422, "validation-error"),
        ("a NUL in the reference", b'{"reference": "a\\u0000b"}', 422, "invalid-reference"),
        ("a bidi override", b'{"reference": "\\u202egpj.exe"}', 422, "invalid-reference"),
        ("257 characters", raw({"reference": "x" * 257}), 422, "validation-error"),
        ("duplicate keys", b'{"reference": "a", "reference": "b"}', 400, "malformed-json"),
        ("2 MiB", raw({"reference": "x" * 2 * MIB}), 413, "body-too-large"),
    ]:
        yield f"reverse with {name}", Bad("transaction", "POST", reverse, body, status, type_)

    for name, body, status, type_ in [
        ("a field", b'{"fields": ["reference"]}', 422, "validation-error"),
        ("duplicate keys", b'{"a": 1, "a": 2}', 400, "malformed-json"),
        ("2 MiB", raw({"x": "x" * 2 * MIB}), 413, "body-too-large"),
    ]:
        yield (
            f"forget with {name}",
            Bad("transaction", "POST", "/accounts/{a}/forget", body, status, type_),
        )
    yield (
        "forget of an unknown account",
        Bad(
            "transaction", "POST", "/accounts/nobody-at-all/forget", None, 404, "account-not-found"
        ),
    )
    admin = "/admin/accounts/{a}/forget"
    for name, body, status, type_ in [
        ("expected_version as text", raw({"expected_version": "1"}), 422, "validation-error"),
        ("expected_version -1", raw({"expected_version": -1}), 422, "invalid-append"),
        ("an unknown key", raw({"expected_version": 1, "x": 1}), 422, "validation-error"),
        ("a bad event id", raw({"expected_version": 1, "event_id": "x"}), 422, "validation-error"),
        (
            "duplicate keys",
            b'{"expected_version": 1, "expected_version": 2}',
            400,
            "malformed-json",
        ),
        ("2 MiB", raw({"x": "x" * 2 * MIB}), 413, "body-too-large"),
        ("a stale version", raw({"expected_version": 1}), 409, "wrong-expected-version"),
    ]:
        yield f"admin forget with {name}", Bad("stream", "POST", admin, body, status, type_)
    yield (
        "admin forget of an unknown account",
        Bad(
            "stream", "POST", "/admin/accounts/nobody-at-all/forget", None, 404, "stream-not-found"
        ),
    )
    yield (
        "admin forget of a never opened account at version 0",
        Bad(
            "stream",
            "POST",
            "/admin/accounts/nobody-at-all/forget",
            raw({"expected_version": 0}),
            422,
            "invalid-account-event",
        ),
    )

    for query in ["limit=0", "limit=1001", "limit=x", "limit=-1", "limit=99999999999999999999"]:
        yield (
            f"transaction events {query}",
            Bad("stream", "GET", f"/transactions/{{d}}/events?{query}", None),
        )
    for query in [
        "limit=0",
        "limit=x",
        "after=zzz",
        "after=" + "x" * 300,
        "limit=99999999999999999999",
    ]:
        yield (
            f"pending {query[:20]}",
            Bad("accounting", "GET", f"/accounts/{{a}}/pending?{query}", None),
        )
    # Found this session (each also has its in-process test):
    past_int64 = base64.urlsafe_b64encode(b"p9999999999999999999").decode().rstrip("=")
    yield (
        "pending with a cursor past 2^63",
        Bad("accounting", "GET", f"/accounts/{{a}}/pending?after={past_int64}", None),
    )
    yield (
        "history with a cursor past 2^63",
        Bad("accounting", "GET", f"/accounts/{{a}}/transactions?before={past_int64}", None),
    )
    yield (
        "forget with a malformed Idempotency-Key",
        Bad(
            "transaction",
            "POST",
            "/accounts/{a}/forget",
            None,
            400,
            "invalid-idempotency-key",
            {**JSON, "Idempotency-Key": "a b"},
        ),
    )
    for name, metadata in [("erased", {"erased": "x"}), ("70 kB", {"n": "x" * 70_000})]:
        yield (
            f"admin forget with metadata {name}",
            Bad("stream", "POST", admin, raw({"expected_version": 1, "metadata": metadata})),
        )
    marked = {"type": "E2eThing", "data": {}, "metadata": {"erased": ["reference"]}}
    yield (
        "append with metadata.erased",
        Bad(
            "stream",
            "POST",
            "/streams/e2e-marked",
            raw({"expected_version": "any", "events": [marked]}),
        ),
    )


CASES = list(cases())


@pytest.fixture(scope="module")
def world(system: System) -> dict[str, str]:
    """Accounts a (EUR, funded), b (EUR), u (USD), c (closed); a deposit d, a withdrawal w and
    a transfer t; a hold h of 100 (pending), a voided hold v, a reversal r (of `reversed`)."""
    ids: dict[str, str] = {}
    with httpx.Client(base_url=system.transaction.url, timeout=15.0) as http:

        def ok(path: str, body: object) -> dict[str, str]:
            answer = http.post(path, json=body)
            assert answer.status_code == 201, answer.text
            return dict(answer.json())

        for key, currency in (("a", "EUR"), ("b", "EUR"), ("u", "USD"), ("c", "EUR")):
            ids[key] = new_id("bad-ledger")
            ok("/accounts", {"account_id": ids[key], "currency": currency})
        ids["d"] = ok(f"/accounts/{ids['a']}/deposits", {"amount": 10_000})["transaction_id"]
        ids["w"] = ok(f"/accounts/{ids['a']}/withdrawals", {"amount": 10})["transaction_id"]
        transfer = {"from_account": ids["a"], "to_account": ids["b"]}
        ids["t"] = ok("/transfers", {**transfer, "amount": 10})["transaction_id"]
        ids["h"] = ok("/transfers", {**transfer, "amount": 100, "pending": True})["transaction_id"]
        ids["v"] = ok("/transfers", {**transfer, "amount": 5, "pending": True})["transaction_id"]
        ok(f"/transfers/{ids['v']}/void", {})
        ids["reversed"] = ok(f"/accounts/{ids['a']}/deposits", {"amount": 5})["transaction_id"]
        ids["r"] = ok(f"/transactions/{ids['reversed']}/reverse", {})["transaction_id"]
        ok(f"/accounts/{ids['c']}/close", {})
    ids["unknown"] = "00000000-0000-4000-8000-000000000000"
    ids["H_UPPER"] = ids["h"].upper()
    return ids


def fill(text: str, world: dict[str, str]) -> str:
    for key in sorted(world, key=len, reverse=True):
        text = text.replace("{" + key + "}", world[key])
    return text


def settled(system: System, head: int) -> None:
    """Both read models `ok`, not halted, and at the head."""

    def at_head() -> bool:
        for service in (system.accounting, system.statistics):
            health = httpx.get(f"{service.url}/health", timeout=5.0).json()
            assert health["status"] == "ok" and health["halted"] is None, health
            if health["position"] != head:
                return False
        return True

    wait_for(at_head, timeout=15, what=f"both read models at position {head}")


@pytest.mark.parametrize("bad", [case for _, case in CASES], ids=[name for name, _ in CASES])
async def test_bad_input_at_the_new_doors_is_refused_and_changes_nothing(
    system: System, world: dict[str, str], client: httpx.AsyncClient, bad: Bad
) -> None:
    head = system.head_position()
    base = getattr(system, bad.service).url
    body = None if bad.body is None else fill(bad.body.decode(), world).encode()
    answer = await client.request(
        bad.method, f"{base}{fill(bad.path, world)}", content=body, headers=bad.headers
    )
    assert_problem(answer, bad.status)
    assert problem_type(answer) == bad.type, answer.text[:300]
    assert system.head_position() == head
    settled(system, head)


# -- scopes ------------------------------------------------------------------------------------

SCOPED_USERS = {
    "reader": ("ledger:read",),
    "writer": ("ledger:write",),
    "events": ("events:read",),
    "appender": ("events:append",),
    "admin-only": ("admin",),
}


@pytest.fixture(scope="module")
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[tuple[System, Credentials]]:
    root = tmp_path_factory.mktemp("bad-ledger-scopes")
    credentials = make_credentials(root, SCOPED_USERS)
    with ExitStack() as stack:
        yield start_system(request, stack, root, suite_store, credentials=credentials), credentials


# (service, method, path, body, tokens that lack the scope, the scope the route needs)
SCOPED_ROUTES = [
    ("transaction", "POST", "/transfers/{h}/post", b"{}", ("reader", "events", "admin-only")),
    ("transaction", "POST", "/transfers/{h}/void", b"{}", ("reader", "appender", "admin-only")),
    ("transaction", "GET", "/transfers/{h}", None, ("events", "writer", "admin-only")),
    ("transaction", "POST", "/transactions/{d}/reverse", b"{}", ("reader", "appender")),
    ("transaction", "POST", "/accounts/{a}/forget", None, ("writer", "reader", "appender")),
    ("stream", "GET", "/transactions/{d}/events", None, ("reader", "appender", "admin-only")),
    ("stream", "POST", "/admin/accounts/{a}/forget", None, ("appender", "writer", "events")),
    ("accounting", "GET", "/accounts/{a}/pending", None, ("events", "writer", "admin-only")),
]


async def test_each_new_route_needs_its_scope_and_changes_nothing_without_it(
    secured: tuple[System, Credentials], client: httpx.AsyncClient
) -> None:
    system, credentials = secured
    cli = credentials.bearer("cli")
    ids: dict[str, str] = {"a": new_id("scoped"), "b": new_id("scoped")}
    tx = system.transaction.url
    for account in (ids["a"], ids["b"]):
        opened = await client.post(
            f"{tx}/accounts", json={"account_id": account, "currency": "EUR"}, headers=cli
        )
        assert opened.status_code == 201, opened.text
    deposit = await client.post(
        f"{tx}/accounts/{ids['a']}/deposits", json={"amount": 500}, headers=cli
    )
    ids["d"] = deposit.json()["transaction_id"]
    placed = await client.post(
        f"{tx}/transfers",
        json={"from_account": ids["a"], "to_account": ids["b"], "amount": 100, "pending": True},
        headers=cli,
    )
    ids["h"] = placed.json()["transaction_id"]

    head = system.head_position()
    for service, method, path, body, lacking in SCOPED_ROUTES:
        url = f"{getattr(system, service).url}{fill(path, ids)}"
        for token in (None, "not-a-token", *lacking):
            headers = dict(JSON)
            if token == "not-a-token":
                headers["Authorization"] = "Bearer not-a-valid-token"
            elif token is not None:
                headers.update(credentials.bearer(token))
            answer = await client.request(method, url, content=body, headers=headers)
            if token in (None, "not-a-token"):
                assert_problem(answer, 401)
                assert problem_type(answer) == "unauthenticated"
                assert answer.headers.get("www-authenticate", "").startswith("Bearer")
            else:
                assert_problem(answer, 403)
                assert problem_type(answer) == "forbidden", (token, answer.text)
            assert system.head_position() == head, (method, path, token)
    # With the right scope, the same doors answer (reads), so the refusals were the scopes'.
    read = await client.get(f"{tx}/transfers/{ids['h']}", headers=credentials.bearer("reader"))
    assert read.status_code == 200 and read.json()["status"] == "pending", read.text
    events = await client.get(
        f"{system.stream.url}/transactions/{ids['d']}/events", headers=credentials.bearer("events")
    )
    assert events.status_code == 200, events.text
