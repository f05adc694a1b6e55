"""Specs of reversals (`domain.reversal`), given/when/then: given the original transaction's
events and the accounts' states now, when reversing it, then the correcting events or a
refusal."""

from __future__ import annotations

import pytest

from eventledger.domain.account import Account, fold
from eventledger.domain.errors import (
    AccountClosedError,
    BalanceOutOfRange,
    InsufficientFunds,
    InvalidReference,
    InvalidTransactionId,
    NotReversible,
    TransactionNotFound,
    TransferPending,
)
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
    TransactionReversed,
    TransferReceived,
    TransferSent,
)
from eventledger.domain.money import INT64_MAX
from eventledger.domain.reversal import (
    ReverseTransaction,
    decide_reversal,
    effects,
    reversal_stream,
)

A, B = "alice", "bob"
ORIGINAL = "11111111-1111-4111-8111-111111111111"
REVERSAL = "22222222-2222-4222-8222-222222222222"
OTHER = "33333333-3333-4333-8333-333333333333"


def account(account_id: str, *events: Event, overdraft: int = 0) -> Account:
    return fold(account_id, [AccountOpened(account_id, "EUR", overdraft, None), *events])


def reverse(reason: str | None = None) -> ReverseTransaction:
    return ReverseTransaction(transaction_id=REVERSAL, reverses=ORIGINAL, reference=reason)


def test_a_deposit_is_reversed_by_taking_its_amount_back() -> None:
    deposit = MoneyDeposited(A, ORIGINAL, 500, "salary")
    events = decide_reversal(reverse("sent twice"), [deposit], {A: account(A, deposit)})
    assert events == [TransactionReversed(A, REVERSAL, ORIGINAL, -500, "sent twice")]


def test_a_withdrawal_is_reversed_by_giving_its_amount_back() -> None:
    funded = MoneyDeposited(A, OTHER, 500, None)
    withdrawal = MoneyWithdrawn(A, ORIGINAL, 200, None)
    events = decide_reversal(reverse(), [withdrawal], {A: account(A, funded, withdrawal)})
    assert events == [TransactionReversed(A, REVERSAL, ORIGINAL, 200, None)]


def test_a_transfer_is_reversed_on_both_accounts_and_the_amounts_sum_to_zero() -> None:
    funded = MoneyDeposited(A, OTHER, 500, None)
    sent = TransferSent(A, ORIGINAL, B, 300, "rent")
    received = TransferReceived(B, ORIGINAL, A, 300, "rent")
    states = {A: account(A, funded, sent), B: account(B, received)}
    events = decide_reversal(reverse("wrong flat"), [sent, received], states)
    assert events == [
        TransactionReversed(A, REVERSAL, ORIGINAL, 300, "wrong flat"),
        TransactionReversed(B, REVERSAL, ORIGINAL, -300, "wrong flat"),
    ]
    assert sum(e.amount for e in events) == 0


def test_the_reversed_balances_are_those_before_the_original() -> None:
    funded = MoneyDeposited(A, OTHER, 500, None)
    sent = TransferSent(A, ORIGINAL, B, 300, None)
    received = TransferReceived(B, ORIGINAL, A, 300, None)
    states = {A: account(A, funded, sent), B: account(B, received)}
    out, into = decide_reversal(reverse(), [sent, received], states)
    assert fold(A, [AccountOpened(A, "EUR", 0, None), funded, sent, out]).balance == 500
    assert fold(B, [AccountOpened(B, "EUR", 0, None), received, into]).balance == 0


def test_an_unknown_transaction_is_not_found() -> None:
    with pytest.raises(TransactionNotFound) as caught:
        decide_reversal(reverse(), [], {})
    assert caught.value.status == 404 and caught.value.code == "transaction-not-found"


def test_a_deposit_already_spent_cannot_be_reversed() -> None:
    deposit = MoneyDeposited(A, ORIGINAL, 500, None)
    spent = MoneyWithdrawn(A, OTHER, 400, None)
    with pytest.raises(InsufficientFunds) as caught:
        decide_reversal(reverse(), [deposit], {A: account(A, deposit, spent)})
    assert (caught.value.balance, caught.value.amount) == (100, 500)


