"""The accounting projection, pure: (the account row or None, an event) -> the new row and
the history item it adds. No I/O; the store module reads and writes the rows.

The projection is strict because balances are money: an event that breaks the account rules
(`domain.validity`, the rule the stream service checks before it writes: an account never
opened, a gap in the stream's versions, a balance leaving the signed 64-bit range, an unknown
event type, half of a transfer...) raises `EventRejected`, and the runner halts there rather
than skip it. Fix the code or the data, then restart or rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from eventledger.domain import events as ev
from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import ACCOUNT_STREAM_PREFIX
from eventledger.domain.pending import CREDIT, DEBIT, EXPIRED, PendingHold
from eventledger.domain.validity import AccountFacts, check_event, decode_event
from eventledger.eventstore.codec import format_time
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.commits import evolve_append
from eventledger.services.readside.projection import EventRejected

Status = Literal["open", "closed"]
Kind = Literal[
    "deposit",
    "withdrawal",
    "transfer_in",
    "transfer_out",
    "transfer_pending",
    "transfer_posted",
    "transfer_voided",
    "transfer_expired",
    "reversal",
]


@dataclass(frozen=True, slots=True)
class Hold(PendingHold):
    """A row of `pending_transfers`: a two-phase transfer pending on one of its accounts
    (`side` debit on the sender's, credit on the receiver's) until it is posted, voided or
    expires. What the validity rule knows of it (`PendingHold`), and what the listing shows."""

    account_id: str
    transaction_id: str
    reference: str | None
    recorded_at: str
    position: int

    @property
    def direction(self) -> Literal["out", "in"]:
        return "out" if self.side == DEBIT else "in"


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
    pending_debits: int = 0  # held on transfers out: `available` = balance - pending_debits
    pending_credits: int = 0  # held on transfers in, not yet the account's
    # The transfers pending on the account, by transaction id (never mutated: a change makes a
    # new dict). The store loads those the page's events need (`readside.holds`): all of
    # them, or those they name, or none; the pending sums above are always whole.
    holds: Mapping[str, Hold] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return self.balance - self.pending_debits


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
    # A two-phase item's hold, signed like a transfer's amount (negative on the sender's side);
    # None on other items. `amount` stays what the balance changed: 0 for a hold or a void.
    held: int | None = None
    pending_debits_after: int = 0
    pending_credits_after: int = 0
    # Reversals, both ways: a reversal's item names the transaction it `reverses`; the item
    # of a reversed transaction is found `reversed_by` one (filled by the history query).
    reverses: str | None = None
    reversed_by: str | None = None

    @property
    def available_after(self) -> int:
        return self.balance_after - self.pending_debits_after


@dataclass(frozen=True, slots=True)
class Change:
    account: Account
    item: HistoryItem | None
    hold: Hold | None = None  # a transfer that became pending on the account
    released: str | None = None  # the transaction id of a hold that left it
    # PersonalDataErased: the store blanks the references it keeps for the account (its
    # history and pending transfers); the row's owner is blanked here.
    erased: bool = False


def account_id_of(stream: str) -> str | None:
    """The account whose stream this is, or None for a stream this projection ignores."""
    if stream.startswith(ACCOUNT_STREAM_PREFIX) and len(stream) > len(ACCOUNT_STREAM_PREFIX):
        return stream[len(ACCOUNT_STREAM_PREFIX) :]
    return None


def decode(event: RecordedEvent) -> ev.Event:
    """The domain event, or EventRejected when its type, schema version or data is unknown."""
    try:
        return decode_event(event.type, event.data, schema_version=event.schema_version)
    except InvalidAccountEvent as exc:
        raise EventRejected(event, exc.reason) from None


def facts_of(account_id: str, account: Account | None) -> AccountFacts:
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


def evolve(account: Account | None, event: RecordedEvent) -> Change:
    """Apply one event of the stream `account-<id>` to that account's row."""
    return _evolve(account, event)[0]


def evolve_commit(
    accounts: Mapping[str, Account], events: Sequence[RecordedEvent], *, whole: bool = True
) -> tuple[list[Change], EventRejected | None]:
    """Apply the events of one atomic append (other streams' events are passed over): the
    changes, and the EventRejected of the first event that breaks the rule. When the append
    is `whole`, its transfers are checked as pairs too (`readside.commits.evolve_append`)."""
    return evolve_append(
        accounts,
        events,
        account_id_of=account_id_of,
        evolve=_evolve,
        facts_of=facts_of,
        whole=whole,
    )


