"""The plain events of the log folded without domain objects, for the projections catching up:
pure, no I/O.

Most of a ledger's log is deposits, withdrawals and transfers. Applied by the full rule
(`domain.validity`: a typed event decoded, `check_event` with its facts, `check_transfers` on
the append) each costs ~10 Python objects; catching up, that was most of a read model's time
(docs/catchup-performance.md). `fold_plain` takes one atomic append and, when every event of
it is plain and plainly valid, moves the accounts' `Live` state past it and gives its `Move`s
(plain values); otherwise it returns None, leaves the state as it was, and the projection
applies the append by the full rule, which decides and words any refusal.

So this module only ever *accepts*, and only a subset of what the rule accepts, with the
same result (tests/unit/test_plain_fold.py checks it against the rule, hostile events
included). An append is plain when it is whole and each of its events is

* an `AccountOpened` (schema version 2) of an account never opened, at version 1, with the
  stream's valid account id, a known currency, an overdraft limit and owner text the rule
  accepts;
* or a `MoneyDeposited`, `MoneyWithdrawn`, `TransferSent` or `TransferReceived` (schema
  version 1) on an open account, right after its version, with the stream's account id, a
  canonical transaction id, an amount of 1..2^53-1, clean reference text, for a transfer a
  valid other account that is not its own, and the balance with its holds within the signed
  64-bit range;

and its transfers are pairs (each transaction id once per side, both sides there, each the
other's counterpart, one amount, references agreeing, one currency). Values are checked by
the rule's own functions (`domain.money`). The bulk appends of a catch-up (an account opened
then a thousand deposits) and the usual traffic (deposits, withdrawals, transfers) are plain;
holds, reversals, closes and erasures take the full rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from eventledger.domain.events import ACCOUNT_STREAM_PREFIX
from eventledger.domain.plain import OPENED, money_move, opened_currency
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.commits import commit_groups
from eventledger.services.readside.projection import EventRejected

__all__ = ["OPENED", "Live", "Move", "fold_page", "fold_plain"]
_PREFIX = len(ACCOUNT_STREAM_PREFIX)


@dataclass(slots=True)
class Live:
    """What the rule needs of an account, mutable: a projection's working copy while it folds
    a page (`version` and `balance` move; the rest is constant for plain events)."""

    version: int
    balance: int
    pending_debits: int
    pending_credits: int
    currency: str
    closed: bool = False

    def copy(self) -> Live:
        return Live(
            self.version,
            self.balance,
            self.pending_debits,
            self.pending_credits,
            self.currency,
            self.closed,
        )

    @classmethod
    def of(cls, account: AccountRow) -> Live:
        """The working copy of a read model's account row."""
        return cls(
            account.version,
            account.balance,
            account.pending_debits,
            account.pending_credits,
            account.currency,
            account.status == "closed",
        )


class AccountRow(Protocol):
    """What both read models keep of an account and `Live.of` reads."""

    @property
    def version(self) -> int: ...
    @property
    def balance(self) -> int: ...
    @property
    def pending_debits(self) -> int: ...
    @property
    def pending_credits(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def status(self) -> str: ...


# What a plain event does: (account id, event, signed amount, the other account or None,
# transaction id, reference, balance after). An AccountOpened: (id, event, 0, None, "", None,
# 0); its values are in its data, checked.
Move = tuple[str, RecordedEvent, int, str | None, str, str | None, int]


def fold_page(
    events: Sequence[RecordedEvent],
    live: dict[str, Live],
    *,
    plain: Callable[[list[Move]], object],
    full: Callable[[Sequence[RecordedEvent], bool], EventRejected | None],
) -> EventRejected | None:
    """A page, one atomic append at a time: `plain(moves)` for each plain one (`live` moved
    past it), `full(group, whole)` for any other, which applies it by the full rule (and
    brings `live` up to date); the first rejection `full` returns ends the page. `live` holds
    every account of the page's streams that exists."""
    for group, whole in commit_groups(events):
        if whole:
            moves = fold_plain(group, live)
            if moves is not None:
                plain(moves)
                continue
        rejected = full(group, whole)
        if rejected is not None:
            return rejected
    return None


def fold_plain(group: Sequence[RecordedEvent], live: dict[str, Live]) -> list[Move] | None:
    """The moves of one whole atomic append when it is plain (see the module docstring), with
    `live` moved past it; else None and `live` unchanged. `live` must hold every account of
    the append's streams that exists (an account not in it was never opened)."""
    states: dict[str, Live] = {}  # this append's working copies, written back if it is plain
    moves: list[Move] = []
    transfers: dict[str, list[Move | None]] = {}  # transaction id -> [sent, received]
    for event in group:
        stream = event.stream
        if not stream.startswith(ACCOUNT_STREAM_PREFIX) or len(stream) == _PREFIX:
            return None
        account_id = stream[_PREFIX:]
        state = states.get(account_id)
        if state is None:
            known = live.get(account_id)
            if known is not None:
                state = states[account_id] = known.copy()
        if event.type == OPENED:
            if state is not None or not _opens(event, account_id):
                return None
            states[account_id] = Live(1, 0, 0, 0, event.data["currency"])
            moves.append((account_id, event, 0, None, "", None, 0))
            continue
        if state is None or state.closed:
            return None
        move = _move(event, account_id, state)
        if move is None:
            return None
        state.version += 1
        state.balance = move[6]
        moves.append(move)
        if move[3] is not None:  # half a transfer: its other half must be in this append
            sides = transfers.setdefault(move[4], [None, None])
            side = 0 if move[2] < 0 else 1
            if sides[side] is not None:
                return None
            sides[side] = move
    for sent, received in transfers.values():
        if sent is None or received is None or not _halves_agree(sent, received, states):
            return None
    live.update(states)
    return moves


def _opens(event: RecordedEvent, account_id: str) -> bool:
    """An AccountOpened that opens the stream's account, first in its stream, with values
    the rule accepts (`domain.plain.opened_currency`)."""
    data = event.data
    if event.stream_version != 1 or data.get("account_id") != account_id:
        return False
    return opened_currency(event.schema_version, data) is not None


def _halves_agree(sent: Move, received: Move, states: Mapping[str, Live]) -> bool:
    """`check_transfers` on one transaction: each the other's counterpart, one amount,
    references agreeing (equal, or one erased), one currency."""
    return (
        sent[3] == received[0]
        and received[3] == sent[0]
        and sent[2] == -received[2]
        and (sent[5] == received[5] or sent[5] is None or received[5] is None)
        and states[sent[0]].currency == states[received[0]].currency
    )


def _move(event: RecordedEvent, account_id: str, state: Live) -> Move | None:
    """The move of one money event on an open account that passes the rule's per-event
    checks, else None."""
    if event.stream_version != state.version + 1:
        return None
    move = money_move(
        event.type,
        event.schema_version,
        event.data,
        account_id,
        state.balance,
        state.pending_debits,
        state.pending_credits,
    )
    if move is None:
        return None
    return (account_id, event, *move)
