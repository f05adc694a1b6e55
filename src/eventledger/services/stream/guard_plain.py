"""The account guard's fast path: plain appends checked without domain objects. Pure.

The guard (guards.py) checks every event of an account append with the rule the readers
apply (`domain.validity`): each event decoded into a typed domain event, then `check_event`
with the account's facts, a new `AccountFacts` after each. For a bulk append (an account
opened, then a thousand deposits) that was a third of the stream service's Python time. Here
the common events are checked straight from their data, with the rule's own value checks
(`domain.plain`), the facts kept in locals and built once per append.

This path only ever *accepts*, and only a subset of what the rule accepts, with the same
facts after it (tests/unit/test_guard_plain.py checks it against the rule on many appends,
hostile ones included); anything else answers None and the guard applies the full rule,
which decides and words any refusal. An append is plain when each of its events is

* an `AccountOpened` (schema version 2) as the first event of a stream that has none, of
  the stream's account, with a valid account id, a known currency, an overdraft limit and
  owner text the rule accepts;
* or a `MoneyDeposited` or `MoneyWithdrawn` (schema version 1) on an open account that is
  not closed, of the stream's account, with a canonical transaction id, an amount of
  1..2^53-1, clean reference text, and the balance with its holds within the signed 64-bit
  range.

Transfers (which pair across an append), holds, reversals, closes and erasures take the
full rule.

    plain_events(events)          -> the events' moves, or None (checked before any read,
                                     so that a malformed event is refused as before)
    plain_facts(facts, moves)     -> the facts after them, or None
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eventledger.domain.money import INT64_MAX, INT64_MIN
from eventledger.domain.plain import OPENED, money_values, opened_currency
from eventledger.domain.validity import AccountFacts
from eventledger.eventstore.records import NewEvent

# The money events of the fast path (transfers pair across an append: the full rule).
_MONEY_TYPES = frozenset({"MoneyDeposited", "MoneyWithdrawn"})

# One event's move: (account id, signed amount, currency). An AccountOpened moves no money
# and names its currency; a money event names none ("").
Move = tuple[str, int, str]


def plain_events(events: Sequence[NewEvent]) -> list[Move] | None:
    """The moves of events that are each plain on their own (their values the rule's), or
    None. Whether they are valid where they land needs the facts: `plain_facts`."""
    moves: list[Move] = []
    for event in events:
        data: Any = event.data
        if type(data) is not dict:
            return None
        account_id = data.get("account_id")
        if type(account_id) is not str:
            return None
        if event.type in _MONEY_TYPES:
            values = money_values(event.type, event.schema_version, data)
            if values is None:
                return None
            moves.append((account_id, values[0], ""))
        elif event.type == OPENED:
            currency = opened_currency(event.schema_version, data)
            if currency is None:
                return None
            moves.append((account_id, 0, currency))
        else:
            return None
    return moves


def plain_facts(facts: AccountFacts, moves: Sequence[Move]) -> AccountFacts | None:
    """The facts after `moves` (plain_events) appended right after `facts`, when the rule
    accepts every one of them there; else None."""
    account_id = facts.account_id
    exists, version, currency = facts.exists, facts.version, facts.currency
    pending_debits, pending_credits = facts.pending_debits, facts.pending_credits
    if facts.closed or pending_debits < 0 or pending_credits < 0:
        return None
    balance = facts.balance
    # With holds of pending_debits out and pending_credits in, `out_of_range` passes exactly
    # the balances in [low, high].
    low, high = INT64_MIN + pending_debits, INT64_MAX - pending_credits
    for mover, amount, opened_in in moves:
        if mover != account_id:
            return None
        version += 1
        if opened_in:
            if exists or version != 1:
                return None
            exists, currency, balance = True, opened_in, 0
            continue
        if not exists:
            return None
        balance += amount
        if not low <= balance <= high:
            return None
    if not moves:
        return None
    pending: Mapping[str, Any] = facts.pending
    return AccountFacts(
        account_id,
        exists,
        False,
        version,
        currency,
        balance,
        pending,
        pending_debits,
        pending_credits,
    )
