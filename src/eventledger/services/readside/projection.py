"""What a projection is, to the read side: the `Projection` protocol the runner drives, and
`EventRejected`, which a pure projection raises for an event it cannot apply.

Pure projections (`accounting/projection.py`, `statistics/projection.py`) import this module
only: nothing here does I/O or knows the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from eventledger.eventstore.records import RecordedEvent

if TYPE_CHECKING:
    from eventledger.services.readside.db import Migration, Session


class EventRejected(Exception):
    """Raised by a projection when it cannot apply an event: unknown type, malformed data, an
    account never opened, a gap in a stream. The runner halts at that event."""

    def __init__(self, event: RecordedEvent, reason: str) -> None:
        super().__init__(f"event {event.position} ({event.type} on {event.stream}): {reason}")
        self.event = event
        self.reason = reason


class Projection(Protocol):
    """What the runner drives: a named read model with its schema and a batch writer."""

    @property
    def name(self) -> str:
        """The checkpoint name (also the read model's namespace)."""
        ...

    @property
    def migrations(self) -> Sequence[Migration]: ...

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        """Apply `events` in order inside `session`, skipping streams it does not project.
        At the first event it cannot apply, stop: write what came before, return the error."""
        ...

    def reset(self, session: Session) -> None:
        """Delete every row of the read model (not the checkpoint)."""
        ...
