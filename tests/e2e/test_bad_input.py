"""Bad input of every kind: a 4xx problem document, never a 5xx, and nothing written."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.harness import System, assert_problem, min_position, new_id, problem_type

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
ACCOUNT = new_id("bad-input")
OTHER = new_id("bad-input")
STREAM = f"e2e-bad-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Bad:
    """One bad request: `{account}`, `{other}` and `{stream}` in the path are filled in."""

    service: str
    method: str
    path: str
    body: object = None  # bytes: sent as they are; anything else: encoded as JSON
    headers: dict[str, str] = field(default_factory=dict)
    statuses: tuple[int, ...] = ()  # the statuses accepted; () any 4xx
    chunked: bool = False  # sent without Content-Length, in chunks

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def raw(text: str) -> bytes:
    return text.encode()


def amounts(path: str) -> Iterator[tuple[str, Bad]]:
    """Every kind of bad amount, to one money command."""
    for name, body in [
        ("a float", raw('{"amount": 10.0}')),
        ("a fraction", raw('{"amount": 10.5}')),
        ("a string", {"amount": "10"}),
        ("a boolean", {"amount": True}),
        ("an exponent", raw('{"amount": 1e3}')),
        ("negative", {"amount": -5}),
        ("zero", {"amount": 0}),
        ("2^53", {"amount": 2**53}),
        ("2^63", {"amount": 2**63}),
        ("10^30", raw('{"amount": 1000000000000000000000000000000}')),
        ("null", {"amount": None}),
        ("missing", {}),
        ("NaN", raw('{"amount": NaN}')),
        ("Infinity", raw('{"amount": Infinity}')),
        ("an object", {"amount": {"value": 10}}),
    ]:
        yield f"{path} amount {name}", Bad("transaction", "POST", path, body, statuses=(400, 422))


def cases() -> Iterator[tuple[str, Bad]]:
    deposit = "/accounts/{account}/deposits"
    yield from amounts(deposit)
    yield from amounts("/accounts/{account}/withdrawals")
    for name, body, statuses in [
        ("unknown field", {"amount": 1, "memo": "x"}, (422,)),
        ("duplicate keys", raw('{"amount": 1, "amount": 2}'), (400, 422)),
        ("malformed JSON", raw('{"amount": '), (400,)),
        ("trailing garbage", raw('{"amount": 1} x'), (400,)),
        ("not an object", raw("[1]"), (400, 422)),
        ("a bare string", raw('"x"'), (400, 422)),
        ("null body", raw("null"), (400, 422)),
        ("empty body", b"", (400, 422)),
        ("not UTF-8", b'{"amount": 1, "reference": "\xff\xfe"}', (400,)),
        ("deep nesting", raw("[" * 100_000 + "]" * 100_000), (400, 413, 422)),
        ("2 MiB body", raw('{"amount": 1, "reference": "' + "x" * 2 * MIB + '"}'), (413,)),
        ("long reference", {"amount": 1, "reference": "x" * 257}, (422,)),
        ("control characters", {"amount": 1, "reference": "a\u0000b"}, (422,)),
        ("numeric reference", {"amount": 1, "reference": 5}, (422,)),
    ]:
        yield f"deposit {name}", Bad("transaction", "POST", deposit, body, statuses=statuses)
    big = raw('{"amount": 1, "reference": "' + "x" * 2 * MIB + '"}')
    yield (
        "deposit 2 MiB chunked",
        Bad("transaction", "POST", deposit, big, statuses=(413,), chunked=True),
    )
    yield (
        "deposit as text/plain",
        Bad(
            "transaction",
            "POST",
            deposit,
            {"amount": 1},
            {"Content-Type": "text/plain"},
            (400, 415),
        ),
    )
    for name, key in [
        ("empty", ""),
        ("too long", "k" * 256),
        ("with a space", "a b"),
        ("with a tab", "a\tb"),
    ]:
        yield (
            f"idempotency key {name}",
            Bad("transaction", "POST", deposit, {"amount": 1}, {"Idempotency-Key": key}),
        )
    for name, account_id in [
        ("empty", ""),
        ("leading dash", "-abc"),
        ("65 characters", "a" * 65),
        ("a space", "a b"),
        ("non-ASCII", "kontö"),
        ("a slash", "../x"),
        ("a number", 5),
    ]:
        yield (
            f"open with account id {name}",
            Bad("transaction", "POST", "/accounts", {"account_id": account_id, "currency": "EUR"}),
        )
    for name, body in [
        ("lower-case currency", {"currency": "eur"}),
        ("unknown currency", {"currency": "XYZ"}),
        ("long currency", {"currency": "EURO"}),
        ("numeric currency", {"currency": 978}),
        ("no currency", {}),
        ("negative overdraft", {"currency": "EUR", "overdraft_limit": -1}),
        ("float overdraft", {"currency": "EUR", "overdraft_limit": 1.5}),
        ("string overdraft", {"currency": "EUR", "overdraft_limit": "0"}),
        ("overdraft of 2^53", {"currency": "EUR", "overdraft_limit": 2**53}),
        ("boolean overdraft", {"currency": "EUR", "overdraft_limit": True}),
        ("numeric owner", {"currency": "EUR", "owner": 5}),
        ("unknown field", {"currency": "EUR", "colour": "blue"}),
    ]:
        yield f"open with {name}", Bad("transaction", "POST", "/accounts", body, statuses=(422,))
    for name, body in [
        ("a float amount", {"from_account": "{account}", "to_account": "{other}", "amount": 1.0}),
        ("no to_account", {"from_account": "{account}", "amount": 1}),
        ("the same account", {"from_account": "{account}", "to_account": "{account}", "amount": 1}),
        ("a bad account id", {"from_account": "{account}", "to_account": "../x", "amount": 1}),
        (
            "an unknown field",
            {"from_account": "{account}", "to_account": "{other}", "amount": 1, "fee": 1},
        ),
    ]:
        yield f"transfer with {name}", Bad("transaction", "POST", "/transfers", body)
    for name, path in [("a dash", "-bad"), ("65 characters", "a" * 65), ("a dot", ".x")]:
        yield (
            f"deposit to an account id with {name}",
            Bad("transaction", "POST", f"/accounts/{path}/deposits", {"amount": 1}),
        )

    event = {"type": "E2eThing", "data": {"n": 1}}
    ok_append = {"expected_version": "any", "events": [event]}
    for name, stream in [
        ("a leading dash", "-bad"),
        ("129 characters", "s" * 129),
        ("a space", "a%20b"),
        ("non-ASCII", "str%C3%B6m"),
        ("a colon", "a:b"),
    ]:
        yield (
            f"append to a stream name with {name}",
            Bad("stream", "POST", f"/streams/{stream}", ok_append),
        )
        yield f"read a stream name with {name}", Bad("stream", "GET", f"/streams/{stream}")
    for name, body in [
        ("expected_version -1", {"expected_version": -1, "events": [event]}),
        ("expected_version sometimes", {"expected_version": "sometimes", "events": [event]}),
        ("expected_version 1.5", {"expected_version": 1.5, "events": [event]}),
        ("expected_version true", {"expected_version": True, "events": [event]}),
        ("expected_version as a string", {"expected_version": "1", "events": [event]}),
        ("no expected_version", {"events": [event]}),
        ("no events", {"expected_version": "any", "events": []}),
        ("events missing", {"expected_version": "any"}),
        ("an event without type", {"expected_version": "any", "events": [{"data": {}}]}),
        ("a bad event type", {"expected_version": "any", "events": [{**event, "type": "1x"}]}),
        ("data not an object", {"expected_version": "any", "events": [{**event, "data": [1]}]}),
        ("data missing", {"expected_version": "any", "events": [{"type": "E2eThing"}]}),
        ("an unknown event field", {"expected_version": "any", "events": [{**event, "x": 1}]}),
        ("a bad event id", {"expected_version": "any", "events": [{**event, "id": "not-a-uuid"}]}),
        (
            "schema_version 0",
            {"expected_version": "any", "events": [{**event, "schema_version": 0}]},
        ),
        (
            "schema_version '1'",
            {"expected_version": "any", "events": [{**event, "schema_version": "1"}]},
        ),
        (
            "metadata not an object",
            {"expected_version": "any", "events": [{**event, "metadata": "x"}]},
        ),
        ("1001 events", {"expected_version": "any", "events": [event] * 1001}),
        ("an unknown field", {"expected_version": "any", "events": [event], "force": True}),
    ]:
        yield (
            f"append with {name}",
            Bad("stream", "POST", "/streams/{stream}", body, statuses=(400, 413, 422)),
        )
    big_append = raw(
        '{"expected_version": "any", "events": [{"type": "E2eThing", "data": {"s": "'
        + "x" * 2 * MIB
        + '"}}]}'
    )
    yield (
        "append 2 MiB chunked",
        Bad("stream", "POST", "/streams/{stream}", big_append, statuses=(413,), chunked=True),
    )
    for depth in (200, 950):  # 950: parsed, but too deep to encode again (once a 500)
        nested = raw(
            '{"expected_version": "any", "events": [{"type": "E2eThing", "data": {"n": '
            + "[" * depth
            + "]" * depth
            + "}}]}"
        )
        yield (
            f"append with data nested {depth} levels deep",
            Bad("stream", "POST", "/streams/{stream}", nested, statuses=(400,)),
        )
    yield (
        "append with NaN in the data",
        Bad(
            "stream",
            "POST",
            "/streams/{stream}",
            raw(
                '{"expected_version": "any", "events": [{"type": "E2eThing", "data": {"n": NaN}}]}'
            ),
            statuses=(400,),
        ),
    )
    yield (
        "append a 2 MiB body",
        Bad(
            "stream",
            "POST",
            "/streams/{stream}",
            raw(
                '{"expected_version": "any", "events": [{"type": "E2eThing", "data": {"s": "'
                + "x" * 2 * MIB
                + '"}}]}'
            ),
            statuses=(413,),
        ),
    )
    for name, body in [
        ("no appends", {"appends": []}),
        ("appends missing", {}),
        ("a bad stream name", {"appends": [{"stream": "-bad", **ok_append}]}),
        ("one stream twice", {"appends": [{"stream": "{stream}", **ok_append}] * 2}),
    ]:
        yield (
            f"batch with {name}",
            Bad("stream", "POST", "/batches", body, statuses=(400, 409, 422)),
        )
    for query in [
        "after=-1",
        "after=abc",
        "after=1.5",
        "after=1e3",
        "limit=0",
        "limit=10001",
        "limit=x",
        "after=99999999999999999999",
    ]:
        yield f"read the log with {query}", Bad("stream", "GET", f"/events?{query}")
    for query in ["from_version=0", "from_version=x", "limit=0", "limit=-1"]:
        yield f"read a stream with {query}", Bad("stream", "GET", f"/streams/{{stream}}?{query}")
    for query in ["after=-1", "after=x", "heartbeat=0"]:
        yield f"subscribe with {query}", Bad("stream", "GET", f"/events/subscribe?{query}")
    yield (
        "subscribe with a bad Last-Event-ID",
        Bad("stream", "GET", "/events/subscribe", headers={"Last-Event-ID": "abc"}),
    )

    for query in [
        "at=yesterday",
        "at=2026-13-01T00:00:00Z",
        "at=0001-01-01T00:00:00%2B01:00",
        "at=9999-12-31T23:59:59-01:00",
        "at_position=-1",
        "at_position=x",
        "at_position=1.5",
    ]:
        yield (
            f"balance with {query}",
            Bad("accounting", "GET", f"/accounts/{{account}}/balance?{query}"),
        )
    for query in ["limit=0", "limit=-1", "limit=x", "before=garbage"]:
        yield (
            f"history with {query}",
            Bad("accounting", "GET", f"/accounts/{{account}}/transactions?{query}"),
        )
    for query in ["limit=0", "limit=x"]:
        yield f"list accounts with {query}", Bad("accounting", "GET", f"/accounts?{query}")
    for value in ["abc", "-1", "1.5"]:
        yield (
            f"read with X-Min-Position {value}",
            Bad("accounting", "GET", "/accounts/{account}", headers={"X-Min-Position": value}),
        )
        yield (
            f"statistics with X-Min-Position {value}",
            Bad("statistics", "GET", "/stats", headers={"X-Min-Position": value}),
        )
    yield (
        "read an account id with a dash",
        Bad("accounting", "GET", "/accounts/-bad", statuses=(404, 422)),
    )
    for query in ["from=someday", "to=2026-02-30", "from=2026-01-01&to=x"]:
        yield f"daily statistics with {query}", Bad("statistics", "GET", f"/stats/daily?{query}")


CASES = list(cases())


@pytest.fixture(scope="module")
def accounts(system: System) -> System:
    with httpx.Client(base_url=system.transaction.url, timeout=15.0) as http:
        for account in (ACCOUNT, OTHER):
            response = http.post("/accounts", json={"account_id": account, "currency": "EUR"})
            assert response.status_code == 201, response.text
            response = http.post(f"/accounts/{account}/deposits", json={"amount": 1_000})
            assert response.status_code == 201, response.text
    return system


async def chunks(content: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def fill(text: str) -> str:
    return text.replace("{account}", ACCOUNT).replace("{other}", OTHER).replace("{stream}", STREAM)


@pytest.mark.parametrize("bad", [case for _, case in CASES], ids=[name for name, _ in CASES])
async def test_bad_input_is_refused_with_a_problem_document_and_changes_nothing(
    accounts: System, client: httpx.AsyncClient, bad: Bad
) -> None:
    system = accounts
    head = system.head_position()
    base = getattr(system, bad.service).url
    content = bad.content()
    if content is not None and bad.body is not None and not isinstance(bad.body, bytes):
        content = fill(content.decode()).encode()
    headers = {"Content-Type": "application/json"} if content is not None else {}
    headers.update(bad.headers)
    body: bytes | AsyncIterator[bytes] | None = content
    if content is not None and bad.chunked:
        body = chunks(content)
    response = await client.request(
        bad.method, f"{base}{fill(bad.path)}", content=body, headers=headers
    )
    assert_problem(response, *bad.statuses)
    assert system.head_position() == head


async def test_a_balance_is_never_pushed_past_the_signed_64_bit_range(
    system: System, client: httpx.AsyncClient
) -> None:
    tx, account, donor = system.transaction.url, new_id("full"), new_id("donor")
    for opened in (account, donor):
        response = await client.post(
            f"{tx}/accounts", json={"account_id": opened, "currency": "EUR"}
        )
        assert response.status_code == 201
    assert (
        await client.post(f"{tx}/accounts/{donor}/deposits", json={"amount": 5})
    ).status_code == 201
    biggest = 2**53 - 1
    # 1024 deposits of 2^53-1 are 2^63-1024: 1023 more cents reach 2^63-1 exactly.
    for _ in range(1024):
        response = await client.post(f"{tx}/accounts/{account}/deposits", json={"amount": biggest})
        assert response.status_code == 201, response.text
    response = await client.post(f"{tx}/accounts/{account}/deposits", json={"amount": 1023})
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == 2**63 - 1
    position = response.json()["position"]

    head = system.head_position()
    for path, body in [
        (f"/accounts/{account}/deposits", {"amount": 1}),
        (f"/accounts/{account}/deposits", {"amount": biggest}),
        ("/transfers", {"from_account": donor, "to_account": account, "amount": 1}),
    ]:
        refused = await client.post(f"{tx}{path}", json=body)
        assert_problem(refused, 409, 422)
        assert problem_type(refused) == "balance-out-of-range"
    assert system.head_position() == head

    read = await client.get(
        f"{system.accounting.url}/accounts/{account}", headers=min_position(position)
    )
    assert read.status_code == 200, read.text
    assert read.json()["balance"] == 2**63 - 1
