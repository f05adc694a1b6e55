"""The statistics projection, pure: (what it knows of the account, an event) -> what the event
adds to its currency's counters and to that day's. No I/O; `store` reads and writes the rows.

A transfer is counted once, on its `TransferSent` side (both sides are in one currency); its
`TransferReceived` side only moves the receiver's balance. Counters of money are unbounded
ints: a volume may exceed 64 bits after enough large movements, so they are never capped.
Like the accounting projection, an event that breaks the account rules (`domain.validity`,
which the stream service checks before it writes) raises `EventRejected`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Literal

from eventledger.domain import events as ev
from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import ACCOUNT_STREAM_PREFIX
from eventledger.domain.pending import DEBIT, EXPIRED, PendingHold
from eventledger.domain.validity import AccountFacts, check_event, decode_event
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.commits import evolve_append
from eventledger.services.readside.projection import EventRejected


@dataclass(frozen=True, slots=True)
class StatsAccount:
    """What the statistics need to remember of one account: what the validity rule needs
    (its balance too, so that both read models agree on the signed 64-bit range)."""

    account_id: str
    currency: str
    status: Literal["open", "closed"]
    version: int
    balance: int = 0
    pending_debits: int = 0
    pending_credits: int = 0
    # The transfers pending on the account by transaction id (never mutated; the store loads
    # those the page's events need, `readside.holds`): an outcome must match one, and it
    # says the held amount.
    holds: Mapping[str, PendingHold] = field(default_factory=dict)


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
    # Two-phase transfers, counted once (on the sender's side) like transfers: holds placed;
    # pending = placed - (posted + voided + expired), the held amount; posted with the amount
    # that moved (a partial post releases the rest); voided and expired with the held amount.
    holds_count: int = 0
    holds_volume: int = 0
    pending_count: int = 0
    pending_volume: int = 0
    posted_count: int = 0
    posted_volume: int = 0
    voided_count: int = 0
    voided_volume: int = 0
    expired_count: int = 0
    expired_volume: int = 0
    # Reversals, counted once each (a transfer's has two events: `evolve_commit` counts the
    # first), with the amount moved back.
    reversals_count: int = 0
    reversals_volume: int = 0

    def __add__(self, other: Tally) -> Tally:
        return total((self, other))


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


def facts_of(account_id: str, account: StatsAccount | None) -> AccountFacts:
    """What the validity rule needs of an account, from its row (None: never opened)."""
    if account is None:
        return AccountFacts(account_id)
    return AccountFacts(
        account_id,
        True,
        account.status == "closed",
        account.version,
        account.currency,
        account.balance,
        account.holds,
        account.pending_debits,
        account.pending_credits,
    )


def evolve(account: StatsAccount | None, event: RecordedEvent) -> StatsChange:
    """Apply one event of the stream `account-<id>`."""
    return _evolve(account, event)[0]


def evolve_commit(
    accounts: Mapping[str, StatsAccount], events: Sequence[RecordedEvent], *, whole: bool = True
) -> tuple[list[StatsChange], EventRejected | None]:
    """Apply the events of one atomic append (other streams' events are passed over): the
    changes, and the EventRejected of the first event that breaks the rule. When the append
    is `whole`, its transfers are checked as pairs too (`readside.commits.evolve_append`)."""
    changes, rejected = evolve_append(
        accounts,
        events,
        account_id_of=account_id_of,
        evolve=_evolve,
        facts_of=facts_of,
        whole=whole,
    )
    return _once_per_reversal(events, changes), rejected


def _once_per_reversal(
    events: Sequence[RecordedEvent], changes: list[StatsChange]
) -> list[StatsChange]:
    """The changes with each reversal counted on its first event only (the events of one
    reversal are written in one atomic append, which this call has whole)."""
    if not any(e.type == ev.TransactionReversed.TYPE for e in events):
        return changes
    seen: set[object] = set()
    account_events = (e for e in events if account_id_of(e.stream) is not None)
    out = []
    for event, change in zip(account_events, changes, strict=False):
        if event.type == ev.TransactionReversed.TYPE:
            reversal = event.data.get("transaction_id")
            if reversal in seen:
                delta = replace(change.delta, reversals_count=0, reversals_volume=0)
                change = replace(change, delta=delta)
            seen.add(reversal)
        out.append(change)
    return out


def total(deltas: Sequence[Tally]) -> Tally:
    """The sum of `deltas`, field by field (one Tally built, not one per addition). Spelled
    out: twice as fast as a loop over the fields, and this runs for every page."""
    if len(deltas) == 1:
        return deltas[0]
    return Tally(
        sum(d.opened for d in deltas),
        sum(d.closed for d in deltas),
        sum(d.balance for d in deltas),
        sum(d.deposits_count for d in deltas),
        sum(d.deposits_volume for d in deltas),
        sum(d.withdrawals_count for d in deltas),
        sum(d.withdrawals_volume for d in deltas),
        sum(d.transfers_count for d in deltas),
        sum(d.transfers_volume for d in deltas),
        sum(d.holds_count for d in deltas),
        sum(d.holds_volume for d in deltas),
        sum(d.pending_count for d in deltas),
        sum(d.pending_volume for d in deltas),
        sum(d.posted_count for d in deltas),
        sum(d.posted_volume for d in deltas),
        sum(d.voided_count for d in deltas),
        sum(d.voided_volume for d in deltas),
        sum(d.expired_count for d in deltas),
        sum(d.expired_volume for d in deltas),
        sum(d.reversals_count for d in deltas),
        sum(d.reversals_volume for d in deltas),
    )


_last_day: list[tuple[datetime, str]] = [(datetime.min, "")]


def day_of(moment: datetime) -> str:
    """The UTC day of `moment`, remembering the last answer: the events of one commit share
    their time (a pure memo: the same answer, faster)."""
    last = _last_day[0]
    if last[0] == moment and last[1]:
        return last[1]
    day = moment.date().isoformat()
    _last_day[0] = (moment, day)
    return day


def _evolve(account: StatsAccount | None, event: RecordedEvent) -> tuple[StatsChange, ev.Event]:
    account_id = account.account_id if account is not None else account_id_of(event.stream) or ""
    try:
        domain_event = decode_event(event.type, event.data, schema_version=event.schema_version)
        facts = check_event(
            facts_of(account_id, account), domain_event, stream_version=event.stream_version
        )
    except InvalidAccountEvent as exc:
        raise EventRejected(event, exc.reason) from None
    day = day_of(event.recorded_at)
    after = StatsAccount(
        account_id,
        facts.currency,
        "closed" if facts.closed else "open",
        facts.version,
        facts.balance,
        facts.pending_debits,
        facts.pending_credits,
        facts.pending,
    )
    delta: Tally
    match domain_event:
        case ev.AccountOpened():
            delta = Tally(opened=1)
        case ev.AccountClosed():
            delta = Tally(closed=1)
        case ev.MoneyDeposited(amount=amount):
            delta = Tally(balance=amount, deposits_count=1, deposits_volume=amount)
        case ev.MoneyWithdrawn(amount=amount):
            delta = Tally(balance=-amount, withdrawals_count=1, withdrawals_volume=amount)
        case ev.TransferSent(amount=amount):
            delta = Tally(balance=-amount, transfers_count=1, transfers_volume=amount)
        case ev.TransferReceived(amount=amount):
            delta = Tally(balance=amount)
        case ev.TransactionReversed(amount=amount):
            delta = Tally(balance=amount, reversals_count=1, reversals_volume=abs(amount))
        case ev.PendingTransferSent(amount=amount):
            delta = Tally(
                holds_count=1, holds_volume=amount, pending_count=1, pending_volume=amount
            )
        case ev.PendingTransferReceived() | ev.PersonalDataErased():  # no money moves
            delta = Tally()
        case ev.PendingTransferPosted(amount=amount):
            delta = _settled(account, domain_event, posted_count=1, posted_volume=amount)
        case ev.PendingTransferVoided(amount=amount, reason=reason) if reason == EXPIRED:
            delta = _settled(account, domain_event, expired_count=1, expired_volume=amount)
        case ev.PendingTransferVoided(amount=amount):
            delta = _settled(account, domain_event, voided_count=1, voided_volume=amount)
    return StatsChange(after, after.currency, day, delta), domain_event


def _settled(
    account: StatsAccount | None,
    event: ev.PendingTransferPosted | ev.PendingTransferVoided,
    **outcome: int,
) -> Tally:
    """What the outcome of a hold adds, on one side. The sender's side counts it (`outcome`):
    one transfer less pending, by its held amount, and a post takes the posted amount from
    the balance; the receiver's side only gains what a post moved."""
    assert account is not None  # the rule: an outcome ends a hold pending on this account
    hold = account.holds[event.transaction_id]
    posted = event.amount if isinstance(event, ev.PendingTransferPosted) else 0
    if hold.side == DEBIT:
        return Tally(balance=-posted, pending_count=-1, pending_volume=-hold.amount, **outcome)
    return Tally(balance=posted)
