"""Two-phase transfers through the transaction service, against a real stream service
(in-process, memory store): holds, partial posts, voids, expiry from the log, races, the
overdraft on `available`, closing with holds, idempotent retries, and the stream guard
refusing forged outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
import pytest_asyncio

from eventledger.domain.events import stream_name
from eventledger.services.transaction.app import create_app as create_transaction_app
from eventledger.services.transaction.two_phase import HOLD_RECORDED, transfer_stream
from tests.integration.test_transaction_api import (
    Ledger,
    assert_problem,
    running_ledger,
    transaction_client,
    with_secret,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger(clock: Clock) -> AsyncIterator[Ledger]:
    async with running_ledger(clock=clock) as running:
        yield running


async def hold(
    http: httpx.AsyncClient, source: str, target: str, amount: int, **body: Any
) -> httpx.Response:
    return await http.post(
        "/transfers",
        json={"from_account": source, "to_account": target, "amount": amount, "pending": True}
        | body,
    )


async def held(
    ledger: Ledger, amount: int = 300, fund: int = 1000, **body: Any
) -> tuple[str, str, str]:
    source, target = await ledger.funded(fund), await ledger.open()
    response = await hold(ledger.http, source, target, amount, **body)
    assert response.status_code == 201, response.text
    return source, target, str(response.json()["transaction_id"])


async def types(ledger: Ledger, account_id: str) -> list[str]:
    return [e.type for e in await ledger.events(account_id)]


async def test_a_hold_keeps_the_balance_and_lowers_what_is_available(
    ledger: Ledger, clock: Clock
) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    response = await hold(ledger.http, source, target, 300, timeout_seconds=30)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["expires_at"] == (clock.now + timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    assert (body["from_balance"], body["from_available"], body["to_balance"]) == (1000, 700, 0)
    assert body["position"] == await ledger.head()
    assert await types(ledger, source) == ["AccountOpened", "MoneyDeposited", "PendingTransferSent"]
    assert await types(ledger, target) == ["AccountOpened", "PendingTransferReceived"]
    (record,) = await ledger.store.read_stream(transfer_stream(body["transaction_id"]))
    assert record.type == HOLD_RECORDED and record.data["from_account"] == source
    status = await ledger.http.get(f"/transfers/{body['transaction_id']}")
    assert status.json()["status"] == "pending"


async def test_a_partial_post_moves_part_and_releases_the_rest(ledger: Ledger) -> None:
    source, target, tid = await held(ledger, 300)
    response = await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 120})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["amount"], body["held"]) == ("posted", 120, 300)
    assert (body["from_balance"], body["from_available"], body["to_balance"]) == (880, 880, 120)
    assert await ledger.balance(source) == 1000  # the helper knows no holds: the log says
    assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "posted"
    again = await ledger.http.post(f"/transfers/{tid}/void", json={})
    problem = assert_problem(again, 409, "transfer-not-pending")
    assert problem["transfer_status"] == "posted"
    del target


async def test_a_post_without_amount_moves_the_whole_hold(ledger: Ledger) -> None:
    _, _, tid = await held(ledger, 300)
    response = await ledger.http.post(f"/transfers/{tid}/post", json={})
    assert response.status_code == 201, response.text
    assert (response.json()["amount"], response.json()["to_balance"]) == (300, 300)


async def test_a_void_releases_the_hold_once(ledger: Ledger) -> None:
    source, target, tid = await held(ledger, 300)
    response = await ledger.http.post(f"/transfers/{tid}/void", json={})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["amount"], body["from_available"], body["to_balance"]) == (
        "voided",
        300,
        1000,
        0,
    )
    head = await ledger.head()
    for path in (f"/transfers/{tid}/void", f"/transfers/{tid}/post"):
        problem = assert_problem(await ledger.http.post(path, json={}), 409, "transfer-not-pending")
        assert problem["transfer_status"] == "voided"
    assert await ledger.head() == head
    assert await types(ledger, target) == [
        "AccountOpened",
        "PendingTransferReceived",
        "PendingTransferVoided",
    ]
    del source


async def test_posting_more_than_the_hold_is_refused_and_writes_nothing(ledger: Ledger) -> None:
    _, _, tid = await held(ledger, 300)
    head = await ledger.head()
    problem = assert_problem(
        await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 301}),
        422,
        "amount-exceeds-hold",
    )
    assert problem["held"] == 300
    assert await ledger.head() == head


async def test_unknown_and_malformed_transfer_ids(ledger: Ledger) -> None:
    assert_problem(
        await ledger.http.post(f"/transfers/{uuid4()}/post", json={}), 404, "transfer-not-found"
    )
    assert_problem(await ledger.http.get(f"/transfers/{uuid4()}"), 404, "transfer-not-found")
    assert_problem(
        await ledger.http.post("/transfers/not-a-uuid/void", json={}), 422, "invalid-transaction-id"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"timeout_seconds": 30},  # a timeout without pending
        {"pending": True, "timeout_seconds": 0},
        {"pending": True, "timeout_seconds": 30 * 24 * 3600 + 1},
        {"pending": "true"},
        {"pending": True, "timeout_seconds": 1.5},
    ],
)
async def test_bad_hold_requests_are_refused(ledger: Ledger, body: dict[str, Any]) -> None:
    source, target = await ledger.funded(100), await ledger.open()
    head = await ledger.head()
    response = await ledger.http.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": 5} | body
    )
    assert response.status_code == 422, response.text
    assert await ledger.head() == head


async def test_overdraft_rules_apply_to_what_is_available(ledger: Ledger) -> None:
    source, target, _ = await held(ledger, 800, fund=1000)
    problem = assert_problem(
        await ledger.http.post(f"/accounts/{source}/withdrawals", json={"amount": 201}),
        409,
        "insufficient-funds",
    )
    assert (problem["balance"], problem["available"]) == (1000, 200)
    assert_problem(await hold(ledger.http, source, target, 201), 409, "insufficient-funds")
    ok = await ledger.http.post(f"/accounts/{source}/withdrawals", json={"amount": 200})
    assert ok.status_code == 201, ok.text


async def test_an_account_with_pending_transfers_cannot_be_closed(ledger: Ledger) -> None:
    _, target, tid = await held(ledger, 300)
    problem = assert_problem(
        await ledger.http.post(f"/accounts/{target}/close", json={}), 409, "pending-transfers"
    )
    assert problem["pending"] == 1
    assert (await ledger.http.post(f"/transfers/{tid}/void", json={})).status_code == 201
    assert (await ledger.http.post(f"/accounts/{target}/close", json={})).status_code == 201


async def test_a_closed_account_is_party_to_no_new_hold(ledger: Ledger) -> None:
    source, target = await ledger.funded(100), await ledger.open()
    assert (await ledger.http.post(f"/accounts/{target}/close", json={})).status_code == 201
    assert_problem(await hold(ledger.http, source, target, 5), 409, "account-closed")


async def test_holds_and_outcomes_replay_with_the_same_idempotency_key(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    key = {"Idempotency-Key": f"hold-{uuid4()}"}
    body = {"from_account": source, "to_account": target, "amount": 50, "pending": True}
    first = await ledger.http.post("/transfers", json=body, headers=key)
    assert first.status_code == 201, first.text
    tid = first.json()["transaction_id"]
    post_key = {"Idempotency-Key": f"post-{uuid4()}"}
    posted = await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 20}, headers=post_key)
    assert posted.status_code == 201, posted.text
    head = await ledger.head()
    again = await ledger.http.post("/transfers", json=body, headers=key)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert again.json() == first.json()
    replay = await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 20}, headers=post_key)
    assert (replay.status_code, replay.json()) == (200, posted.json())
    reused = await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 21}, headers=post_key)
    assert_problem(reused, 422, "idempotency-key-reused")
    assert await ledger.head() == head


async def test_a_post_and_a_void_racing_on_two_instances_end_the_hold_once(
    ledger: Ledger,
) -> None:
    other = await ledger.another_instance()
    for _ in range(5):
        source, target, tid = await held(ledger, 300)
        post, void = await asyncio.gather(
            ledger.http.post(f"/transfers/{tid}/post", json={}),
            other.post(f"/transfers/{tid}/void", json={}),
        )
        statuses = sorted([post.status_code, void.status_code])
        assert statuses == [201, 409], (post.text, void.text)
        loser = post if post.status_code == 409 else void
        assert loser.json()["type"] == "transfer-not-pending"
        outcomes = [t for t in await types(ledger, source) if t.startswith("PendingTransfer")]
        assert outcomes in (
            ["PendingTransferSent", "PendingTransferPosted"],
            ["PendingTransferSent", "PendingTransferVoided"],
        )
        assert len(await ledger.events(target)) == 3


async def test_a_hold_past_its_deadline_cannot_be_posted(ledger: Ledger, clock: Clock) -> None:
    # This ledger's instance expires nothing by itself (no log follower): the deadline alone
    # makes the hold expired to a post.
    _, _, tid = await held(ledger, 300, timeout_seconds=10)
    clock.now += timedelta(seconds=10)
    try:
        problem = assert_problem(
            await ledger.http.post(f"/transfers/{tid}/post", json={}), 409, "transfer-not-pending"
        )
        assert problem["transfer_status"] == "expired"
        assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "expired"
    finally:
        clock.now = START


async def test_due_holds_expire_from_the_log_exactly_once_with_two_instances() -> None:
    clock = Clock()
    async with running_ledger(clock=clock, expire_holds=True) as ledger:
        other = await ledger.another_instance(clock=clock, expire_holds=True)
        source, target, tid = await held(ledger, 300, timeout_seconds=30)
        never, _, _ = await held(ledger, 100, fund=500)  # no timeout: never expires
        clock.now += timedelta(seconds=29)
        await asyncio.sleep(0.3)
        assert "PendingTransferVoided" not in await types(ledger, source)
        clock.now += timedelta(seconds=1)
        await _wait_for_type(ledger, source, "PendingTransferVoided")
        await asyncio.sleep(0.5)  # both instances had their chance
        voided = [e for e in await ledger.events(source) if e.type == "PendingTransferVoided"]
        assert len(voided) == 1 and voided[0].data["reason"] == "expired"
        assert (
            len([e for e in await ledger.events(target) if e.type == "PendingTransferVoided"]) == 1
        )
        problem = assert_problem(
            await other.post(f"/transfers/{tid}/post", json={}), 409, "transfer-not-pending"
        )
        assert problem["transfer_status"] == "expired"
        assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "expired"
        assert "PendingTransferVoided" not in await types(ledger, never)


async def test_instances_following_the_log_expire_holds_once_on_one_subscription_each() -> None:
    clock = Clock()
    async with running_ledger(clock=clock, follow_log=True) as ledger:
        other = await ledger.another_instance(clock=clock, follow_log=True)
        expirers = [ledger.app.state.expirer]
        source, target, tid = await held(ledger, 300, timeout_seconds=30)
        kept, _, _ = await held(ledger, 100, fund=500, timeout_seconds=60)
        clock.now += timedelta(seconds=30)
        await _wait_for_type(ledger, source, "PendingTransferVoided")
        async with asyncio.timeout(10):  # the other hold: learnt from the feed, not due
            while len(expirers[0]) != 1:  # noqa: ASYNC110 - nothing to await
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # both instances had their chance
        for account in (source, target):
            events = await ledger.events(account)
            assert [e.data["reason"] for e in events if e.type == "PendingTransferVoided"] == [
                "expired"
            ]
        assert "PendingTransferVoided" not in await types(ledger, kept)
        assert (await other.get(f"/transfers/{tid}")).json()["status"] == "expired"
        # The follower's subscription feeds the expirer: one per instance, not two.
        async with httpx.AsyncClient(base_url=ledger.stream.url) as stream:
            metrics = (await stream.get("/metrics")).text
        assert "eventledger_stream_subscribers 2.0" in metrics


async def test_a_restarted_instance_expires_holds_whose_deadline_passed_while_it_was_down() -> None:
    clock = Clock()
    async with running_ledger(clock=clock) as ledger:  # this one does not expire holds
        source, _, tid = await held(ledger, 300, timeout_seconds=5)
        clock.now += timedelta(minutes=5)
        app = create_transaction_app(
            stream_url=ledger.stream.url, **with_secret({"clock": clock, "expire_holds": True})
        )
        async with transaction_client(app):
            await _wait_for_type(ledger, source, "PendingTransferVoided")
        del tid


async def _wait_for_type(ledger: Ledger, account_id: str, event_type: str) -> None:
    async with asyncio.timeout(10):
        while event_type not in await types(ledger, account_id):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# -- the guard: forged outcomes move no money --------------------------------------------------


async def _append_outcome(
    ledger: Ledger, source: str, target: str, tid: str, event_type: str, amount: int, **extra: Any
) -> httpx.Response:
    appends = []
    for account in (source, target):
        version = len(await ledger.events(account))
        data = {
            "account_id": account,
            "transaction_id": tid,
            "from_account": source,
            "to_account": target,
            "amount": amount,
            **extra,
        }
        appends.append(
            {
                "stream": stream_name(account),
                "expected_version": version,
                "events": [{"type": event_type, "data": data}],
            }
        )
    async with httpx.AsyncClient(base_url=ledger.stream.url) as stream:
        return await stream.post("/batches", json={"appends": appends})


@pytest.mark.parametrize(
    ("event_type", "amount", "extra", "rule"),
    [
        ("PendingTransferPosted", 301, {}, "amount-exceeds-hold"),
        ("PendingTransferVoided", 299, {"reason": "voided"}, "transfer-mismatch"),
        ("PendingTransferVoided", 300, {"reason": "forgotten"}, "invalid-reason"),
    ],
)
async def test_the_guard_refuses_outcomes_that_do_not_match_the_hold(
    ledger: Ledger, event_type: str, amount: int, extra: dict[str, Any], rule: str
) -> None:
    source, target, tid = await held(ledger, 300)
    head = await ledger.head()
    response = await _append_outcome(ledger, source, target, tid, event_type, amount, **extra)
    assert assert_problem(response, 422, "invalid-account-event")["rule"] == rule
    assert await ledger.head() == head


async def test_the_guard_refuses_an_outcome_for_a_hold_the_accounts_do_not_have(
    ledger: Ledger,
) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    head = await ledger.head()
    response = await _append_outcome(
        ledger, source, target, str(uuid4()), "PendingTransferPosted", 100
    )
    assert assert_problem(response, 422, "invalid-account-event")["rule"] == (
        "transfer-not-pending"
    )
    # Between other accounts than the hold's:
    _, _, tid = await held(ledger, 300)
    response = await _append_outcome(ledger, source, target, tid, "PendingTransferPosted", 100)
    assert response.status_code == 422
    assert await ledger.head() > head  # only the hold was written


async def test_a_forged_transfer_record_moves_no_money(ledger: Ledger) -> None:
    source, target = await ledger.funded(1000), await ledger.open()
    tid = str(uuid4())
    forged = {
        "transaction_id": tid,
        "from_account": source,
        "to_account": target,
        "amount": 1000,
        "expires_at": None,
    }
    async with httpx.AsyncClient(base_url=ledger.stream.url) as stream:
        written = await stream.post(
            f"/streams/{transfer_stream(tid)}",
            json={
                "expected_version": "no_stream",
                "events": [{"type": HOLD_RECORDED, "data": forged}],
            },
        )
        assert written.status_code == 201, written.text
    head = await ledger.head()
    assert_problem(
        await ledger.http.post(f"/transfers/{tid}/post", json={}), 404, "transfer-not-found"
    )
    assert_problem(await ledger.http.get(f"/transfers/{tid}"), 404, "transfer-not-found")
    assert await ledger.head() == head


async def test_a_hold_written_without_its_transfer_record_can_still_be_ended(
    ledger: Ledger,
) -> None:
    # Another writer of the stream service appends a valid hold to the two account streams
    # only: the transaction service finds it through the stream's index of transaction ids.
    source, target = await ledger.funded(1000), await ledger.open()
    tid = str(uuid4())
    appends = []
    for account, event_type, other in (
        (source, "PendingTransferSent", {"to_account": target}),
        (target, "PendingTransferReceived", {"from_account": source}),
    ):
        data = {"account_id": account, "transaction_id": tid, "amount": 250, "reference": None}
        appends.append(
            {
                "stream": stream_name(account),
                "expected_version": len(await ledger.events(account)),
                "events": [{"type": event_type, "data": data | other | {"expires_at": None}}],
            }
        )
    async with httpx.AsyncClient(base_url=ledger.stream.url) as stream:
        written = await stream.post("/batches", json={"appends": appends})
        assert written.status_code == 201, written.text
    assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "pending"
    voided = await ledger.http.post(f"/transfers/{tid}/void", json={})
    assert voided.status_code == 201, voided.text
    assert (voided.json()["from_available"], voided.json()["held"]) == (1000, 250)
    problem = assert_problem(
        await ledger.http.post(f"/transfers/{tid}/post", json={}), 409, "transfer-not-pending"
    )
    assert problem["transfer_status"] == "voided"
    assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "voided"
