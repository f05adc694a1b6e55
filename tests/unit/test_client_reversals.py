"""The client's reversal result and history links, read strictly from the API's JSON."""

from __future__ import annotations

from typing import Any

import pytest

from eventledger.client import UnexpectedResponse
from eventledger.client.models import HistoryItem
from eventledger.client.reversals import Reversal, ReversedAccount

BODY: dict[str, Any] = {
    "transaction_id": "22222222-2222-4222-8222-222222222222",
    "reverses": "11111111-1111-4111-8111-111111111111",
    "reference": "sent twice",
    "accounts": [
        {"account_id": "alice", "amount": 300, "balance": 1000},
        {"account_id": "bob", "amount": -300, "balance": 0},
    ],
    "position": 42,
}


def test_a_reversal_reads_every_account_in_order() -> None:
    reversal = Reversal.from_json(BODY, replayed=True)
    assert reversal.accounts == (
        ReversedAccount("alice", 300, 1000),
        ReversedAccount("bob", -300, 0),
    )
    assert (reversal.reverses, reversal.reference, reversal.position, reversal.replayed) == (
        BODY["reverses"],
        "sent twice",
        42,
        True,
    )


@pytest.mark.parametrize(
    "broken",
    [
        {**BODY, "accounts": None},
        {**BODY, "accounts": [{"account_id": "alice", "amount": "300", "balance": 0}]},
        {**BODY, "position": 4.2},
    ],
)
def test_a_malformed_answer_is_an_unexpected_response(broken: dict[str, Any]) -> None:
    with pytest.raises(UnexpectedResponse):
        Reversal.from_json(broken)


def test_history_items_carry_their_reversal_links() -> None:
    item = {
        "transaction_id": BODY["reverses"],
        "kind": "deposit",
        "amount": 5,
        "balance_after": 5,
        "counterparty": None,
        "reference": None,
        "recorded_at": "2026-12-03T10:00:00.000000Z",
        "position": 3,
        "reverses": None,
        "reversed_by": BODY["transaction_id"],
    }
    assert HistoryItem.from_json(item).reversed_by == BODY["transaction_id"]
    assert HistoryItem.from_json({**item, "reversed_by": None}).reversed_by is None
