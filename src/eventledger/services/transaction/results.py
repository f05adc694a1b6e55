"""What a command answers: one frozen result per kind of command, with its JSON body.

A result is built in one of two ways that must agree to the byte: from the events a command
has just written (`result_of`), or from the log when a request with the same Idempotency-Key
comes again (`replays`). `replayed` tells them apart; it is not part of the body.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from eventledger.domain.account import Account
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
)
from eventledger.services.transaction.two_phase_results import HoldResult, OutcomeResult


@dataclass(frozen=True, slots=True)
class AccountOpenedResult:
    account_id: str
    currency: str
    overdraft_limit: int
    owner: str | None
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "currency": self.currency,
            "overdraft_limit": self.overdraft_limit,
            "owner": self.owner,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class MoneyMovedResult:
    transaction_id: str
    account_id: str
    amount: int
    balance: int
    available: int
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "account_id": self.account_id,
            "amount": self.amount,
            "balance": self.balance,
            "available": self.available,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class TransferResult:
    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    from_balance: int
    from_available: int
    to_balance: int
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "from_account": self.from_account,
            "to_account": self.to_account,
            "amount": self.amount,
            "from_balance": self.from_balance,
            "from_available": self.from_available,
            "to_balance": self.to_balance,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class AccountClosedResult:
    account_id: str
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "status": "closed", "position": self.position}


@dataclass(frozen=True, slots=True)
class ReversedAccount:
    """One account a reversal changed: by `amount` (signed), leaving `balance`."""

    account_id: str
    amount: int
    balance: int


@dataclass(frozen=True, slots=True)
class ReversalResult:
    transaction_id: str
    reverses: str
    reference: str | None
    accounts: tuple[ReversedAccount, ...]
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "reverses": self.reverses,
            "reference": self.reference,
            "accounts": [
                {"account_id": a.account_id, "amount": a.amount, "balance": a.balance}
                for a in self.accounts
            ],
            "position": self.position,
        }


Result = (
    AccountOpenedResult
    | MoneyMovedResult
    | TransferResult
    | AccountClosedResult
    | ReversalResult
    | HoldResult
    | OutcomeResult
)


def result_of(event: Event, after: Account, position: int) -> Result:
    """The answer to a one-account command whose last event is `event`, leaving `after`."""
    match event:
        case AccountOpened():
            return AccountOpenedResult(
                account_id=event.account_id,
                currency=event.currency,
                overdraft_limit=event.overdraft_limit,
                owner=event.owner,
                position=position,
            )
        case MoneyDeposited() | MoneyWithdrawn():
            return MoneyMovedResult(
                transaction_id=event.transaction_id,
                account_id=event.account_id,
                amount=event.amount,
                balance=after.balance,
                available=after.available,
                position=position,
            )
        case AccountClosed():
            return AccountClosedResult(account_id=event.account_id, position=position)
        case _:
            raise TypeError(f"no one-account result for {type(event).__name__}")


def _replayed(result: Result) -> Result:
    return replace(result, replayed=True)


def as_replayed(result: Result) -> Result:
    return replace(result, replayed=True)
