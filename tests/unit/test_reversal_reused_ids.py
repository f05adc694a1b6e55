"""A transaction id reused by another writer of the stream service (a valid event on another
account carrying it): the reversal decides with the guard's own rule, so it refuses (409
not-reversible) instead of deciding events the guard would refuse (once a 502)."""

from __future__ import annotations

import pytest

from eventledger.domain.account import Account, fold
from eventledger.domain.errors import NotReversible
from eventledger.domain.events import (
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
    TransactionReversed,
    TransferReceived,
    TransferSent,
)
from eventledger.domain.reversal import ReverseTransaction, decide_reversal

A, B, E, U = "alice", "bob", "eve", "usd-account"
ORIGINAL = "11111111-1111-4111-8111-111111111111"
REVERSAL = "22222222-2222-4222-8222-222222222222"
OTHER = "33333333-3333-4333-8333-333333333333"


def account(account_id: str, *events: Event, currency: str = "EUR") -> Account:
    return fold(account_id, [AccountOpened(account_id, currency, 0, None), *events])


COMMAND = ReverseTransaction(transaction_id=REVERSAL, reverses=ORIGINAL, reference=None)
FUNDED = MoneyDeposited(A, OTHER, 500, None)
SENT = TransferSent(A, ORIGINAL, B, 300, None)
RECEIVED = TransferReceived(B, ORIGINAL, A, 300, None)


@pytest.mark.parametrize(
    "sibling",
    [MoneyDeposited(E, ORIGINAL, 7, None), MoneyWithdrawn(E, ORIGINAL, 300, None)],
    ids=["a deposit", "a withdrawal of the same amount"],
)
def test_a_transfer_whose_id_is_reused_on_a_third_account_is_not_reversible(
    sibling: Event,
) -> None:
    states = {
        A: account(A, FUNDED, SENT),
        B: account(B, RECEIVED),
        E: account(E, MoneyDeposited(E, OTHER, 1_000, None), sibling),
    }
    with pytest.raises(NotReversible, match="3 accounts"):
        decide_reversal(COMMAND, [SENT, RECEIVED, sibling], states)


def test_a_deposit_whose_id_is_reused_on_another_currency_is_not_reversible() -> None:
    deposit = MoneyDeposited(A, ORIGINAL, 5, None)
    withdrawal = MoneyWithdrawn(U, ORIGINAL, 5, None)
    states = {
        A: account(A, deposit),
        U: account(U, MoneyDeposited(U, OTHER, 10, None), withdrawal, currency="USD"),
    }
    with pytest.raises(NotReversible, match="joins accounts"):
        decide_reversal(COMMAND, [deposit, withdrawal], states)


def test_the_transfer_alone_is_still_reversed() -> None:
    states = {A: account(A, FUNDED, SENT), B: account(B, RECEIVED)}
    assert decide_reversal(COMMAND, [SENT, RECEIVED], states) == [
        TransactionReversed(A, REVERSAL, ORIGINAL, 300, None),
        TransactionReversed(B, REVERSAL, ORIGINAL, -300, None),
    ]
