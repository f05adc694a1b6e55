"""A bad request never changes state: a 4xx problem document, and the log exactly as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_transaction_api import Ledger, assert_problem, running_ledger

MAX_AMOUNT = 2**53 - 1


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    """One set of services for the module: a refused request changes nothing, so the tests
    cannot disturb each other."""
    async with running_ledger() as running:
        await running.funded(1000, account_id="acc-a")
        await running.funded(1000, account_id="acc-b")
        yield running


# (path, raw body or JSON, expected status, expected type, offending field or None)
BAD_MONEY_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    ("float", {"amount": 10.0}, 422, "validation-error", "amount"),
    ("float with cents", {"amount": 10.5}, 422, "validation-error", "amount"),
    ("string", {"amount": "10"}, 422, "validation-error", "amount"),
    ("bool", {"amount": True}, 422, "validation-error", "amount"),
    ("exponent", b'{"amount": 1e3}', 422, "validation-error", "amount"),
    ("negative", {"amount": -5}, 422, "validation-error", "amount"),
    ("zero", {"amount": 0}, 422, "validation-error", "amount"),
    ("2^53", {"amount": 2**53}, 422, "validation-error", "amount"),
    ("huge", {"amount": 10**30}, 422, "validation-error", "amount"),
    ("null", {"amount": None}, 422, "validation-error", "amount"),
    ("missing", {}, 422, "validation-error", "amount"),
    ("unknown field", {"amount": 1, "currency": "EUR"}, 422, "validation-error", "currency"),
    ("reference not text", {"amount": 1, "reference": 5}, 422, "validation-error", "reference"),
    ("reference too long", {"amount": 1, "reference": "x" * 257}, 422, "validation-error", None),
    ("reference control", {"amount": 1, "reference": "a\x00b"}, 422, "invalid-reference", None),
    ("array", [1], 422, "validation-error", None),
    ("number", b"5", 422, "validation-error", None),
    ("duplicate keys", b'{"amount": 1, "amount": 2}', 400, "malformed-json", None),
    ("malformed", b'{"amount": ', 400, "malformed-json", None),
    ("NaN", b'{"amount": NaN}', 400, "malformed-json", None),
    ("Infinity", b'{"amount": Infinity}', 400, "malformed-json", None),
    ("not UTF-8", b'{"amount": 1, "reference": "\xff"}', 400, "malformed-json", None),
    ("empty", b"", 400, "malformed-json", None),
    (
        "2 MiB",
        b'{"amount": 1, "reference": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        413,
        "body-too-large",
        None,
    ),
]


async def _post(ledger: Ledger, path: str, body: Any, **kwargs: Any) -> Any:
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return await ledger.http.post(path, content=body, headers=headers, **kwargs)
    return await ledger.http.post(path, json=body, **kwargs)


@pytest.mark.parametrize("kind", ["deposits", "withdrawals"])
@pytest.mark.parametrize(
    ("case", "body", "status", "type_", "field"),
    BAD_MONEY_BODIES,
    ids=[c[0] for c in BAD_MONEY_BODIES],
)
async def test_a_bad_money_body_is_refused_and_writes_nothing(
    ledger: Ledger, kind: str, case: str, body: Any, status: int, type_: str, field: str | None
) -> None:
    head = await ledger.head()
    response = await _post(ledger, f"/accounts/acc-a/{kind}", body)
    problem = assert_problem(response, status, type_)
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    assert await ledger.head() == head


BAD_TRANSFERS: list[tuple[str, dict[str, Any], int, str]] = [
    ("float", {"amount": 1.0}, 422, "validation-error"),
    ("string", {"amount": "1"}, 422, "validation-error"),
    ("bool", {"amount": True}, 422, "validation-error"),
    ("zero", {"amount": 0}, 422, "validation-error"),
    ("2^53", {"amount": 2**53}, 422, "validation-error"),
    ("same account", {"to_account": "acc-a"}, 422, "same-account-transfer"),
    ("bad target", {"to_account": "-b"}, 422, "invalid-account-id"),
    ("bad source", {"from_account": "a b"}, 422, "invalid-account-id"),
    ("target not text", {"to_account": 7}, 422, "validation-error"),
    ("missing target", {"to_account": None}, 422, "validation-error"),
    ("unknown field", {"currency": "EUR"}, 422, "validation-error"),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "type_"), BAD_TRANSFERS, ids=[c[0] for c in BAD_TRANSFERS]
)
async def test_a_bad_transfer_is_refused_and_writes_nothing(
    ledger: Ledger, case: str, change: dict[str, Any], status: int, type_: str
) -> None:
    body = {"from_account": "acc-a", "to_account": "acc-b", "amount": 1, **change}
    body = {k: v for k, v in body.items() if v is not None}
    head = await ledger.head()
    assert_problem(await ledger.http.post("/transfers", json=body), status, type_)
    assert await ledger.head() == head


BAD_OPENS: list[tuple[str, dict[str, Any], int, str]] = [
    ("lower-case currency", {"currency": "usd"}, 422, "invalid-currency"),
    ("long currency", {"currency": "XXX1"}, 422, "invalid-currency"),
    ("unknown currency", {"currency": "ABC"}, 422, "invalid-currency"),
    ("currency not text", {"currency": 978}, 422, "validation-error"),
    ("no currency", {}, 422, "validation-error"),
    ("negative overdraft", {"currency": "EUR", "overdraft_limit": -1}, 422, "validation-error"),
    ("float overdraft", {"currency": "EUR", "overdraft_limit": 1.5}, 422, "validation-error"),
    ("huge overdraft", {"currency": "EUR", "overdraft_limit": 2**53}, 422, "validation-error"),
    ("id with a dash first", {"currency": "EUR", "account_id": "-acc"}, 422, "invalid-account-id"),
    ("id too long", {"currency": "EUR", "account_id": "a" * 65}, 422, "invalid-account-id"),
    ("id with a space", {"currency": "EUR", "account_id": "a b"}, 422, "invalid-account-id"),
    ("id with a newline", {"currency": "EUR", "account_id": "ab\n"}, 422, "invalid-account-id"),
    ("empty id", {"currency": "EUR", "account_id": ""}, 422, "invalid-account-id"),
    ("owner not text", {"currency": "EUR", "owner": 5}, 422, "validation-error"),
    ("owner control", {"currency": "EUR", "owner": "a\x1bb"}, 422, "invalid-owner"),
    ("unknown field", {"currency": "EUR", "balance": 100}, 422, "validation-error"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "type_"), BAD_OPENS, ids=[c[0] for c in BAD_OPENS]
)
async def test_a_bad_open_is_refused_and_writes_nothing(
    ledger: Ledger, case: str, body: dict[str, Any], status: int, type_: str
) -> None:
    head = await ledger.head()
    assert_problem(await ledger.http.post("/accounts", json=body), status, type_)
    assert await ledger.head() == head


@pytest.mark.parametrize(
    "account_id", ["-acc", "a" * 65, "a%20b", "a%0A", "%C3%A9t%C3%A9", "acc!", ".hidden"]
)
@pytest.mark.parametrize("action", ["deposits", "withdrawals", "close"])
async def test_a_bad_account_id_in_the_path_is_refused(
    ledger: Ledger, account_id: str, action: str
) -> None:
    head = await ledger.head()
    body = {} if action == "close" else {"amount": 1}
    response = await ledger.http.post(f"/accounts/{account_id}/{action}", json=body)
    assert_problem(response, 422, "invalid-account-id")
    assert await ledger.head() == head


@pytest.mark.parametrize(
    "key",
    [b"", b"with space", b"tab\there", b"x" * 256, "\u00e9t\u00e9".encode(), b"del\x7f"],
    ids=["empty", "space", "tab", "256 chars", "non-ASCII", "DEL"],
)
async def test_a_bad_idempotency_key_is_refused(ledger: Ledger, key: bytes) -> None:
    head = await ledger.head()
    response = await ledger.http.post(
        "/accounts/acc-a/deposits", json={"amount": 1}, headers=[(b"Idempotency-Key", key)]
    )
    assert_problem(response, 400, "invalid-idempotency-key")
    assert await ledger.head() == head


async def test_two_idempotency_keys_are_refused(ledger: Ledger) -> None:
    # Two header lines mean the list "k1, k2" (RFC 9110), which is no key: not the first one.
    head = await ledger.head()
    response = await ledger.http.post(
        "/accounts/acc-a/deposits",
        json={"amount": 1},
        headers=[(b"Idempotency-Key", b"k1"), (b"Idempotency-Key", b"k2")],
    )
    assert_problem(response, 400, "invalid-idempotency-key")
    assert await ledger.head() == head


async def test_a_255_character_idempotency_key_is_fine(ledger: Ledger) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3
    response = await ledger.http.post(
        "/accounts/acc-a/deposits", json={"amount": 1}, headers={"Idempotency-Key": key[:255]}
    )
    assert response.status_code == 201, response.text


async def test_a_body_that_is_not_json_is_refused(ledger: Ledger) -> None:
    head = await ledger.head()
    response = await ledger.http.post(
        "/accounts/acc-a/deposits", content=b"amount=1", headers={"Content-Type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported-media-type")
    assert await ledger.head() == head


@pytest.mark.parametrize(
    "body",
    [b'{"force": true}', b"[]", b"{", b'{"a":1,"a":1}'],
    ids=["field", "array", "malformed", "duplicate"],
)
async def test_closing_refuses_any_body_but_an_empty_object(ledger: Ledger, body: bytes) -> None:
    account_id = await ledger.open()
    head = await ledger.head()
    response = await ledger.http.post(
        f"/accounts/{account_id}/close", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await ledger.head() == head


async def test_closing_with_a_body_that_is_not_an_object_names_the_body(ledger: Ledger) -> None:
    account_id = await ledger.open()
    response = await ledger.http.post(
        f"/accounts/{account_id}/close", content=b"[]", headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422, "validation-error")
    assert [e["field"] for e in problem["errors"]] == ["body"]


async def test_the_largest_amount_is_accepted(ledger: Ledger) -> None:
    account_id = await ledger.open()
    response = await ledger.http.post(
        f"/accounts/{account_id}/deposits", json={"amount": MAX_AMOUNT}
    )
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == MAX_AMOUNT
