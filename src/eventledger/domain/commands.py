"""What a client asks of an account: imperative, plain values, not yet validated.

Ids come in with the command (the domain generates none). The values are checked by
`account.decide` / `account.decide_transfer`, which is why they are typed loosely at
runtime: a command built from a request may hold a bool or a float where an int belongs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from eventledger.domain.errors import InvalidCommand, InvalidExpiry, SameAccountTransfer
from eventledger.domain.money import (
    check_account_id,
    check_amount,
    check_currency,
    check_overdraft_limit,
    check_owner,
    check_reference,
    check_transaction_id,
)
from eventledger.domain.pending import check_expires_at, parse_time


@dataclass(frozen=True, slots=True)
class OpenAccount:
    """Open an account in one currency, with an overdraft limit in minor units (0: none)."""

    account_id: str
    currency: str
    overdraft_limit: int = 0
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Deposit:
    """Put money into an account from outside the ledger."""

    account_id: str
    transaction_id: str
    amount: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Take money out of an account, down to -overdraft_limit at most."""

    account_id: str
    transaction_id: str
    amount: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move money between two accounts of the same currency, atomically. With `pending`,
    only place a hold (phase one of a two-phase transfer), voided at `expires_at` (RFC 3339
    UTC, computed by the service from its clock; None: no timeout) unless posted first."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    reference: str | None = None
    pending: bool = False
    expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class PostPendingTransfer:
    """Complete a pending transfer: move `amount` of the held amount (None: all of it) and
    release the rest. `now` (the service's clock, RFC 3339 UTC) refuses a hold already due."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: int | None = None
    now: str | None = None


@dataclass(frozen=True, slots=True)
class VoidPendingTransfer:
    """Release a pending transfer without moving money (reason "voided")."""

    transaction_id: str
    from_account: str
    to_account: str
    now: str | None = None


@dataclass(frozen=True, slots=True)
class ExpirePendingTransfer:
    """Release a pending transfer whose `expires_at` is at or before `now` (reason
    "expired"); decided only then."""

    transaction_id: str
    from_account: str
    to_account: str
    now: str


@dataclass(frozen=True, slots=True)
class CloseAccount:
    """Close an account whose balance is exactly zero."""

    account_id: str


Command: TypeAlias = OpenAccount | Deposit | Withdraw | Transfer | CloseAccount
HoldOutcome: TypeAlias = PostPendingTransfer | VoidPendingTransfer | ExpirePendingTransfer


def validate(command: Command | HoldOutcome) -> None:
    """Check every value of a command, before any state is loaded; raise InvalidCommand
    (or SameAccountTransfer) for the first bad one, in field order."""
    match command:
        case OpenAccount():
            check_account_id(command.account_id)
            check_currency(command.currency)
            check_overdraft_limit(command.overdraft_limit)
            check_owner(command.owner)
        case Deposit() | Withdraw():
            check_account_id(command.account_id)
            check_transaction_id(command.transaction_id)
            check_amount(command.amount)
            check_reference(command.reference)
        case Transfer():
            # Before anything else: a transfer to itself is refused whatever the accounts.
            if command.from_account == command.to_account:
                raise SameAccountTransfer(command.from_account)
            check_transaction_id(command.transaction_id)
            check_account_id(command.from_account, field="from_account")
            check_account_id(command.to_account, field="to_account")
            check_amount(command.amount)
            check_reference(command.reference)
            if command.pending is not True and command.pending is not False:
                raise InvalidCommand("pending must be true or false", field="pending")
            check_expires_at(command.expires_at)
            if command.expires_at is not None and not command.pending:
                raise InvalidExpiry("only a pending transfer expires", field="expires_at")
        case PostPendingTransfer() | VoidPendingTransfer() | ExpirePendingTransfer():
            _validate_outcome(command)
        case CloseAccount():
            check_account_id(command.account_id)
        case _:
            raise TypeError(f"not a command: {command!r}")


def _validate_outcome(command: HoldOutcome) -> None:
    check_transaction_id(command.transaction_id)
    check_account_id(command.from_account, field="from_account")
    check_account_id(command.to_account, field="to_account")
    if command.from_account == command.to_account:
        raise SameAccountTransfer(command.from_account)
    if isinstance(command, PostPendingTransfer) and command.amount is not None:
        check_amount(command.amount)
    # `now` is the service's clock, not a client's value: a bad one is a bug, said loudly.
    if command.now is not None:
        parse_time(command.now)
