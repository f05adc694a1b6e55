"""Idempotency-Key: a retry answers the first response from the log and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import uuid4

import httpx
import pytest
import pytest_asyncio

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import AppendResult, StreamAppend
from eventledger.eventstore.store import check_expected_version
from eventledger.services.transaction.idempotency import derived_id
from tests.integration.test_transaction_api import (
    IDEMPOTENCY_SECRET,
    Ledger,
    assert_problem,
    running_ledger,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


def new_key() -> str:
    return f"key-{uuid4()}"


async def keyed(
    http: httpx.AsyncClient, path: str, body: dict[str, Any] | None, key: str
) -> httpx.Response:
    # An empty body (None) is sent as application/json too: a close may have no body.
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    return await http.post(path, json=body, headers=headers)


def assert_replay(first: httpx.Response, again: httpx.Response) -> None:
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json() == first.json()


async def test_a_retried_deposit_answers_the_first_response_even_after_later_changes(
    ledger: Ledger,
) -> None:
    account_id = await ledger.funded(100)
    key = new_key()
    path = f"/accounts/{account_id}/deposits"
    first = await keyed(ledger.http, path, {"amount": 50, "reference": "r1"}, key)
    assert first.json()["balance"] == 150
    await ledger.deposit(account_id, 1000)  # the account changes after the first response
    head = await ledger.head()
    again = await keyed(ledger.http, path, {"amount": 50, "reference": "r1"}, key)
    assert_replay(first, again)
    assert again.json()["balance"] == 150  # as right after the first request, not 1150
    assert await ledger.head() == head
    deposits = [e for e in await ledger.events(account_id) if e.type == "MoneyDeposited"]
    assert len(deposits) == 3


async def test_the_events_of_a_keyed_command_carry_the_key_and_ids_derived_from_it(
    ledger: Ledger,
) -> None:
    account_id = await ledger.funded(100)
    key = new_key()
    response = await keyed(ledger.http, f"/accounts/{account_id}/withdrawals", {"amount": 30}, key)
    event = (await ledger.events(account_id))[-1]
    assert event.id == derived_id(IDEMPOTENCY_SECRET, key, "0")
    assert event.data["transaction_id"] == response.json()["transaction_id"]
    assert event.metadata["idempotency_key"] == key
    assert len(event.metadata["request_fingerprint"]) == 64
    assert event.metadata["correlation_id"] and event.metadata["causation_id"]


async def test_a_retried_withdrawal_and_close_answer_their_first_responses(ledger: Ledger) -> None:
    account_id = await ledger.funded(100)
    withdraw_key, close_key = new_key(), new_key()
    path = f"/accounts/{account_id}/withdrawals"
    first = await keyed(ledger.http, path, {"amount": 100}, withdraw_key)
    closed = await keyed(ledger.http, f"/accounts/{account_id}/close", None, close_key)
    assert_replay(first, await keyed(ledger.http, path, {"amount": 100}, withdraw_key))
    assert_replay(closed, await keyed(ledger.http, f"/accounts/{account_id}/close", {}, close_key))


async def test_a_retried_open_without_an_id_answers_the_same_account(ledger: Ledger) -> None:
    key = new_key()
    first = await keyed(ledger.http, "/accounts", {"currency": "GBP"}, key)
    account_id = first.json()["account_id"]
    await ledger.deposit(account_id, 10)
    again = await keyed(ledger.http, "/accounts", {"currency": "GBP", "owner": None}, key)
    assert_replay(first, again)
    assert len(await ledger.events(account_id)) == 2


async def test_a_retried_transfer_answers_the_balances_right_after_it(ledger: Ledger) -> None:
    source = await ledger.funded(1000)
    target = await ledger.open()
    key = new_key()
    body = {"from_account": source, "to_account": target, "amount": 300}
    first = await keyed(ledger.http, "/transfers", body, key)
    assert (first.json()["from_balance"], first.json()["to_balance"]) == (700, 300)
    await ledger.deposit(source, 5)
    await ledger.deposit(target, 7)
    head = await ledger.head()
    again = await keyed(ledger.http, "/transfers", dict(reversed(body.items())), key)
    assert_replay(first, again)
    assert await ledger.head() == head
    assert (await ledger.balance(source), await ledger.balance(target)) == (705, 307)


async def test_the_same_key_with_another_request_is_refused(ledger: Ledger) -> None:
    account_id = await ledger.funded(100)
    other = await ledger.funded(100)
    key = new_key()
    ok = await keyed(ledger.http, f"/accounts/{account_id}/deposits", {"amount": 5}, key)
    assert ok.status_code == 201
    head = await ledger.head()
    others: list[tuple[str, dict[str, Any]]] = [
        (f"/accounts/{account_id}/deposits", {"amount": 6}),
        (f"/accounts/{account_id}/deposits", {"amount": 5, "reference": "x"}),
        (f"/accounts/{other}/deposits", {"amount": 5}),
        (f"/accounts/{account_id}/withdrawals", {"amount": 5}),
        ("/transfers", {"from_account": account_id, "to_account": other, "amount": 5}),
        ("/accounts", {"currency": "EUR"}),
    ]
    for path, body in others:
        assert_problem(await keyed(ledger.http, path, body, key), 422, "idempotency-key-reused")
    assert await ledger.head() == head


async def test_a_refused_command_binds_nothing(ledger: Ledger) -> None:
    account_id = await ledger.funded(100)
    key = new_key()
    path = f"/accounts/{account_id}/withdrawals"
    refused = await keyed(ledger.http, path, {"amount": 500}, key)
    assert_problem(refused, 409, "insufficient-funds")
    again = await keyed(ledger.http, path, {"amount": 500}, key)
    assert_problem(again, 409, "insufficient-funds")
    await ledger.deposit(account_id, 1000)
    accepted = await keyed(ledger.http, path, {"amount": 500}, key)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["balance"] == 600
    assert_replay(accepted, await keyed(ledger.http, path, {"amount": 500}, key))


async def test_a_key_used_on_an_invalid_request_binds_nothing(ledger: Ledger) -> None:
    account_id = await ledger.funded(100)
    key = new_key()
    path = f"/accounts/{account_id}/deposits"
    invalid = await keyed(ledger.http, path, {"amount": 1.5}, key)
    assert_problem(invalid, 422, "validation-error")
    assert (await keyed(ledger.http, path, {"amount": 2}, key)).status_code == 201


async def test_without_a_key_two_identical_requests_write_twice(ledger: Ledger) -> None:
    account_id = await ledger.open()
    first = await ledger.deposit(account_id, 10)
    second = await ledger.deposit(account_id, 10)
    assert first["transaction_id"] != second["transaction_id"]
    assert second["balance"] == 20


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_requests_with_one_key_write_once(ledger: Ledger, instances: int) -> None:
    clients = [ledger.http] + [await ledger.another_instance() for _ in range(instances - 1)]
    account_id = await ledger.funded(1000)
    key = new_key()
    responses = await asyncio.gather(
        *(
            keyed(clients[i % instances], f"/accounts/{account_id}/withdrawals", {"amount": 7}, key)
            for i in range(12)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [201], [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    withdrawals = [e for e in await ledger.events(account_id) if e.type == "MoneyWithdrawn"]
    assert len(withdrawals) == 1
    assert await ledger.balance(account_id) == 993


async def test_concurrent_transfers_with_one_key_write_once_across_instances(
    ledger: Ledger,
) -> None:
    other = await ledger.another_instance()
    source = await ledger.funded(1000)
    target = await ledger.open()
    key = new_key()
    body = {"from_account": source, "to_account": target, "amount": 10}
    responses = await asyncio.gather(
        *(keyed((ledger.http, other)[i % 2], "/transfers", body, key) for i in range(10))
    )
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.text for r in responses}) == 1
    assert (await ledger.balance(source), await ledger.balance(target)) == (990, 10)


async def test_a_key_bound_by_a_concurrent_request_of_another_body_is_refused(
    ledger: Ledger,
) -> None:
    other = await ledger.another_instance()
    account_id = await ledger.funded(1000)
    key = new_key()
    path = f"/accounts/{account_id}/deposits"
    responses = await asyncio.gather(
        *(keyed((ledger.http, other)[i % 2], path, {"amount": 1 + i % 2}, key) for i in range(10))
    )
    statuses = sorted(r.status_code for r in responses)
    # One body won; the requests with its body replay it, the others are refused.
    assert statuses.count(201) == 1
    assert set(statuses) <= {200, 201, 422}
    assert statuses.count(422) == 5
    deposits = [e for e in await ledger.events(account_id) if e.type == "MoneyDeposited"]
    assert len(deposits) == 2  # the funding deposit and the one that won


class VersionFirstStore(MemoryEventStore):
    """A store that checks expected versions before it looks for replayed ids (a backend may),
    and that holds appends until two have arrived, so that two requests surely both decided
    before either writes."""

    def __init__(self) -> None:
        super().__init__(upcasters=build_upcasters())
        self.racing = False
        self.appends = 0
        self.both_appending = asyncio.Event()

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        if self.racing:
            self.appends += 1
            if self.appends >= 2:
                self.both_appending.set()
            await self.both_appending.wait()
        for append in appends:
            actual = await self.stream_version(append.stream)
            check_expected_version(append.stream, append.expected_version, actual)
        return await super()._append_batch(appends)


async def test_a_request_that_lost_the_race_for_its_key_answers_the_winners_response() -> None:
    store = VersionFirstStore()
    async with running_ledger(store) as ledger:
        account_id = await ledger.funded(100)
        other = await ledger.another_instance()
        store.racing = True
        key = new_key()
        path = f"/accounts/{account_id}/withdrawals"
        # Deciding again after the conflict would refuse (the money is gone): the key's
        # events in the log must win.
        responses = await asyncio.gather(
            keyed(ledger.http, path, {"amount": 100}, key),
            keyed(other, path, {"amount": 100}, key),
        )
        assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
        assert responses[0].json() == responses[1].json()
        assert await ledger.balance(account_id) == 0
