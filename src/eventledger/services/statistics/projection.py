"""The statistics projection, pure: (what it knows of the account, an event) -> what the event
adds to its currency's counters and to that day's. No I/O; `store` reads and writes the rows.

A transfer is counted once, on its `TransferSent` side (both sides are in one currency); its
`TransferReceived` side only moves the receiver's balance. Counters of money are unbounded
ints: a volume may exceed 64 bits after enough large movements, so they are never capped.
Like the accounting projection, an event it cannot make sense of raises `EventRejected`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from eventledger.domain import events as ev
from eventledger.domain.events import ACCOUNT_STREAM_PREFIX, MalformedEvent, UnknownEvent
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.projection import EventRejected

MAX_AMOUNT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class StatsAccount:
    """What the statistics need to remember of one account."""

    account_id: str
    currency: str
    status: Literal["open", "closed"]
    version: int


@dataclass(frozen=True, slots=True)
class Tally:
    """Counters of one currency, overall or on one day. `balance` is the net flow of money
    (overall: the total balance); accounts open = `opened` - `closed`."""

    opened: int = 0
    closed: int = 0
    balance: int = 0
    deposits_count: int = 0
    deposits_volume: int = 0
    withdrawals_count: int = 0
    withdrawals_volume: int = 0
    transfers_count: int = 0
    transfers_volume: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.opened + other.opened,
            self.closed + other.closed,
            self.balance + other.balance,
            self.deposits_count + other.deposits_count,
            self.deposits_volume + other.deposits_volume,
            self.withdrawals_count + other.withdrawals_count,
            self.withdrawals_volume + other.withdrawals_volume,
            self.transfers_count + other.transfers_count,
            self.transfers_volume + other.transfers_volume,
        )


TALLY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Tally))


@dataclass(frozen=True, slots=True)
class StatsChange:
    account: StatsAccount
    currency: str
    day: str  # the UTC day of `recorded_at`, YYYY-MM-DD
    delta: Tally


def account_id_of(stream: str) -> str | None:
    """The account whose stream this is, or None for a stream the statistics ignore."""
    if stream.startswith(ACCOUNT_STREAM_PREFIX) and len(stream) > len(ACCOUNT_STREAM_PREFIX):
        return stream[len(ACCOUNT_STREAM_PREFIX) :]
    return None


def evolve(account: StatsAccount | None, event: RecordedEvent) -> StatsChange:
    """Apply one event of the stream `account-<id>`."""
    account_id = account_id_of(event.stream)
    try:
        domain_event = ev.decode(event.type, event.data, schema_version=event.schema_version)
    except (UnknownEvent, MalformedEvent) as exc:
        raise EventRejected(event, str(exc)) from exc
    if domain_event.account_id != account_id:
        raise EventRejected(
            event, f"its account_id {domain_event.account_id!r} is not the stream's account"
        )
    day = event.recorded_at.date().isoformat()
    if isinstance(domain_event, ev.AccountOpened):
        if account is not None or event.stream_version != 1:
            raise EventRejected(event, "the account is already open")
        opened = StatsAccount(account_id, domain_event.currency, "open", 1)
        return StatsChange(opened, opened.currency, day, Tally(opened=1))
    if account is None:
        raise EventRejected(event, "the account was never opened")
    if event.stream_version != account.version + 1:
        raise EventRejected(
            event, f"stream version {event.stream_version} does not follow {account.version}"
        )
    moved = StatsAccount(account.account_id, account.currency, account.status, event.stream_version)
    delta: Tally
    match domain_event:
        case ev.AccountClosed():
            # Closing twice changes nothing (the accounting projection agrees).
            delta = Tally(closed=1) if account.status == "open" else Tally()
            closed = StatsAccount(account.account_id, account.currency, "closed", moved.version)
            return StatsChange(closed, account.currency, day, delta)
        case ev.MoneyDeposited(amount=amount):
            amount = _amount(event, amount)
            delta = Tally(balance=amount, deposits_count=1, deposits_volume=amount)
        case ev.MoneyWithdrawn(amount=amount):
            amount = _amount(event, amount)
            delta = Tally(balance=-amount, withdrawals_count=1, withdrawals_volume=amount)
        case ev.TransferSent(amount=amount):
            amount = _amount(event, amount)
            delta = Tally(balance=-amount, transfers_count=1, transfers_volume=amount)
        case ev.TransferReceived(amount=amount):
            delta = Tally(balance=_amount(event, amount))
    return StatsChange(moved, account.currency, day, delta)


def _amount(event: RecordedEvent, amount: int) -> int:
    if not 1 <= amount <= MAX_AMOUNT:
        raise EventRejected(event, f"amount {amount} is outside 1..{MAX_AMOUNT}")
    return amount
