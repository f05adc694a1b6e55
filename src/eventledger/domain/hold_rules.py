"""The validity rule for the events of two-phase transfers (part of `validity`, which calls
it): what makes a hold or its outcome a valid next event of an account's stream, and a
valid part of one atomic append.

For one event, on the facts of its account (`AccountFacts.pending` holds the account's
pending transfers by transaction id):

* `PendingTransferSent` / `PendingTransferReceived`: a canonical transaction id not already
  pending on this account, an amount in 1..2^53-1, clean reference text, another valid
  account as counterparty, `expires_at` None or RFC 3339 UTC; the balance less every hold
  going out, and plus every hold coming in, stays within the signed 64-bit range;
* `PendingTransferPosted` / `PendingTransferVoided`: the account is one of its two accounts,
  and holds that transaction pending, on its side (the sender's debit, the receiver's
  credit), with the other account as counterparty; a post moves 1..the held amount, a void
  releases exactly the held amount with reason "voided" or "expired" (the latter only for a
  hold that had an expiry); the balance stays in range.

For one atomic append (`check_hold_pairs`): a hold is its two events (sender's and
receiver's, the same transaction id, amount, reference and expiry, each other's
counterparts, one currency), an outcome is its two events (one on each account, the same
accounts, amount and reason), each transaction id once per side and kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias

from eventledger.domain.errors import InvalidAccountEvent, InvalidCommand
from eventledger.domain.events import (
    Event,
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
    references_agree,
)
from eventledger.domain.money import (
    check_account_id,
    check_amount,
    check_reference,
    check_transaction_id,
)
from eventledger.domain.pending import (
    CREDIT,
    DEBIT,
    EXPIRED,
    VOID_REASONS,
    PendingHold,
    check_expires_at,
    out_of_range,
    with_hold,
    without_hold,
)

if TYPE_CHECKING:  # validity imports this module: no cycle at run time
    from eventledger.domain.validity import AccountFacts

HoldEvent: TypeAlias = (
    PendingTransferSent | PendingTransferReceived | PendingTransferPosted | PendingTransferVoided
)
HOLD_EVENTS = (
    PendingTransferSent,
    PendingTransferReceived,
    PendingTransferPosted,
    PendingTransferVoided,
)


def check_hold_event(facts: AccountFacts, event: HoldEvent, stream_version: int) -> AccountFacts:
    """The facts after a hold event on an open account (the caller checked the account, its
    stream and version); InvalidAccountEvent when it breaks the rule."""
    name = event.TYPE
    _value(check_transaction_id, event.transaction_id, name, "transaction_id")
    if isinstance(event, PendingTransferSent | PendingTransferReceived):
        return _placed(facts, event, stream_version)
    return _ended(facts, event, stream_version)


def _placed(
    facts: AccountFacts,
    event: PendingTransferSent | PendingTransferReceived,
    stream_version: int,
) -> AccountFacts:
    name = event.TYPE
    amount = _value(check_amount, event.amount, name, "amount")
    _value(check_reference, event.reference, name, "reference")
    _value(check_expires_at, event.expires_at, name, "expires_at")
    if isinstance(event, PendingTransferSent):
        sent, field, other = True, "to_account", event.to_account
    else:
        sent, field, other = False, "from_account", event.from_account
    _value(check_account_id, other, name, field)
    if other == event.account_id:
        raise InvalidAccountEvent(
            "same-account-transfer", f"{name}: a transfer needs two accounts, got {other!r}"
        )
    if event.transaction_id in facts.pending:
        raise InvalidAccountEvent(
            "hold-twice",
            f"{name}: transfer {event.transaction_id} is already pending on account "
            f"{facts.account_id!r}",
        )
    debits = facts.pending_debits + (amount if sent else 0)
    credits = facts.pending_credits + (0 if sent else amount)
    _in_range(name, facts.balance, debits, credits)
    hold = PendingHold(DEBIT if sent else CREDIT, amount, other, event.expires_at)
    return replace(
        facts,
        version=stream_version,
        pending=with_hold(facts.pending, event.transaction_id, hold),
        pending_debits=debits,
        pending_credits=credits,
    )


def _ended(
    facts: AccountFacts,
    event: PendingTransferPosted | PendingTransferVoided,
    stream_version: int,
) -> AccountFacts:
    name = event.TYPE
    _value(check_account_id, event.from_account, name, "from_account")
    _value(check_account_id, event.to_account, name, "to_account")
    amount = _value(check_amount, event.amount, name, "amount")
    if event.from_account == event.to_account:
        raise InvalidAccountEvent(
            "same-account-transfer",
            f"{name}: a transfer needs two accounts, got {event.from_account!r}",
        )
    if facts.account_id not in (event.from_account, event.to_account):
        raise InvalidAccountEvent(
            "transfer-mismatch",
            f"{name}: account {facts.account_id!r} is not a party to the transfer from "
            f"{event.from_account!r} to {event.to_account!r}",
        )
    hold = facts.pending.get(event.transaction_id)
    if hold is None:
        raise InvalidAccountEvent(
            "transfer-not-pending",
            f"{name}: account {facts.account_id!r} holds no pending transfer "
            f"{event.transaction_id}",
        )
    sender = facts.account_id == event.from_account
    side, counterparty = (DEBIT, event.to_account) if sender else (CREDIT, event.from_account)
    if hold.side != side or hold.counterparty != counterparty:
        raise InvalidAccountEvent(
            "transfer-mismatch",
            f"{name}: the pending transfer {event.transaction_id} of account "
            f"{facts.account_id!r} is a {hold.side} with {hold.counterparty!r}, not a {side} "
            f"with {counterparty!r}",
        )
    if isinstance(event, PendingTransferPosted):
        if amount > hold.amount:
            raise InvalidAccountEvent(
                "amount-exceeds-hold",
                f"{name}: {amount} posted from a hold of {hold.amount}",
            )
        moved = amount
    else:
        if amount != hold.amount:
            raise InvalidAccountEvent(
                "transfer-mismatch",
                f"{name}: releases {amount}, but the hold is of {hold.amount}",
            )
        if event.reason not in VOID_REASONS:
            raise InvalidAccountEvent(
                "invalid-reason",
                f"{name}: reason {event.reason!r}"[:200] + f" is not one of {sorted(VOID_REASONS)}",
            )
        if event.reason == EXPIRED and hold.expires_at is None:
            raise InvalidAccountEvent(
                "never-expires", f"{name}: transfer {event.transaction_id} has no expiry"
            )
        moved = 0
    balance = facts.balance + (-moved if sender else moved)
    debits = facts.pending_debits - (hold.amount if sender else 0)
    credits = facts.pending_credits - (0 if sender else hold.amount)
    _in_range(name, balance, debits, credits)
    return replace(
        facts,
        version=stream_version,
        balance=balance,
        pending=without_hold(facts.pending, event.transaction_id),
        pending_debits=debits,
        pending_credits=credits,
    )


def check_hold_pairs(events: Sequence[Event], facts: Mapping[str, AccountFacts]) -> None:
    """Check the holds and outcomes of one atomic append come in matching pairs. `facts`
    gives the accounts' currencies (accounts it does not hold are not compared). The
    error's `index` is into `events`."""
    # (kind, transaction id) -> [sender's index, receiver's index]
    pairs: dict[tuple[str, str], list[int | None]] = {}
    for index, event in enumerate(events):
        if not isinstance(event, HOLD_EVENTS):
            continue
        if isinstance(event, PendingTransferSent | PendingTransferReceived):
            kind, side = "hold", 0 if isinstance(event, PendingTransferSent) else 1
        else:
            kind = event.TYPE
            side = 0 if event.account_id == event.from_account else 1
        pair = pairs.setdefault((kind, event.transaction_id), [None, None])
        if pair[side] is not None:
            raise _at_event(
                "transfer-twice",
                f"{event.TYPE}: transfer {event.transaction_id} appears twice on one side in "
                "one append",
                events,
                index,
            )
        pair[side] = index
    for (kind, transaction_id), (first_at, second_at) in pairs.items():
        if first_at is None or second_at is None:
            alone = second_at if first_at is None else first_at
            assert alone is not None
            raise _at_event(
                "unpaired-transfer",
                f"{events[alone].TYPE} of transfer {transaction_id} without its other side in "
                "the same atomic append",
                events,
                alone,
            )
        first, second = events[first_at], events[second_at]
        if not _match(first, second):
            raise _at_event(
                "transfer-mismatch",
                f"transfer {transaction_id}: the two sides of its {kind} differ",
                events,
                min(first_at, second_at),
            )
        source, target = facts.get(first.account_id), facts.get(second.account_id)
        if source is not None and target is not None and source.currency != target.currency:
            raise _at_event(
                "currency-mismatch",
                f"transfer {transaction_id} joins an account in {source.currency} and one in "
                f"{target.currency}",
                events,
                min(first_at, second_at),
            )


