"""What makes an event a valid next event of its account's stream: the one rule that every
writer checks before it writes and every reader checks before it applies.

A reader that meets an event it cannot apply halts (balances are money: it never skips), so
whatever a reader would refuse must be refused at the door, by the same function:

* the stream service's guard refuses an append to an `account-*` stream that breaks it
  (422 `invalid-account-event`) and writes nothing (`check_batch`);
* the command side refuses to decide on a stored history that breaks it;
* both projections apply an event only when it passes (`check_event`, `check_transfers`).

The facts the rule needs of an account are few (`AccountFacts`): whether it exists, whether
it is closed, its stream version, its currency and its balance. The rules, in the order they
are checked for one event landing at `stream_version`:

1. its type and schema version are known and its data has the current shape (`decode_event`);
2. its `account_id` is the stream's, and it lands right after the facts' version;
3. `AccountOpened` only at version 1, with a valid account id, a known ISO 4217 currency, an
   overdraft limit in 0..2^53-1 and clean owner text; any other event only after it and
   never after `AccountClosed`;
4. money: transaction ids are canonical UUIDs, amounts are in 1..2^53-1, references are clean
   text, a transfer joins two different valid accounts, and the balance stays within the
   signed 64-bit range;
5. `AccountClosed` only at balance 0 (the command side's rule; readers agree, so an account
   is never closed with money on it);

and for one atomic append (`check_transfers`): a `TransferSent` comes with its matching
`TransferReceived` (same transaction id, amount and reference, the accounts each other's
counterparts, one currency), and the other way round, each transaction id at most once per
side; and (`check_reversals`) the `TransactionReversed` events of one reversal each on another
account, all reversing one transaction with one reason, their signed amounts summing to 0
when they touch several accounts (a transfer's reversal), in one currency.
Text is clean when `money.is_clean_text` says so: the same rule as the commands'.

Two-phase transfers (holds and their outcomes) follow the rules of `hold_rules`: the facts
keep each account's pending transfers, so that a post or void can only end a hold the
account really has, on its side, with the same counterparty, for at most the held amount.

Not a rule here: an overdraft. A withdrawal below -overdraft_limit is a *decision* the
command side refuses; once written it is a fact every reader can apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eventledger.domain.errors import InvalidAccountEvent, InvalidCommand
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MalformedEvent,
    MoneyDeposited,
    PersonalDataErased,
    TransactionReversed,
    TransferReceived,
    TransferSent,
    UnknownEvent,
    decode,
    references_agree,
)
from eventledger.domain.hold_rules import HOLD_EVENTS, check_hold_event, check_hold_pairs
from eventledger.domain.money import (
    MAX_AMOUNT,
    check_account_id,
    check_amount,
    check_currency,
    check_overdraft_limit,
    check_owner,
    check_reference,
    check_transaction_id,
)
from eventledger.domain.pending import PendingHold, out_of_range


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What the rule needs to know of an account after the first `version` events of its
    stream."""

    account_id: str
    exists: bool = False
    closed: bool = False
    version: int = 0
    currency: str = ""
    balance: int = 0
    # Pending two-phase transfers by transaction id, and the sums held out and in. A reader
    # keeping facts must keep these too: an outcome is only valid for a hold it knows.
    pending: Mapping[str, PendingHold] = field(default_factory=dict)
    pending_debits: int = 0
    pending_credits: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.pending_debits


def decode_event(type: str, data: object, *, schema_version: int) -> Event:
    """The domain event of an account stream, or InvalidAccountEvent when its type, schema
    version or data is not one this code knows."""
    if not isinstance(data, Mapping):
        raise InvalidAccountEvent("malformed-event", f"{type} event data is not an object")
    try:
        return decode(type, data, schema_version=schema_version)
    except UnknownEvent as exc:
        raise InvalidAccountEvent("unknown-event", str(exc)) from exc
    except MalformedEvent as exc:
        raise InvalidAccountEvent("malformed-event", str(exc)) from exc