def _evolve(account: Account | None, event: RecordedEvent) -> tuple[Change, ev.Event]:
    account_id = account.account_id if account is not None else account_id_of(event.stream) or ""
    domain_event = decode(event)
    try:
        check_event(
            facts_of(account_id, account), domain_event, stream_version=event.stream_version
        )
    except InvalidAccountEvent as exc:
        raise EventRejected(event, exc.reason) from None
    at = time_text(event.recorded_at)
    if isinstance(domain_event, ev.AccountOpened):
        opened = Account(
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
        )
        return Change(opened, None), domain_event
    assert account is not None  # the rule: nothing before AccountOpened
    kind: Kind
    other: str | None
    match domain_event:
        case ev.AccountClosed():
            closed = _next(account, event, at, account.balance, "closed")
            return Change(closed, None), domain_event
        case ev.PersonalDataErased():
            holds = {t: replace(h, reference=None) for t, h in account.holds.items()}
            after = _next(account, event, at, account.balance, account.status, holds=holds)
            return Change(replace(after, owner=None), None, erased=True), domain_event
        case ev.MoneyDeposited():
            amount, kind, other = domain_event.amount, "deposit", None
        case ev.MoneyWithdrawn():
            amount, kind, other = -domain_event.amount, "withdrawal", None
        case ev.TransferReceived():
            amount, kind = domain_event.amount, "transfer_in"
            other = domain_event.from_account
        case ev.TransactionReversed():  # signed: the change it makes to the balance
            amount, kind, other = domain_event.amount, "reversal", None
        case ev.TransferSent():
            amount, kind = -domain_event.amount, "transfer_out"
            other = domain_event.to_account
        case (
            ev.PendingTransferSent()
            | ev.PendingTransferReceived()
            | ev.PendingTransferPosted()
            | ev.PendingTransferVoided()
        ):
            return _two_phase(account, event, at, domain_event), domain_event
    balance = account.balance + amount
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
        pending_debits_after=account.pending_debits,
        pending_credits_after=account.pending_credits,
        reverses=(
            domain_event.reverses if isinstance(domain_event, ev.TransactionReversed) else None
        ),
    )
    return Change(_next(account, event, at, balance, account.status), item), domain_event


def _two_phase(
    account: Account,
    event: RecordedEvent,
    at: str,
    domain_event: ev.PendingTransferSent
    | ev.PendingTransferReceived
    | ev.PendingTransferPosted
    | ev.PendingTransferVoided,
) -> Change:
    """A hold placed on the account, or its outcome (the validity rule has checked that an
    outcome matches a transfer pending on this account, so the hold is there)."""
    holds = dict(account.holds)
    placed: Hold | None = None
    released: str | None = None
    kind: Kind
    balance = account.balance
    transaction_id = domain_event.transaction_id
    match domain_event:
        case ev.PendingTransferSent() | ev.PendingTransferReceived():
            sent = isinstance(domain_event, ev.PendingTransferSent)
            placed = Hold(
                DEBIT if sent else CREDIT,
                domain_event.amount,
                (
                    domain_event.to_account
                    if isinstance(domain_event, ev.PendingTransferSent)
                    else domain_event.from_account
                ),
                domain_event.expires_at,
                account.account_id,
                transaction_id,
                domain_event.reference,
                at,
                event.position,
            )
            holds[transaction_id] = hold = placed
            kind, moved = "transfer_pending", 0
        case ev.PendingTransferPosted():
            hold = holds.pop(transaction_id)
            released = transaction_id
            moved = domain_event.amount if hold.side == CREDIT else -domain_event.amount
            kind = "transfer_posted"
        case ev.PendingTransferVoided():
            hold = holds.pop(transaction_id)
            released = transaction_id
            kind = "transfer_expired" if domain_event.reason == EXPIRED else "transfer_voided"
            moved = 0
    # What the hold adds to (placed) or takes from (released) the account's pending sums.
    change = hold.amount if placed is not None else -hold.amount
    debits = account.pending_debits + (change if hold.side == DEBIT else 0)
    credits = account.pending_credits + (change if hold.side == CREDIT else 0)
    balance += moved
    item = HistoryItem(
        account_id=account.account_id,
        position=event.position,
        transaction_id=transaction_id,
        kind=kind,
        amount=moved,
        balance_after=balance,
        counterparty=hold.counterparty,
        reference=hold.reference,
        recorded_at=at,
        held=-hold.amount if hold.side == DEBIT else hold.amount,
        pending_debits_after=debits,
        pending_credits_after=credits,
    )
    after = _next(account, event, at, balance, account.status, debits, credits, holds)
    return Change(after, item, placed, released)


_last_time: list[tuple[datetime, str]] = [(datetime.min, "")]


def time_text(moment: datetime) -> str:
    """`format_time`, remembering the last answer: the events of one commit share their time,
    and strftime is a good part of an event's cost (a pure memo: the same answer, faster)."""
    last = _last_time[0]
    if last[0] == moment and last[1]:
        return last[1]
    text = format_time(moment)
    _last_time[0] = (moment, text)
    return text


def _next(
    account: Account,
    event: RecordedEvent,
    at: str,
    balance: int,
    status: Status,
    pending_debits: int | None = None,
    pending_credits: int | None = None,
    holds: Mapping[str, Hold] | None = None,
) -> Account:
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
        pending_debits=account.pending_debits if pending_debits is None else pending_debits,
        pending_credits=account.pending_credits if pending_credits is None else pending_credits,
        holds=account.holds if holds is None else holds,
    )
