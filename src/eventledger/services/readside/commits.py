"""Where the atomic appends of the log begin and end, for the pure projections: pure, no I/O.

A projection checks some rules on one atomic append as a whole (a `TransferSent` only with
its `TransferReceived`: `domain.validity.check_transfers`), so it needs to know which events
were written together. The log says so in `RecordedEvent.batch_end`: the position of the last
event of the append that wrote an event (0 where the store did not record it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from eventledger.eventstore.records import RecordedEvent


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