def check_event(facts: AccountFacts, event: Event, *, stream_version: int) -> AccountFacts:
    """The facts after `event`, landing at `stream_version` of the stream of
    `facts.account_id`; InvalidAccountEvent when it is not a valid next event there."""
    name = event.TYPE
    if event.account_id != facts.account_id:
        raise InvalidAccountEvent(
            "wrong-account",
            f"{name}: account_id {event.account_id!r} is not the stream's account "
            f"{facts.account_id!r}",
        )
    if stream_version != facts.version + 1:
        raise InvalidAccountEvent(
            "version-gap",
            f"{name}: stream version {stream_version} does not follow {facts.version}",
        )
    if isinstance(event, AccountOpened):
        if facts.exists or stream_version != 1:
            raise InvalidAccountEvent(
                "opened-twice" if facts.exists else "opened-late",
                f"AccountOpened at version {stream_version}: an account opens once, as the "
                "first event of its stream",
            )
        _value(check_account_id, event.account_id, name, "account_id")
        _value(check_currency, event.currency, name, "currency")
        _value(check_overdraft_limit, event.overdraft_limit, name, "overdraft_limit")
        _value(check_owner, event.owner, name, "owner")
        return AccountFacts(event.account_id, True, False, 1, event.currency, 0)
    if not facts.exists:
        raise InvalidAccountEvent(
            "not-opened", f"{name} on account {facts.account_id!r}, which was never opened"
        )
    if isinstance(event, PersonalDataErased):  # on a closed account too: forgetting follows it
        return replace(facts, version=stream_version)
    if facts.closed:
        raise InvalidAccountEvent(
            "after-close", f"{name} on account {facts.account_id!r}, which is closed"
        )
    if isinstance(event, AccountClosed):
        if facts.balance != 0:
            raise InvalidAccountEvent(
                "balance-not-zero",
                f"AccountClosed at balance {facts.balance}: an account closes at balance 0",
            )
        if facts.pending:
            raise InvalidAccountEvent(
                "pending-transfers",
                f"AccountClosed with {len(facts.pending)} pending transfer(s): an account "
                "closes with none",
            )
        return replace(facts, closed=True, version=stream_version)
    if isinstance(event, HOLD_EVENTS):
        return check_hold_event(facts, event, stream_version)
    if isinstance(event, TransactionReversed):
        return _check_reversal(facts, event, stream_version)
    _value(check_transaction_id, event.transaction_id, name, "transaction_id")
    amount = _value(check_amount, event.amount, name, "amount")
    _value(check_reference, event.reference, name, "reference")
    if isinstance(event, TransferSent | TransferReceived):
        field, other = (
            ("to_account", event.to_account)
            if isinstance(event, TransferSent)
            else ("from_account", event.from_account)
        )
        _value(check_account_id, other, name, field)
        if other == event.account_id:
            raise InvalidAccountEvent(
                "same-account-transfer", f"{name}: a transfer needs two accounts, got {other!r}"
            )
    balance = facts.balance + (
        amount if isinstance(event, MoneyDeposited | TransferReceived) else -amount
    )
    if out_of_range(balance, facts.pending_debits, facts.pending_credits) is not None:
        raise InvalidAccountEvent(
            "balance-out-of-range",
            f"{name}: the balance would be {balance} (with its holds outside the signed "
            "64-bit range)",
        )
    # Spelled out rather than dataclasses.replace: this runs for every event a read model
    # applies or the guard checks, and replace costs more than the rest of this line of it.
    return AccountFacts(
        facts.account_id,
        facts.exists,
        facts.closed,
        stream_version,
        facts.currency,
        balance,
        facts.pending,
        facts.pending_debits,
        facts.pending_credits,
    )


def check_append(facts: AccountFacts, events: Sequence[Event]) -> AccountFacts:
    """The facts after `events` appended to the stream after `facts.version`; the error names
    the `index` of the first invalid event."""
    for index, event in enumerate(events):
        try:
            facts = check_event(facts, event, stream_version=facts.version + 1)
        except InvalidAccountEvent as exc:
            raise _at(exc, facts.account_id, index) from None
    return facts


