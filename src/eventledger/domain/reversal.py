"""Reversals: undoing a transaction with new events, never by editing or deleting one.

`decide_reversal(command, original, accounts)` takes the events that the original transaction
wrote on account streams (`original`, in log order), the current state of every account they
touched, and answers one `TransactionReversed` per account, in the order the original touched
them, each with the opposite of the original's net change to that account's balance. They
are appended atomically (one batch, each stream at its expected version).

The rules, checked in this order so that the same input always gets the same answer:

1. the command's values: the reversal's id, the id it reverses, the reason (clean text);
2. the original exists (TransactionNotFound);
3. it can be reversed (NotReversible): not itself a reversal (a mistaken reversal is
   corrected by a new transaction, not by reversing the reversal: a chain of reversals of
   reversals would make "is X in effect?" depend on the parity of a chain), not a
   two-phase transfer still pending (TransferPending) or voided (nothing moved); a posted
   one reverses the amount posted;
4. every account it touched is open (AccountClosed);
5. money: taking back money that came in keeps the account at or above -overdraft_limit
   on what is available (InsufficientFunds: a deposit already spent cannot be reversed),
   every balance stays within the signed 64-bit range (BalanceOutOfRange).

Whether the original was reversed already is not decided here: the command side learns it
from the log (the reversal's marker stream, `reversal-{original id}`), which also makes two
concurrent reversals of one transaction meet there, so exactly one of them is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eventledger.domain.account import (
    Account,
    _check_balance_in_range,
    _check_exists,
    _check_open,
    _check_sufficient_funds,
)
from eventledger.domain.errors import (
    InvalidAccountEvent,
    InvalidTransactionId,
    NotReversible,
    TransactionNotFound,
    TransferPending,
)
from eventledger.domain.events import (
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
from eventledger.domain.money import check_reference, check_transaction_id
from eventledger.domain.validity import AccountFacts, check_reversals

REVERSAL_STREAM_PREFIX = "reversal-"
REVERSAL_RECORDED = "ReversalRecorded"  # the marker event's type (not an account event)


def reversal_stream(original_id: str) -> str:
    """The marker stream of the reversal of transaction `original_id`: it holds one event
    once that transaction is reversed, so a second reversal conflicts there (no_stream)."""
    return f"{REVERSAL_STREAM_PREFIX}{original_id}"


@dataclass(frozen=True, slots=True)
class ReverseTransaction:
    """Undo transaction `reverses` with a new transaction `transaction_id`, for a reason."""

    transaction_id: str
    reverses: str
    reference: str | None = None


def validate_reversal(command: ReverseTransaction) -> None:
    """Check the command's values, before any state is loaded (InvalidCommand)."""
    check_transaction_id(command.transaction_id)
    check_transaction_id(command.reverses, field="reverses")
    if command.transaction_id == command.reverses:
        raise InvalidTransactionId(
            "a reversal needs a transaction id of its own", field="transaction_id"
        )
    check_reference(command.reference)


def effects(original_id: str, original: Sequence[Event]) -> dict[str, int]:
    """The net change the original transaction made to each account's balance, in the order
    it touched them; NotReversible / TransferPending when it cannot be undone."""
    changes: dict[str, int] = {}
    pending = False
    for event in original:
        match event:
            case TransactionReversed():
                raise NotReversible(
                    original_id,
                    "it is itself a reversal (of transaction "
                    f"{event.reverses}); correct a mistaken reversal with a new transaction",
                )
            case MoneyDeposited() | TransferReceived():
                changes[event.account_id] = changes.get(event.account_id, 0) + event.amount
            case MoneyWithdrawn() | TransferSent():
                changes[event.account_id] = changes.get(event.account_id, 0) - event.amount
            case PendingTransferSent() | PendingTransferReceived():
                pending = True
                changes.setdefault(event.account_id, 0)
            case PendingTransferPosted():
                pending = False
                sign = -1 if event.account_id == event.from_account else 1
                changes[event.account_id] = changes.get(event.account_id, 0) + sign * event.amount
            case PendingTransferVoided():
                raise NotReversible(
                    original_id, f"it is a two-phase transfer that was {event.reason}"
                )
            case _:
                pass
    if pending:
        raise TransferPending(original_id)
    return changes


def decide_reversal(
    command: ReverseTransaction, original: Sequence[Event], accounts: Mapping[str, Account]
) -> list[TransactionReversed]:
    """The events that reverse `original` (the events of transaction `command.reverses` on
    account streams), one per account it touched, given those accounts' current states; or
    the DomainError refusing it."""
    validate_reversal(command)
    if not original:
        raise TransactionNotFound(command.reverses)
    changes = effects(command.reverses, original)
    if not any(changes.values()):
        raise NotReversible(command.reverses, "it moved no money")
    decided = []
    for account_id, change in changes.items():
        if change == 0:  # an account the original left as it was: nothing to give back
            continue
        state = accounts[account_id]
        _check_exists(state)
        _check_open(state)
        if change > 0:  # money came in: taking it back must be allowed
            _check_sufficient_funds(state, change)
        _check_balance_in_range(state, state.balance - change)
        decided.append(
            TransactionReversed(
                account_id=account_id,
                transaction_id=command.transaction_id,
                reverses=command.reverses,
                amount=-change,
                reference=command.reference,
            )
        )
    # One rule, every door: the guard's rule for the events of one reversal. The id of a
    # transaction is unique only as the command side writes it: another writer of the stream
    # service may reuse it on other accounts, and then what it moved no longer sums to 0 (or
    # joins currencies). Such a reversal is refused here (409), not sent to be refused (422).
    facts = {a: AccountFacts(a, exists=True, currency=accounts[a].currency) for a in changes}
    try:
        check_reversals(decided, facts)
    except InvalidAccountEvent as exc:
        raise NotReversible(
            command.reverses,
            f"its id is on {len(changes)} accounts that make no one transaction ({exc.reason}); "
            "events of another writer reuse it: move the money back with new transactions",
        ) from None
    return decided
