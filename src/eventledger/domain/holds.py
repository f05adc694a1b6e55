"""The outcome of a pending transfer, decided on its two accounts' states: post (all or
part of the held amount moves, the rest is released), void (nothing moves), or expire (a
void with reason "expired", decided only once the hold's deadline has passed).

The accounts are the authority: a hold exists only as the `PendingHold` both accounts keep
(`Account.pending`), the sender's debit and the receiver's credit of one amount, each with
the other as counterparty. Whatever led the caller to these two accounts (the command side
looks the transfer up by its id) is only a hint that this check confirms.

The rules, checked in this order:

1. the command's values (`commands.validate`);
2. both accounts exist (AccountNotFound) and hold the transfer, matching
   (TransferNotFound);
3. the hold is still pending at `now`: a hold whose deadline has passed can only expire
   (TransferNotPending, status "expired"), a hold not yet due cannot (TransferNotPending,
   status "pending" — an expiry before its time is refused);
4. a post moves 1..the held amount (AmountExceedsHold); balances stay in range.

Whether a transfer that is no longer pending was posted, voided or expired is not known to
the accounts (they forget a hold once it ends): the command side says so from the log.
"""

from __future__ import annotations

from eventledger.domain.account import Account, _check_addressed
from eventledger.domain.commands import (
    ExpirePendingTransfer,
    HoldOutcome,
    PostPendingTransfer,
    VoidPendingTransfer,
    validate,
)
from eventledger.domain.errors import AmountExceedsHold, TransferNotFound, TransferNotPending
from eventledger.domain.events import PendingTransferPosted, PendingTransferVoided
from eventledger.domain.money import check_balance
from eventledger.domain.pending import (
    CREDIT,
    DEBIT,
    EXPIRED,
    VOIDED,
    PendingHold,
    is_due,
    out_of_range,
)

Outcome = (
    tuple[PendingTransferPosted, PendingTransferPosted]
    | tuple[PendingTransferVoided, PendingTransferVoided]
)


def find_hold(source: Account, target: Account, transaction_id: str) -> PendingHold | None:
    """The hold of `transaction_id` from `source` to `target` when both accounts keep it,
    matching; else None."""
    sent = source.pending.get(transaction_id)
    received = target.pending.get(transaction_id)
    if sent is None or received is None:
        return None
    matching = (
        sent.side == DEBIT
        and received.side == CREDIT
        and sent.counterparty == target.account_id
        and received.counterparty == source.account_id
        and sent.amount == received.amount
        and sent.expires_at == received.expires_at
    )
    return sent if matching else None


def decide_outcome(source: Account, target: Account, command: HoldOutcome) -> Outcome:
    """The two events ending a pending transfer (the sender's first), to append atomically;
    or the DomainError refusing it."""
    validate(command)
    _check_addressed(source, command.from_account)
    _check_addressed(target, command.to_account)
    tid = command.transaction_id
    # An account that does not exist holds nothing: the transfer is not found (a record
    # naming accounts that were never opened is a forgery, not a missing account).
    hold = find_hold(source, target, tid) if source.exists and target.exists else None
    if hold is None:
        raise TransferNotFound(tid)
    due = command.now is not None and is_due(hold.expires_at, command.now)
    if isinstance(command, ExpirePendingTransfer):
        if not due:
            raise TransferNotPending(tid, status="pending")
        return _voided(command, hold, EXPIRED)
    if due:
        # Past its deadline a hold is expired, whether or not the expiry is written yet.
        raise TransferNotPending(tid, status="expired")
    if isinstance(command, VoidPendingTransfer):
        return _voided(command, hold, VOIDED)
    assert isinstance(command, PostPendingTransfer)
    amount = hold.amount if command.amount is None else command.amount
    if amount > hold.amount:
        raise AmountExceedsHold(tid, amount=amount, held=hold.amount)
    _check_range(
        source,
        source.balance - amount,
        source.pending_debits - hold.amount,
        source.pending_credits,
    )
    _check_range(
        target,
        target.balance + amount,
        target.pending_debits,
        target.pending_credits - hold.amount,
    )
    return (
        _posted(command, source.account_id, amount),
        _posted(command, target.account_id, amount),
    )


def _posted(command: HoldOutcome, account_id: str, amount: int) -> PendingTransferPosted:
    return PendingTransferPosted(
        account_id=account_id,
        transaction_id=command.transaction_id,
        from_account=command.from_account,
        to_account=command.to_account,
        amount=amount,
    )


def _voided(
    command: HoldOutcome, hold: PendingHold, reason: str
) -> tuple[PendingTransferVoided, PendingTransferVoided]:
    def side(account_id: str) -> PendingTransferVoided:
        return PendingTransferVoided(
            account_id=account_id,
            transaction_id=command.transaction_id,
            from_account=command.from_account,
            to_account=command.to_account,
            amount=hold.amount,
            reason=reason,
        )

    return side(command.from_account), side(command.to_account)


def _check_range(state: Account, balance: int, debits: int, credits: int) -> None:
    bad = out_of_range(balance, debits, credits)
    if bad is not None:
        check_balance(bad, account_id=state.account_id)
