"""The request id a caller sends travels into the metadata of the events its command wrote."""

from __future__ import annotations

from tests.integration.test_transaction_api import Ledger, running_ledger


async def test_the_request_id_becomes_the_correlation_id_of_the_events_written() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.open()
        await deposit(ledger, account_id, {"X-Request-ID": "req-42"})
        await deposit(ledger, account_id, {"X-Request-ID": "req-43", "X-Correlation-ID": "c-1"})
        await deposit(ledger, account_id, {"X-Request-ID": "bad id with spaces"})
        events = await ledger.events(account_id)
        ids = [e.metadata["correlation_id"] for e in events[1:]]
        assert ids[:2] == ["req-42", "c-1"]  # an explicit correlation id wins
        assert ids[2] == events[3].metadata["causation_id"]  # invalid: the command's own id


async def deposit(ledger: Ledger, account_id: str, headers: dict[str, str]) -> None:
    response = await ledger.http.post(
        f"/accounts/{account_id}/deposits", json={"amount": 1}, headers=headers
    )
    assert response.status_code == 201, response.text
