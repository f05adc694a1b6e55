"""Which pending transfers a page of the log needs loaded, for the pure projections: pure,
no I/O.

The validity rule keeps each account's pending transfers in its facts (`AccountFacts.pending`)
so that an outcome can only end a hold the account has, a hold id is pending once, and an
account with holds does not close. A read model stores them in a table; loading every hold
of every account a page touches would cost a row per hold per page (a merchant with
thousands of holds open, on every page that deposits to it). Most rules need less:

* deposits, withdrawals and transfers need only the pending sums (the balance range), which
  the account's row has;
* a hold, a post or a void needs only the hold of its own transaction id (is it pending?
  on which side, for how much?);
* anything else (a close: "no hold at all"; a reversal; an erasure; an event type this code
  does not know) gets all of them, as the rule was written for.

So a projection loads, per account, the holds its events in the page name, or all of them
when one of its events is of the last kind; its row's `pending` then holds only those (its
pending sums stay whole). What the rule decides is the same as with every hold loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from eventledger.domain.events import (
    MoneyDeposited,
    MoneyWithdrawn,
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
    TransferReceived,
    TransferSent,
)
from eventledger.eventstore.records import RecordedEvent

# Their rule reads the pending sums only (`domain.validity.check_event`).
_SUMS_ONLY = frozenset(
    t.TYPE for t in (MoneyDeposited, MoneyWithdrawn, TransferSent, TransferReceived)
)
# Their rule reads the hold of their own transaction id only (`domain.hold_rules`).
_OWN_HOLD = frozenset(
    t.TYPE
    for t in (
        PendingTransferSent,
        PendingTransferReceived,
        PendingTransferPosted,
        PendingTransferVoided,
    )
)

Needed = Mapping[str, frozenset[str] | None]
"""Per account: the transaction ids of the holds to load, or None for all of them."""


def holds_needed(
    events: Iterable[RecordedEvent], account_id_of: Callable[[str], str | None]
) -> Needed:
    """What of each account's pending transfers the rule may read while `events` are
    applied (accounts that need none are left out)."""
    some: dict[str, set[str]] = {}
    every: set[str] = set()
    for event in events:
        if event.type in _SUMS_ONLY:  # first: most events are, and it is the cheap test
            continue
        account_id = account_id_of(event.stream)
        if account_id is None:
            continue
        transaction_id = event.data.get("transaction_id") if event.type in _OWN_HOLD else None
        if isinstance(transaction_id, str):
            some.setdefault(account_id, set()).add(transaction_id)
        else:  # another kind of event, or a hold event too malformed to name its hold
            every.add(account_id)
    needed: dict[str, frozenset[str] | None] = {a: frozenset(t) for a, t in some.items()}
    needed.update(dict.fromkeys(every))
    return needed
