"""Where the atomic appends of the log begin and end, for the pure projections: pure, no I/O.

A projection checks some rules on one atomic append as a whole (a `TransferSent` only with
its `TransferReceived`: `domain.validity.check_transfers`), so it needs to know which events
were written together. The log says so in `RecordedEvent.batch_end`: the position of the last
event of the append that wrote an event (0 where the store did not record it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar, cast

from eventledger.domain import events as domain_events
from eventledger.domain import validity
from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import Event
from eventledger.domain.validity import PAIRED_EVENTS, AccountFacts, check_transfers
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.projection import EventRejected

_Row = TypeVar("_Row")
_Row_co = TypeVar("_Row_co", covariant=True)
_C = TypeVar("_C", bound="_Change[object]")


def commit_groups(
    events: Sequence[RecordedEvent],
) -> Iterator[tuple[Sequence[RecordedEvent], bool]]:
    """`events` (in log order) split into runs written by one atomic append, each with
    whether it is known to be the whole append: its `batch_end` is known and its last event
    is there. An event whose `batch_end` is unknown is a run of its own, not known whole.

    The runner applies whole appends (it cuts its batches where an append ends), so a run
    that starts a call starts an append."""
    start = 0
    count = len(events)
    while start < count:
        end_position = events[start].batch_end
        stop = start + 1
        if end_position > 0:
            while stop < count and events[stop].batch_end == end_position:
                stop += 1
        run = events[start:stop]
        yield run, end_position > 0 and run[-1].position == end_position
        start = stop


class _Change(Protocol[_Row_co]):
    @property
    def account(self) -> _Row_co: ...


def evolve_append(
    accounts: Mapping[str, _Row],
    events: Sequence[RecordedEvent],
    *,
    account_id_of: Callable[[str], str | None],
    evolve: Callable[[_Row | None, RecordedEvent], tuple[_C, Event]],
    facts_of: Callable[[str, _Row | None], AccountFacts],
    whole: bool = True,
) -> tuple[list[_C], EventRejected | None]:
    """Apply the events of one atomic append with a projection's own `evolve` (other
    streams' events are passed over): the changes, and the EventRejected of the first event
    that breaks the rule (then the changes are those of the events before it). When the
    append is `whole`, its transfers are checked as pairs too. Written once for every
    projection: each supplies how it evolves a row and what facts of the account a row gives."""
    rows: dict[str, _Row] = {}  # the rows this append changed, over `accounts`
    changes: list[_C] = []
    applied: list[Event] = []
    recorded: list[RecordedEvent] = []
    paired = reversal = False  # which rules on the whole append apply (noted on the way)
    for event in events:
        account_id = account_id_of(event.stream)
        if account_id is None:
            continue
        row = rows[account_id] if account_id in rows else accounts.get(account_id)
        try:
            change, domain_event = evolve(row, event)
        except EventRejected as exc:
            return changes, exc
        rows[account_id] = cast(_Row, change.account)  # a change carries its row
        changes.append(change)
        applied.append(domain_event)
        recorded.append(event)
        paired = paired or isinstance(domain_event, PAIRED_EVENTS)
        reversal = reversal or isinstance(domain_event, domain_events.TransactionReversed)
    if whole and paired:
        try:
            check_transfers(applied, {a: facts_of(a, row) for a, row in rows.items()})
        except InvalidAccountEvent as exc:
            index = exc.index or 0
            return changes[:index], EventRejected(recorded[index], exc.reason)
    if whole and reversal:
        try:
            validity.check_reversals(applied, {a: facts_of(a, row) for a, row in rows.items()})
        except InvalidAccountEvent as exc:
            index = exc.index or 0
            return changes[:index], EventRejected(recorded[index], exc.reason)
    return changes, None