def _match(first: Event, second: Event) -> bool:
    """The sender's event and the receiver's of one hold or outcome agree."""
    if isinstance(first, PendingTransferSent) and isinstance(second, PendingTransferReceived):
        return (
            first.to_account == second.account_id
            and second.from_account == first.account_id
            and first.amount == second.amount
            and references_agree(first.reference, second.reference)
            and first.expires_at == second.expires_at
        )
    if isinstance(first, PendingTransferPosted | PendingTransferVoided) and type(first) is type(
        second
    ):
        assert isinstance(second, PendingTransferPosted | PendingTransferVoided)
        same = (
            first.from_account == second.from_account
            and first.to_account == second.to_account
            and first.amount == second.amount
            and second.account_id == second.to_account
        )
        if isinstance(first, PendingTransferVoided):
            assert isinstance(second, PendingTransferVoided)
            same = same and first.reason == second.reason
        return same
    return False


def _in_range(name: str, balance: int, debits: int, credits: int) -> None:
    bad = out_of_range(balance, debits, credits)
    if bad is not None:
        raise InvalidAccountEvent(
            "balance-out-of-range",
            f"{name}: the balance (with its holds) would be {bad}, outside the signed 64-bit range",
        )


def _value(check: Callable[..., Any], value: object, event_type: str, field: str) -> Any:
    # The commands' checks, so that a value a command may not carry no event carries either.
    try:
        return check(value, field=field)
    except InvalidCommand as exc:
        raise InvalidAccountEvent(exc.code, f"{event_type}: {exc.detail}") from None


def _at_event(rule: str, reason: str, events: Sequence[Event], index: int) -> InvalidAccountEvent:
    return InvalidAccountEvent(rule, reason, account_id=events[index].account_id, index=index)
