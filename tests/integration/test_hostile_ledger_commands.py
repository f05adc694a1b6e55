"""Hostile input at the transaction service's new doors (two-phase, reversals, erasure),
in-process on a memory store: each refusal is a 4xx problem document with its stable type
and the log is exactly as it was. The e2e suite (tests/e2e/test_bad_input_ledger_features.py)
sends the broad matrix over real processes; here are the findings that needed a fix, and the
races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from tests.integration.test_transaction_api import Ledger, assert_problem, running_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")

JSON = {"Content-Type": "application/json"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


async def hold(ledger: Ledger, amount: int = 100, **extra: Any) -> tuple[str, str, str]:
    source = await ledger.funded(1_000)
    target = await ledger.open()
    body = {"from_account": source, "to_account": target, "amount": amount, "pending": True}
    answer = await ledger.http.post("/transfers", json={**body, **extra})
    assert answer.status_code == 201, answer.text
    return source, target, str(answer.json()["transaction_id"])


async def test_a_post_with_a_null_amount_is_refused_not_read_as_the_whole_hold(
    ledger: Ledger,
) -> None:
    # Found: `{"amount": null}` posted the whole hold (null read as "absent").
    source, _, transfer = await hold(ledger)
    head = await ledger.head()
    answer = await ledger.http.post(f"/transfers/{transfer}/post", json={"amount": None})
    problem = assert_problem(answer, 422, "validation-error")
    assert problem["errors"][0]["field"] == "amount"
    assert await ledger.head() == head
    state = await ledger.http.get(f"/transfers/{transfer}")
    assert state.json()["status"] == "pending"
    # Leaving it out still posts the whole hold.
    posted = await ledger.http.post(f"/transfers/{transfer}/post", json={})
    assert posted.status_code == 201, posted.text
    assert (posted.json()["amount"], posted.json()["from_balance"]) == (100, 900)
    assert source


async def test_a_hold_with_a_null_timeout_is_refused(ledger: Ledger) -> None:
    # Found: `{"timeout_seconds": null}` placed a hold that never expires.
    source = await ledger.funded(1_000)
    target = await ledger.open()
    head = await ledger.head()
    body = {"from_account": source, "to_account": target, "amount": 5, "pending": True}
    answer = await ledger.http.post("/transfers", json={**body, "timeout_seconds": None})
    problem = assert_problem(answer, 422, "validation-error")
    assert problem["errors"][0]["field"] == "timeout_seconds"
    assert await ledger.head() == head


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(0, 422), (1, 201), (2_592_000, 201), (2_592_001, 422), (2**63, 422), ("60", 422)],
)
async def test_timeout_seconds_at_and_beyond_its_bounds(
    ledger: Ledger, seconds: object, status: int
) -> None:
    source = await ledger.funded(1_000)
    target = await ledger.open()
    head = await ledger.head()
    body = {"from_account": source, "to_account": target, "amount": 5, "pending": True}
    answer = await ledger.http.post("/transfers", json={**body, "timeout_seconds": seconds})
    if status == 201:
        assert answer.status_code == 201, answer.text
        assert answer.json()["expires_at"]
    else:
        assert_problem(answer, 422, "validation-error")
        assert await ledger.head() == head


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_"),
    [
        (b'{"fields": ["reference"]}', JSON, 422, "validation-error"),
        (b'{"owner": true}', JSON, 422, "validation-error"),
        (b"[]", JSON, 422, "validation-error"),
        (b'{"a": 1, "a": 2}', JSON, 400, "malformed-json"),
        (b"{", JSON, 400, "malformed-json"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
        (b'{"x": "' + b"x" * (2 * 1024 * 1024) + b'"}', JSON, 413, "body-too-large"),
    ],
    ids=["a field", "owner", "an array", "duplicate keys", "bad JSON", "text/plain", "2 MiB"],
)
async def test_a_forget_with_a_body_other_than_nothing_or_empty_erases_nothing(
    ledger: Ledger, body: bytes, headers: dict[str, str], status: int, type_: str
) -> None:
    # Found: the body of a forget was never read: `{"fields": ["reference"]}` (a caller
    # believing it erases only references) erased everything, and 2 MiB were accepted.
    account = await ledger.open(owner="Ada Lovelace")
    head = await ledger.head()
    answer = await ledger.http.post(f"/accounts/{account}/forget", content=body, headers=headers)
    assert_problem(answer, status, type_)
    assert await ledger.head() == head
    assert (await ledger.events(account))[0].data["owner"] == "Ada Lovelace"


@pytest.mark.parametrize("body", [None, b"", b"{}", b" {} "])
async def test_a_forget_with_no_body_or_an_empty_object_erases(
    ledger: Ledger, body: bytes | None
) -> None:
    account = await ledger.open(owner="Ada Lovelace")
    answer = await ledger.http.post(f"/accounts/{account}/forget", content=body, headers=JSON)
    assert answer.status_code == 201, answer.text
    assert (await ledger.events(account))[0].data["owner"] is None


async def test_a_forget_of_an_unknown_account_writes_nothing(ledger: Ledger) -> None:
    head = await ledger.head()
    answer = await ledger.http.post(f"/accounts/nobody-{uuid4().hex[:8]}/forget", headers=JSON)
    assert_problem(answer, 404, "account-not-found")
    assert await ledger.head() == head


async def test_two_reversals_racing_on_one_instance_write_one_and_the_other_is_told_why(
    ledger: Ledger,
) -> None:
    source = await ledger.funded(1_000)
    target = await ledger.open()
    moved = await ledger.http.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": 300}
    )
    original = moved.json()["transaction_id"]
    answers = await asyncio.gather(
        *(ledger.http.post(f"/transactions/{original}/reverse", json={}) for _ in range(5))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 409, 409, 409, 409], [a.text for a in answers]
    won = next(a for a in answers if a.status_code == 201).json()
    winner = won["transaction_id"]
    balances = {a["account_id"]: a["balance"] for a in won["accounts"]}
    assert balances == {source: 1_000, target: 0}
    for answer in answers:
        if answer.status_code == 409:
            assert assert_problem(answer, 409, "already-reversed")["reversed_by"] == winner
    reversals = [e for e in await ledger.events(source) if e.type == "TransactionReversed"]
    assert len(reversals) == 1


async def test_post_void_and_reverse_of_ids_that_are_not_what_they_need(ledger: Ledger) -> None:
    source = await ledger.funded(1_000)
    target = await ledger.open()
    deposit = (await ledger.deposit(source, 10))["transaction_id"]
    _, _, voided = await hold(ledger)
    answer = await ledger.http.post(f"/transfers/{voided}/void", json={})
    assert answer.status_code == 201, answer.text
    reversal = await ledger.http.post(f"/transactions/{deposit}/reverse", json={})
    assert reversal.status_code == 201, reversal.text
    reversal_id = reversal.json()["transaction_id"]
    _, _, pending = await hold(ledger)
    head = await ledger.head()
    unknown = str(uuid4())
    for path, status, type_ in [
        (f"/transfers/{deposit}/post", 404, "transfer-not-found"),
        (f"/transfers/{deposit}/void", 404, "transfer-not-found"),
        (f"/transfers/{reversal_id}/post", 404, "transfer-not-found"),
        (f"/transfers/{unknown}/void", 404, "transfer-not-found"),
        (f"/transfers/{voided}/post", 409, "transfer-not-pending"),
        (f"/transfers/{voided}/void", 409, "transfer-not-pending"),
        (f"/transactions/{voided}/reverse", 409, "not-reversible"),
        (f"/transactions/{reversal_id}/reverse", 409, "not-reversible"),
        (f"/transactions/{deposit}/reverse", 409, "already-reversed"),
        (f"/transactions/{pending}/reverse", 409, "transfer-pending"),
        (f"/transactions/{unknown}/reverse", 404, "transaction-not-found"),
        (f"/transfers/{pending}/post", 422, "amount-exceeds-hold"),
    ]:
        body = {"amount": 101} if path.endswith(f"{pending}/post") else {}
        answer = await ledger.http.post(path, json=body)
        assert_problem(answer, status, type_)
    assert await ledger.head() == head
    assert target


@pytest.mark.parametrize("reversed_sides", [False, True])
async def test_an_idempotency_key_reused_for_another_hold_is_refused_not_a_502(
    ledger: Ledger, reversed_sides: bool
) -> None:
    # Found: the second hold (same key, so the same transaction id) was decided, then refused
    # by the guard ('hold-twice'), and answered 502 stream-error.
    source = await ledger.funded(1_000)
    target = await ledger.funded(1_000)
    key = {"Idempotency-Key": f"hold-{uuid4().hex}"}
    body = {"from_account": source, "to_account": target, "amount": 10, "pending": True}
    first = await ledger.http.post("/transfers", json=body, headers=key)
    assert first.status_code == 201, first.text
    head = await ledger.head()
    other = {**body, "amount": 11}
    if reversed_sides:
        other = {**body, "from_account": target, "to_account": source}
    answer = await ledger.http.post("/transfers", json=other, headers=key)
    assert_problem(answer, 422, "idempotency-key-reused")
    assert await ledger.head() == head
    again = await ledger.http.post("/transfers", json=body, headers=key)
    assert again.status_code == 200 and again.json() == first.json(), again.text


@pytest.mark.parametrize("key", ["", "a b", "k" * 256, "tab\there"])
async def test_a_forget_with_a_malformed_idempotency_key_erases_nothing(
    ledger: Ledger, key: str
) -> None:
    # Found: the forget never looked at the header, so a malformed key (refused with 400 by
    # every other command) was ignored and the account erased.
    account = await ledger.open(owner="Ada Lovelace")
    head = await ledger.head()
    answer = await ledger.http.post(
        f"/accounts/{account}/forget", headers={**JSON, "Idempotency-Key": key}
    )
    assert_problem(answer, 400, "invalid-idempotency-key")
    assert await ledger.head() == head
    good = await ledger.http.post(
        f"/accounts/{account}/forget", headers={**JSON, "Idempotency-Key": "forget-1"}
    )
    assert good.status_code == 201, good.text