def test_the_overdraft_limit_lets_a_spent_deposit_be_reversed_within_it() -> None:
    deposit = MoneyDeposited(A, ORIGINAL, 500, None)
    spent = MoneyWithdrawn(A, OTHER, 400, None)
    state = account(A, deposit, spent, overdraft=400)
    assert decide_reversal(reverse(), [deposit], {A: state})[0].amount == -500


def test_a_transfer_whose_receiver_spent_the_money_cannot_be_reversed() -> None:
    funded = MoneyDeposited(A, OTHER, 500, None)
    sent = TransferSent(A, ORIGINAL, B, 300, None)
    received = TransferReceived(B, ORIGINAL, A, 300, None)
    spent = MoneyWithdrawn(B, OTHER, 1, None)
    states = {A: account(A, funded, sent), B: account(B, received, spent)}
    with pytest.raises(InsufficientFunds) as caught:
        decide_reversal(reverse(), [sent, received], states)
    assert caught.value.account_id == B


def test_an_account_closed_since_refuses_the_reversal() -> None:
    funded = MoneyDeposited(A, OTHER, 500, None)
    withdrawal = MoneyWithdrawn(A, ORIGINAL, 500, None)
    closed = account(A, funded, withdrawal, AccountClosed(A))
    with pytest.raises(AccountClosedError):
        decide_reversal(reverse(), [withdrawal], {A: closed})


def test_a_reversal_cannot_itself_be_reversed() -> None:
    reversal = TransactionReversed(A, ORIGINAL, OTHER, -5, None)
    with pytest.raises(NotReversible) as caught:
        decide_reversal(reverse(), [reversal], {A: account(A)})
    assert caught.value.code == "not-reversible" and OTHER in caught.value.detail


def test_a_pending_transfer_cannot_be_reversed_while_pending() -> None:
    held: list[Event] = [
        PendingTransferSent(A, ORIGINAL, B, 300, None, None),
        PendingTransferReceived(B, ORIGINAL, A, 300, None, None),
    ]
    with pytest.raises(TransferPending) as caught:
        effects(ORIGINAL, held)
    assert caught.value.status == 409 and caught.value.code == "transfer-pending"


def test_a_voided_transfer_moved_nothing_to_reverse() -> None:
    held: list[Event] = [
        PendingTransferSent(A, ORIGINAL, B, 300, None, None),
        PendingTransferReceived(B, ORIGINAL, A, 300, None, None),
        PendingTransferVoided(A, ORIGINAL, A, B, 300, "expired"),
        PendingTransferVoided(B, ORIGINAL, A, B, 300, "expired"),
    ]
    with pytest.raises(NotReversible, match="expired"):
        effects(ORIGINAL, held)


def test_a_posted_transfer_reverses_the_amount_posted() -> None:
    history: list[Event] = [
        PendingTransferSent(A, ORIGINAL, B, 300, None, None),
        PendingTransferReceived(B, ORIGINAL, A, 300, None, None),
        PendingTransferPosted(A, ORIGINAL, A, B, 120),
        PendingTransferPosted(B, ORIGINAL, A, B, 120),
    ]
    assert effects(ORIGINAL, history) == {A: -120, B: 120}


def test_a_balance_stays_in_the_signed_64_bit_range() -> None:
    withdrawal = MoneyWithdrawn(A, ORIGINAL, 10, None)
    near_top = Account(A, True, "EUR", 0, None, INT64_MAX - 5, False, 3)
    with pytest.raises(BalanceOutOfRange):
        decide_reversal(reverse(), [withdrawal], {A: near_top})


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (ReverseTransaction(REVERSAL, "not-a-uuid"), InvalidTransactionId),
        (
            ReverseTransaction("ABCDEF00-0000-4000-8000-000000000000", ORIGINAL),
            InvalidTransactionId,
        ),
        (ReverseTransaction(ORIGINAL, ORIGINAL), InvalidTransactionId),
        (ReverseTransaction(REVERSAL, ORIGINAL, "a\u202eb"), InvalidReference),
        (ReverseTransaction(REVERSAL, ORIGINAL, "x" * 257), InvalidReference),
    ],
)
def test_bad_values_are_refused_before_any_state_is_looked_at(
    command: ReverseTransaction, error: type[Exception]
) -> None:
    with pytest.raises(error):
        decide_reversal(command, [], {})


def test_the_marker_stream_is_named_after_the_original() -> None:
    assert reversal_stream(ORIGINAL) == f"reversal-{ORIGINAL}"
