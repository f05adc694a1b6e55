"""`POST /transactions/{id}/reverse` against a real stream service (the harness of
test_transaction_api): what is written, what is refused (and that a refusal writes nothing),
idempotency, and two reversals of one transaction racing through two instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import pytest_asyncio

from tests.integration.test_transaction_api import Ledger, assert_problem, running_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


async def post(
    http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return await http.post(path, json=body if body is not None else {}, headers=headers)


async def reverse(
    ledger: Ledger, transaction_id: str, reason: str | None = None, **headers: str
) -> httpx.Response:
    body = {} if reason is None else {"reference": reason}
    return await post(ledger.http, f"/transactions/{transaction_id}/reverse", body, **headers)


async def types_of(ledger: Ledger, account_id: str) -> list[str]:
    return [e.type for e in await ledger.events(account_id)]


async def test_a_deposit_is_reversed_by_a_new_event_and_the_original_stays(ledger: Ledger) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    response = await reverse(ledger, deposit["transaction_id"], "sent twice")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["reverses"] == deposit["transaction_id"]
    assert body["transaction_id"] != deposit["transaction_id"]
    assert body["reference"] == "sent twice"
    assert body["accounts"] == [{"account_id": account, "amount": -500, "balance": 0}]
    assert body["position"] == await ledger.head()
    assert await types_of(ledger, account) == [
        "AccountOpened",
        "MoneyDeposited",
        "TransactionReversed",
    ]
    (marker,) = await ledger.store.read_stream(f"reversal-{deposit['transaction_id']}")
    assert marker.type == "ReversalRecorded"
    assert marker.data["transaction_id"] == body["transaction_id"]


async def test_a_withdrawal_is_reversed_by_giving_the_money_back(ledger: Ledger) -> None:
    account = await ledger.funded(500)
    response = await post(ledger.http, f"/accounts/{account}/withdrawals", {"amount": 200})
    withdrawal = response.json()
    reversed_ = await reverse(ledger, withdrawal["transaction_id"])
    assert reversed_.status_code == 201, reversed_.text
    assert reversed_.json()["accounts"] == [{"account_id": account, "amount": 200, "balance": 500}]


async def test_a_transfer_is_reversed_on_both_accounts_in_one_append(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    sent = await post(
        ledger.http, "/transfers", {"from_account": source, "to_account": target, "amount": 300}
    )
    transfer = sent.json()
    response = await reverse(ledger, transfer["transaction_id"], "wrong payee")
    assert response.status_code == 201, response.text
    assert response.json()["accounts"] == [
        {"account_id": source, "amount": 300, "balance": 1000},
        {"account_id": target, "amount": -300, "balance": 0},
    ]
    (out,) = [e for e in await ledger.events(source) if e.type == "TransactionReversed"]
    (into,) = [e for e in await ledger.events(target) if e.type == "TransactionReversed"]
    assert out.batch_end == into.batch_end  # one atomic append
    assert out.data["reverses"] == into.data["reverses"] == transfer["transaction_id"]


async def test_a_second_reversal_is_refused_naming_the_first_and_writes_nothing(
    ledger: Ledger,
) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    first = (await reverse(ledger, deposit["transaction_id"])).json()
    head = await ledger.head()
    problem = assert_problem(
        await reverse(ledger, deposit["transaction_id"]), 409, "already-reversed"
    )
    assert problem["reversed_by"] == first["transaction_id"]
    assert problem["transaction_id"] == deposit["transaction_id"]
    assert await ledger.head() == head


async def test_a_deposit_already_spent_cannot_be_reversed(ledger: Ledger) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    await post(ledger.http, f"/accounts/{account}/withdrawals", {"amount": 400})
    head = await ledger.head()
    problem = assert_problem(
        await reverse(ledger, deposit["transaction_id"]), 409, "insufficient-funds"
    )
    assert problem["account_id"] == account
    assert await ledger.head() == head


async def test_an_account_closed_since_refuses_the_reversal(ledger: Ledger) -> None:
    account = await ledger.funded(500)
    withdrawal = (
        await post(ledger.http, f"/accounts/{account}/withdrawals", {"amount": 500})
    ).json()
    assert (await post(ledger.http, f"/accounts/{account}/close")).status_code == 201
    head = await ledger.head()
    assert_problem(await reverse(ledger, withdrawal["transaction_id"]), 409, "account-closed")
    assert await ledger.head() == head


async def test_an_unknown_transaction_is_not_found(ledger: Ledger) -> None:
    problem = assert_problem(await reverse(ledger, str(uuid4())), 404, "transaction-not-found")
    assert problem["detail"]


async def test_a_reversal_is_not_itself_reversible(ledger: Ledger) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    reversal = (await reverse(ledger, deposit["transaction_id"])).json()
    assert_problem(await reverse(ledger, reversal["transaction_id"]), 409, "not-reversible")


@pytest.mark.parametrize("bad", ["not-a-uuid", "6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB"])
async def test_a_malformed_transaction_id_is_refused(ledger: Ledger, bad: str) -> None:
    assert_problem(await reverse(ledger, bad), 422, "invalid-transaction-id")


@pytest.mark.parametrize(
    "body",
    [{"reference": "a\u202eb"}, {"reference": 5}, {"reason": "x"}, {"reference": "x" * 257}],
)
async def test_a_bad_body_is_refused_and_writes_nothing(
    ledger: Ledger, body: dict[str, Any]
) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    head = await ledger.head()
    response = await post(ledger.http, f"/transactions/{deposit['transaction_id']}/reverse", body)
    assert response.status_code == 422, response.text
    assert await ledger.head() == head


async def test_no_body_at_all_is_a_reversal_without_a_reason(ledger: Ledger) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    response = await ledger.http.post(
        f"/transactions/{deposit['transaction_id']}/reverse",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["reference"] is None


async def test_a_retry_with_the_same_key_answers_the_first_response_and_writes_nothing(
    ledger: Ledger,
) -> None:
    account = await ledger.open()
    deposit = await ledger.deposit(account, 500)
    key = {"Idempotency-Key": f"rev-{uuid4()}"}
    first = await reverse(ledger, deposit["transaction_id"], "dup", **key)
    assert first.status_code == 201, first.text
    await ledger.deposit(account, 70)  # the account changes meanwhile
    head = await ledger.head()
    again = await reverse(ledger, deposit["transaction_id"], "dup", **key)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await ledger.head() == head
    other = await reverse(ledger, deposit["transaction_id"], "another reason", **key)
    assert_problem(other, 422, "idempotency-key-reused")


async def test_two_reversals_racing_through_two_instances_write_exactly_one(
    ledger: Ledger,
) -> None:
    second = await ledger.another_instance()
    for _ in range(5):
        source, target = await ledger.funded(1000), await ledger.open()
        sent = await post(
            ledger.http, "/transfers", {"from_account": source, "to_account": target, "amount": 1}
        )
        path = f"/transactions/{sent.json()['transaction_id']}/reverse"
        answers = await asyncio.gather(
            *(post(client, path) for client in (ledger.http, second, ledger.http, second))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201, 409, 409, 409], [a.text for a in answers]
        winner = next(a.json() for a in answers if a.status_code == 201)
        for answer in answers:
            if answer.status_code == 409:
                assert answer.json()["type"] == "already-reversed"
                assert answer.json()["reversed_by"] == winner["transaction_id"]
        assert (await types_of(ledger, source)).count("TransactionReversed") == 1
        assert (await types_of(ledger, target)).count("TransactionReversed") == 1


# -- two-phase transfers ---------------------------------------------------------------------


async def hold(ledger: Ledger, source: str, target: str, amount: int) -> str:
    body = {"from_account": source, "to_account": target, "amount": amount, "pending": True}
    response = await post(ledger.http, "/transfers", body)
    assert response.status_code == 201, response.text
    return str(response.json()["transaction_id"])


async def test_a_pending_transfer_is_not_reversible_while_pending(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    held = await hold(ledger, source, target, 400)
    head = await ledger.head()
    assert_problem(await reverse(ledger, held), 409, "transfer-pending")
    assert await ledger.head() == head


async def test_a_posted_transfer_reverses_the_amount_posted(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    held = await hold(ledger, source, target, 400)
    posted = await post(ledger.http, f"/transfers/{held}/post", {"amount": 150})
    assert posted.status_code == 201, posted.text
    response = await reverse(ledger, held, "posted by mistake")
    assert response.status_code == 201, response.text
    assert response.json()["accounts"] == [
        {"account_id": source, "amount": 150, "balance": 1000},
        {"account_id": target, "amount": -150, "balance": 0},
    ]


async def test_a_voided_transfer_moved_nothing_to_reverse(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    held = await hold(ledger, source, target, 400)
    assert (await post(ledger.http, f"/transfers/{held}/void")).status_code == 201
    assert_problem(await reverse(ledger, held), 409, "not-reversible")


async def test_money_held_for_a_pending_transfer_is_not_available_to_a_reversal(
    ledger: Ledger,
) -> None:
    account, other = await ledger.open(), await ledger.open()
    deposit = await ledger.deposit(account, 500)
    await hold(ledger, account, other, 300)  # 200 of the 500 left available
    assert_problem(await reverse(ledger, deposit["transaction_id"]), 409, "insufficient-funds")
