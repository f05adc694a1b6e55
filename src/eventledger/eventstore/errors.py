"""Errors raised by every event store backend. Driver exceptions never leave `eventstore/`.

EventStoreError
├── WrongExpectedVersion     the stream is not at the version the append expected
├── DuplicateEventId         an event id is already stored somewhere else
├── StreamNotFound           reading a stream that has no events
├── InvalidAppend            an append that can never succeed (no events, bad names)
├── StoreUnavailable         the backing database cannot be reached right now
│   └── StoreOutcomeUnknown  COMMIT failed: the append may or may not be stored
├── UnsafeDurability         PostgreSQL may lose acknowledged appends (refused at open)
└── IncompatibleSchema       PostgreSQL's schema was migrated by a newer eventledger
"""

from __future__ import annotations

from uuid import UUID


class EventStoreError(Exception):
    """Base class of every error an event store raises."""


class WrongExpectedVersion(EventStoreError):
    """Raised when an append's expected version does not match the stream's actual version.
    Nothing of the append (or of its batch) was written."""

    def __init__(self, stream: str, expected: object, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream!r} is at version {actual}, expected {expected}")


class DuplicateEventId(EventStoreError):
    """Raised when an event id is already stored, but not at the place this append would put it
    (another stream, another version, or mixed with new events). Nothing was written."""

    def __init__(self, event_id: UUID, stream: str | None = None) -> None:
        self.event_id = event_id
        self.stream = stream
        super().__init__(f"event id {event_id} is already stored elsewhere")


class StreamNotFound(EventStoreError):
    """Raised when reading a stream that has no events."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} does not exist")


class InvalidAppend(EventStoreError):
    """Raised when an append can never succeed: no events, an invalid stream name or event type,
    the same event id twice in one request, or the same stream twice in one batch."""


class StoreUnavailable(EventStoreError):
    """Raised when the backing database cannot be reached or timed out. Safe to retry: an append
    that raised this may or may not have been written, so retry it with the same event ids."""


class StoreOutcomeUnknown(StoreUnavailable):
    """Raised when the COMMIT of an append failed (an I/O error, a failed fsync, the connection
    lost while committing): the events may or may not be stored. Retrying the append with the
    same event ids settles it: it is either written then, or answered as a replay."""


class UnsafeDurability(EventStoreError):
    """Raised when `PostgresEventStore.open` finds a server that may lose acknowledged appends
    in a crash (`fsync` off, or `synchronous_commit` off) and `allow_unsafe_durability` is
    False. Nothing was created or migrated."""


class IncompatibleSchema(EventStoreError):
    """Raised when `PostgresEventStore.open` finds a schema migrated by a newer eventledger
    than this one."""
