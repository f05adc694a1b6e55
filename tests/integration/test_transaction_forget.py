"""`POST /accounts/{id}/forget` on the transaction service: it erases through the stream
service, answers what it did, is idempotent, refuses unknown accounts, and needs `admin`."""

from __future__ import annotations

import pytest

from eventledger.services.auth import required_scope
from eventledger.services.transaction.idempotency import fingerprint
from tests.integration.test_transaction_api import (
    IDEMPOTENCY_SECRET,
    assert_problem,
    running_ledger,
)

JSON = {"Content-Type": "application/json"}


async def test_forget_erases_through_the_stream_service_and_a_second_forget_writes_nothing() -> (
    None
):
    async with running_ledger() as ledger:
        account = await ledger.open(owner="Grace Hopper-Lindqvist")
        answer = await ledger.http.post(
            f"/accounts/{account}/deposits", json={"amount": 700, "reference": "loan 88"}
        )
        assert answer.status_code == 201, answer.text

        first = await ledger.http.post(f"/accounts/{account}/forget", headers=JSON)
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["erased"] and body["version"] == 3 and not body["replayed"]
        assert body["plaintext_fields"] == 0
        events = await ledger.events(account)
        assert events[0].data["owner"] is None and events[1].data["reference"] is None
        assert events[2].type == "PersonalDataErased"

        again = await ledger.http.post(f"/accounts/{account}/forget", headers=JSON)
        assert again.status_code == 200 and again.json()["replayed"]
        assert again.json()["position"] == body["position"]
        assert len(await ledger.events(account)) == 3  # nothing written

        # The account still works; new personal data can be forgotten again.
        answer = await ledger.http.post(
            f"/accounts/{account}/deposits", json={"amount": 5, "reference": "later"}
        )
        assert answer.status_code == 201 and answer.json()["balance"] == 705
        third = await ledger.http.post(f"/accounts/{account}/forget", headers=JSON)
        assert third.status_code == 201 and third.json()["version"] == 5
        assert (await ledger.events(account))[3].data["reference"] is None


async def test_a_closed_account_can_be_forgotten() -> None:
    async with running_ledger() as ledger:
        account = await ledger.open(owner="Closing Customer")
        closed = await ledger.http.post(f"/accounts/{account}/close", json={})
        assert closed.status_code == 201, closed.text
        answer = await ledger.http.post(f"/accounts/{account}/forget", headers=JSON)
        assert answer.status_code == 201, answer.text
        assert (await ledger.events(account))[0].data["owner"] is None


@pytest.mark.parametrize(
    ("account", "status", "problem"),
    [("acc-never-opened", 404, "account-not-found"), ("bad id!", 422, "invalid-account-id")],
)
async def test_forget_refuses_an_unknown_or_invalid_account(
    account: str, status: int, problem: str
) -> None:
    async with running_ledger() as ledger:
        answer = await ledger.http.post(f"/accounts/{account}/forget", headers=JSON)
        assert_problem(answer, status, problem)


def test_forget_needs_the_admin_scope_on_both_services() -> None:
    assert required_scope("transaction", "POST", "/accounts/acc-1/forget") == "admin"
    assert required_scope("transaction", "POST", "/accounts/acc-1/deposits") == "ledger:write"
    assert required_scope("stream", "POST", "/admin/accounts/acc-1/forget") == "admin"


async def test_forget_is_described_in_the_openapi_document() -> None:
    async with running_ledger() as ledger:
        document = (await ledger.http.get("/openapi.json")).json()
        operation = document["paths"]["/accounts/{account_id}/forget"]["post"]
        assert operation["operationId"] == "forgetPersonalData"
        assert {"200", "201", "404", "503"} <= set(operation["responses"])


async def test_the_request_fingerprint_in_the_log_cannot_confirm_a_guessed_owner() -> None:
    # The fingerprint of a keyed command is kept in its events' metadata: keyed (HMAC under
    # the installation's secret), a log reader cannot test a guessed name against it.
    async with running_ledger() as ledger:
        body = {"account_id": "acc-guess", "currency": "EUR", "owner": "Ada Guessable"}
        opened = await ledger.http.post("/accounts", json=body, headers={"Idempotency-Key": "k-1"})
        assert opened.status_code == 201, opened.text
        stored = (await ledger.events("acc-guess"))[0].metadata["request_fingerprint"]
        plain = {**body, "overdraft_limit": 0}
        assert stored != fingerprint("POST", "/accounts", plain)
        assert stored == fingerprint("POST", "/accounts", plain, IDEMPOTENCY_SECRET)
        again = await ledger.http.post("/accounts", json=body, headers={"Idempotency-Key": "k-1"})
        assert again.status_code in (200, 201) and again.headers["Idempotent-Replayed"] == "true"