# The events that only come in pairs within one atomic append (`check_transfers`).
PAIRED_EVENTS = (TransferSent, TransferReceived, *HOLD_EVENTS)


def check_transfers(events: Sequence[Event], facts: Mapping[str, AccountFacts]) -> None:
    """Check the transfers of one atomic append: each `TransferSent` with its matching
    `TransferReceived` and the other way round, and likewise the two sides of each hold and
    of each hold's outcome (`hold_rules.check_hold_pairs`). `facts` gives the accounts'
    currencies (accounts it does not hold are not compared). The error's `index` is into
    `events`."""
    if any(isinstance(e, HOLD_EVENTS) for e in events):
        check_hold_pairs(events, facts)
    sides: dict[str, list[int | None]] = {}  # transaction id -> [sent index, received index]
    for index, event in enumerate(events):
        if isinstance(event, TransferSent | TransferReceived):
            side = 0 if isinstance(event, TransferSent) else 1
            pair = sides.setdefault(event.transaction_id, [None, None])
            if pair[side] is not None:
                raise _at_event(
                    "transfer-twice",
                    f"{event.TYPE}: transaction {event.transaction_id} appears twice on this "
                    "side of a transfer in one append",
                    events,
                    index,
                )
            pair[side] = index
    for transaction_id, (sent_at, received_at) in sides.items():
        if sent_at is None or received_at is None:
            alone = received_at if sent_at is None else sent_at
            assert alone is not None
            missing = "TransferSent" if sent_at is None else "TransferReceived"
            raise _at_event(
                "unpaired-transfer",
                f"{events[alone].TYPE} of transaction {transaction_id} without its {missing} "
                "in the same atomic append",
                events,
                alone,
            )
        sent, received = events[sent_at], events[received_at]
        assert isinstance(sent, TransferSent) and isinstance(received, TransferReceived)
        first = min(sent_at, received_at)
        if sent.to_account != received.account_id or received.from_account != sent.account_id:
            raise _at_event(
                "transfer-mismatch",
                f"transaction {transaction_id}: TransferSent from {sent.account_id!r} to "
                f"{sent.to_account!r} but TransferReceived on {received.account_id!r} from "
                f"{received.from_account!r}",
                events,
                first,
            )
        if sent.amount != received.amount or not references_agree(
            sent.reference, received.reference
        ):
            raise _at_event(
                "transfer-mismatch",
                f"transaction {transaction_id}: the two sides differ in amount or reference",
                events,
                first,
            )
        source, target = facts.get(sent.account_id), facts.get(received.account_id)
        if source is not None and target is not None and source.currency != target.currency:
            raise _at_event(
                "currency-mismatch",
                f"transaction {transaction_id} joins an account in {source.currency} and one "
                f"in {target.currency}",
                events,
                first,
            )


def check_batch(
    facts: Mapping[str, AccountFacts], appends: Sequence[tuple[str, Sequence[Event]]]
) -> dict[str, AccountFacts]:
    """The facts after one atomic append of `(account id, events)` parts, each appended after
    `facts[account id]`; InvalidAccountEvent naming the account and the event's index in its
    part otherwise."""
    after: dict[str, AccountFacts] = {}
    flat: list[Event] = []
    places: list[tuple[str, int]] = []
    for account_id, events in appends:
        after[account_id] = check_append(facts[account_id], events)
        flat.extend(events)
        places.extend((account_id, index) for index in range(len(events)))
    if any(isinstance(e, PAIRED_EVENTS) for e in flat):
        try:
            check_transfers(flat, after)
        except InvalidAccountEvent as exc:
            assert exc.index is not None
            raise _at(exc, *places[exc.index]) from None
    if any(isinstance(e, TransactionReversed) for e in flat):
        try:
            check_reversals(flat, after)
        except InvalidAccountEvent as exc:
            assert exc.index is not None
            raise _at(exc, *places[exc.index]) from None
    return after


