"""What you write to the store (`NewEvent`) and what it gives back (`RecordedEvent`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

# \Z, not $: "$" also matches before a trailing newline, which would let "abc\n" through.
STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")
EVENT_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}\Z")


class StreamState(StrEnum):
    """Symbolic expectations for the state of a stream before an append."""

    ANY = "any"  # no check at all
    NO_STREAM = "no_stream"  # the stream must not exist yet (same as expected version 0)
    EXISTS = "exists"  # the stream must have at least one event


# A number N means "the stream's current version is exactly N" (0: the stream does not exist).
ExpectedVersion = int | StreamState


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. `id` is the deduplication key: the same id is stored at most once."""

    id: UUID
    type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the store returns it, with its place in its stream and in the global log."""

    id: UUID
    stream: str
    type: str
    schema_version: int
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]
    stream_version: int  # 1 for the first event of a stream, no gaps
    position: int  # global order, strictly increasing in visibility order
    recorded_at: datetime  # UTC
    # Tamper evidence: hex SHA-256 of the previous event's hash and this event's canonical
    # content ("" where a store or a reader does not have it).
    hash: str = ""
    # The position of the last event of the atomic append (or batch) that wrote this event:
    # a reader never shows a state between `position` and `batch_end` (0: not known).
    batch_end: int = 0


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """One stream's part of an atomic batch."""

    stream: str
    expected_version: ExpectedVersion
    events: Sequence[NewEvent]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. `replayed` is True when every event was already stored
    at exactly this place, so nothing new was written (idempotent retry)."""

    stream: str
    first_version: int
    last_version: int
    positions: tuple[int, ...]
    replayed: bool = False
