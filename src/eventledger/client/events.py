"""What the event store's side of the client returns and takes: `NewEvent` (what you write)
apart from `RecordedEvent` (what the store returns, with its stream version and position)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventledger.client.errors import UnexpectedResponse
from eventledger.client.models import Fields


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append (what you write); `id` is generated when not given, so a retried
    append is recognised by the store and written once."""

    type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    schema_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "schema_version": self.schema_version,
            "data": dict(self.data),
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the store returns it (what was written, where, when)."""

    id: uuid.UUID
    stream: str
    type: str
    schema_version: int
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]
    stream_version: int
    position: int
    recorded_at: datetime
    hash: str | None = None
    batch_end: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> RecordedEvent:
        f = Fields(body, "event")
        try:
            event_id = uuid.UUID(f.text("id"))
        except ValueError as exc:
            raise UnexpectedResponse(f"event: id {f.doc.get('id')!r} is not a UUID") from exc
        return cls(
            event_id,
            f.text("stream"),
            f.text("type"),
            f.integer("schema_version"),
            f.obj("data").doc,
            f.obj("metadata").doc,
            f.integer("stream_version"),
            f.integer("position"),
            f.time("recorded_at"),
            f.opt_text("hash"),
            f.opt_integer("batch_end"),
        )


@dataclass(frozen=True, slots=True)
class StreamPage:
    """Events of one stream from a version on; `version` is the stream's current version."""

    stream: str
    version: int
    events: tuple[RecordedEvent, ...]

    @classmethod
    def from_json(cls, body: Any) -> StreamPage:
        f = Fields(body, "stream")
        events = tuple(RecordedEvent.from_json(e) for e in f.array("events"))
        return cls(f.text("stream"), f.integer("version"), events)


@dataclass(frozen=True, slots=True)
class LogPage:
    """A page of the global log; continue with `after=last_position`."""

    events: tuple[RecordedEvent, ...]
    last_position: int

    @classmethod
    def from_json(cls, body: Any) -> LogPage:
        f = Fields(body, "log page")
        events = tuple(RecordedEvent.from_json(e) for e in f.array("events"))
        return cls(events, f.integer("last_position"))


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append wrote: versions in its stream and global positions."""

    stream: str
    first_version: int
    last_version: int
    positions: tuple[int, ...]

    @property
    def position(self) -> int:
        """The last position written: the consistency token for reads."""
        return self.positions[-1] if self.positions else 0

    @classmethod
    def from_json(cls, body: Any) -> Appended:
        f = Fields(body, "append")
        positions = tuple(int(p) for p in f.array("positions") if type(p) is int)
        return cls(
            f.text("stream"), f.integer("first_version"), f.integer("last_version"), positions
        )
