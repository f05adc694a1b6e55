"""The accounting projection, pure: (the account row or None, an event) -> the new row and
the history item it adds. No I/O; the store module reads and writes the rows.

The projection is strict because balances are money: an event it cannot make sense of (an
account never opened, a gap in the stream's versions, a balance leaving the signed 64-bit
range, an unknown event type) raises `EventRejected`, and the runner halts there rather than
skip it. Fix the code or the data, then restart or rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eventledger.domain import events as ev
from eventledger.domain.events import ACCOUNT_STREAM_PREFIX, MalformedEvent, UnknownEvent
from eventledger.eventstore.codec import format_time
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.projection import EventRejected

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_AMOUNT = 2**53 - 1

Status = Literal["open", "closed"]
Kind = Literal["deposit", "withdrawal", "transfer_in", "transfer_out"]


@dataclass(frozen=True, slots=True)
class Account:
    """A row of `accounts`: the account as of the last event applied to it."""

    account_id: str
    currency: str
    balance: int
    overdraft_limit: int
    owner: str | None
    status: Status
    version: int  # the stream version of the last event applied
    opened_at: str  # RFC 3339, UTC
    opened_position: int
    updated_at: str
    position: int  # the global position of the last event applied


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """A row of `transactions`: one movement of money on one account."""

    account_id: str
    position: int
    transaction_id: str
    kind: Kind
    amount: int  # signed: negative when money left the account
    balance_after: int
    counterparty: str | None
    reference: str | None
    recorded_at: str


@dataclass(frozen=True, slots=True)
class Change:
    account: Account
    item: HistoryItem | None


def account_id_of(stream: str) -> str | None:
    """The account whose stream this is, or None for a stream this projection ignores."""
    if stream.startswith(ACCOUNT_STREAM_PREFIX) and len(stream) > len(ACCOUNT_STREAM_PREFIX):
        return stream[len(ACCOUNT_STREAM_PREFIX) :]
    return None


def decode(event: RecordedEvent) -> ev.Event:
    """The domain event, or EventRejected when its type, schema version or data is unknown."""
    try:
        return ev.decode(event.type, event.data, schema_version=event.schema_version)
    except (UnknownEvent, MalformedEvent) as exc:
        raise EventRejected(event, str(exc)) from exc


def evolve(account: Account | None, event: RecordedEvent) -> Change:
    """Apply one event of the stream `account-<id>` to that account's row."""
    account_id = account_id_of(event.stream)
    domain_event = decode(event)
    if domain_event.account_id != account_id:
        raise EventRejected(
            event, f"its account_id {domain_event.account_id!r} is not the stream's account"
        )
    at = format_time(event.recorded_at)
    if isinstance(domain_event, ev.AccountOpened):
        if account is not None:
            raise EventRejected(event, "the account is already open")
        if event.stream_version != 1:
            raise EventRejected(event, f"an account opens at version 1, not {event.stream_version}")
        return Change(
            Account(
                account_id=domain_event.account_id,
                currency=domain_event.currency,
                balance=0,
                overdraft_limit=domain_event.overdraft_limit,
                owner=domain_event.owner,
                status="open",
                version=1,
                opened_at=at,
                opened_position=event.position,
                updated_at=at,
                position=event.position,
            ),
            None,
        )
    if account is None:
        raise EventRejected(event, "the account was never opened")
    if event.stream_version != account.version + 1:
        raise EventRejected(
            event,
            f"stream version {event.stream_version} does not follow {account.version}",
        )
    kind: Kind
    other: str | None
    match domain_event:
        case ev.AccountClosed():
            return Change(_next(account, event, at, account.balance, "closed"), None)
        case ev.MoneyDeposited():
            amount, kind, other = _amount(event, domain_event.amount), "deposit", None
        case ev.MoneyWithdrawn():
            amount, kind, other = -_amount(event, domain_event.amount), "withdrawal", None
        case ev.TransferReceived():
            amount, kind = _amount(event, domain_event.amount), "transfer_in"
            other = domain_event.from_account
        case ev.TransferSent():
            amount, kind = -_amount(event, domain_event.amount), "transfer_out"
            other = domain_event.to_account
    balance = account.balance + amount
    if not INT64_MIN <= balance <= INT64_MAX:
        raise EventRejected(event, f"the balance would leave the signed 64-bit range: {balance}")
    item = HistoryItem(
        account_id=account.account_id,
        position=event.position,
        transaction_id=domain_event.transaction_id,
        kind=kind,
        amount=amount,
        balance_after=balance,
        counterparty=other,
        reference=domain_event.reference,
        recorded_at=at,
    )
    return Change(_next(account, event, at, balance, account.status), item)


def _next(account: Account, event: RecordedEvent, at: str, balance: int, status: Status) -> Account:
    # Spelled out rather than dataclasses.replace: this runs once per event, replace is slow.
    return Account(
        account_id=account.account_id,
        currency=account.currency,
        balance=balance,
        overdraft_limit=account.overdraft_limit,
        owner=account.owner,
        status=status,
        version=event.stream_version,
        opened_at=account.opened_at,
        opened_position=account.opened_position,
        updated_at=at,
        position=event.position,
    )


def _amount(event: RecordedEvent, amount: int) -> int:
    if not 1 <= amount <= MAX_AMOUNT:
        raise EventRejected(event, f"amount {amount} is outside 1..{MAX_AMOUNT}")
    return amount