def _check_reversal(
    facts: AccountFacts, event: TransactionReversed, stream_version: int
) -> AccountFacts:
    name = event.TYPE
    _value(check_transaction_id, event.transaction_id, name, "transaction_id")
    _value(check_transaction_id, event.reverses, name, "reverses")
    if event.reverses == event.transaction_id:
        raise InvalidAccountEvent(
            "reverses-itself", f"{name}: transaction {event.transaction_id} reverses itself"
        )
    # Signed: the change to this account's balance, never 0, at most an amount's size.
    if not 1 <= abs(event.amount) <= MAX_AMOUNT:
        raise InvalidAccountEvent(
            "invalid-amount",
            f"{name}: amount {event.amount} is not a signed amount of 1..{MAX_AMOUNT} "
            "in either direction",
        )
    _value(check_reference, event.reference, name, "reference")
    balance = facts.balance + event.amount
    if out_of_range(balance, facts.pending_debits, facts.pending_credits) is not None:
        raise InvalidAccountEvent(
            "balance-out-of-range",
            f"{name}: the balance would be {balance}, outside the signed 64-bit range",
        )
    return replace(facts, version=stream_version, balance=balance)


def check_reversals(events: Sequence[Event], facts: Mapping[str, AccountFacts]) -> None:
    """Check the reversals of one atomic append: the `TransactionReversed` events of one
    reversal id each on another account, reversing one transaction with one reason, their
    amounts summing to 0 when there are several (money moved between accounts goes back
    between the same accounts), in one currency. `facts` gives the currencies. The error's
    `index` is into `events`."""
    groups: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        if isinstance(event, TransactionReversed):
            groups.setdefault(event.transaction_id, []).append(index)
    for transaction_id, indexes in groups.items():
        parts = [events[i] for i in indexes]
        first = parts[0]
        assert isinstance(first, TransactionReversed)
        accounts: set[str] = set()
        for index, part in zip(indexes, parts, strict=True):
            assert isinstance(part, TransactionReversed)
            if part.account_id in accounts:
                raise _at_event(
                    "reversal-twice",
                    f"reversal {transaction_id} appears twice on account {part.account_id!r}",
                    events,
                    index,
                )
            accounts.add(part.account_id)
            if part.reverses != first.reverses or not references_agree(
                part.reference, first.reference
            ):
                raise _at_event(
                    "reversal-mismatch",
                    f"reversal {transaction_id}: its events differ in what they reverse or "
                    "in their reason",
                    events,
                    index,
                )
        if len(parts) > 1:
            total = sum(p.amount for p in parts if isinstance(p, TransactionReversed))
            if total != 0:
                raise _at_event(
                    "reversal-unbalanced",
                    f"reversal {transaction_id} touches {len(parts)} accounts and its amounts "
                    f"sum to {total}, not 0",
                    events,
                    indexes[0],
                )
            currencies = {facts[a].currency for a in accounts if a in facts}
            if len(currencies) > 1:
                raise _at_event(
                    "currency-mismatch",
                    f"reversal {transaction_id} joins accounts in {sorted(currencies)}",
                    events,
                    indexes[0],
                )


def _value(check: Callable[..., Any], value: object, event_type: str, field: str) -> Any:
    # The commands' checks, so that a value a command may not carry no event carries either.
    try:
        return check(value, field=field)
    except InvalidCommand as exc:
        raise InvalidAccountEvent(exc.code, f"{event_type}: {exc.detail}") from None


def _at(exc: InvalidAccountEvent, account_id: str, index: int) -> InvalidAccountEvent:
    return InvalidAccountEvent(exc.rule, exc.reason, account_id=account_id, index=index)


def _at_event(rule: str, reason: str, events: Sequence[Event], index: int) -> InvalidAccountEvent:
    return InvalidAccountEvent(rule, reason, account_id=events[index].account_id, index=index)
