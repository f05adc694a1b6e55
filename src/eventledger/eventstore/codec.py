"""The text forms of an event: its JSON envelope, as the stream service serves it (API.md,
"Events"), the JSON text its data is stored as, and RFC 3339 times.

One encoder and one decoder of envelopes, used by the stream service and by every client of
it; one encoder of event data, used by every store that keeps JSON text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventledger.eventstore.errors import InvalidAppend
from eventledger.eventstore.records import RecordedEvent


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`: `2026-11-27T10:00:00.123456Z`."""
    if moment.tzinfo is UTC and moment.year >= 1000:
        # Every stored time: isoformat is ~4x cheaper than strftime and gives the same text
        # (strftime's %Y does not pad years below 1000, isoformat does: those take the slow path).
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time; a time without offset is refused (ValueError)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise ValueError(f"time {text!r} is out of range in UTC") from None


def to_envelope(event: RecordedEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "stream": event.stream,
        "type": event.type,
        "schema_version": event.schema_version,
        "data": event.data,
        "metadata": event.metadata,
        "stream_version": event.stream_version,
        "position": event.position,
        "recorded_at": format_time(event.recorded_at),
        "hash": event.hash,
        "batch_end": event.batch_end,
    }


def from_envelope(envelope: Mapping[str, Any]) -> RecordedEvent:
    """Decode an envelope; raises KeyError/ValueError/TypeError on a malformed one."""
    return RecordedEvent(
        id=UUID(envelope["id"]),
        stream=str(envelope["stream"]),
        type=str(envelope["type"]),
        schema_version=int(envelope["schema_version"]),
        data=dict(envelope["data"]),
        metadata=dict(envelope.get("metadata") or {}),
        stream_version=int(envelope["stream_version"]),
        position=int(envelope["position"]),
        recorded_at=parse_time(envelope["recorded_at"]),
        hash=str(envelope.get("hash") or ""),
        batch_end=int(envelope.get("batch_end") or 0),
    )


def json_text(value: Mapping[str, Any], what: str, event_id: UUID) -> str:
    """The `data` or `metadata` (`what`) of an event as compact JSON text. Raises InvalidAppend
    for what JSON cannot hold (NaN, infinities, objects that are not mappings), for lone
    surrogates, which UTF-8 cannot encode, for nesting too deep to encode, and for NUL
    (U+0000) in any key or string: PostgreSQL cannot store it, so no backend accepts it."""
    try:
        text = json.dumps(
            value,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidAppend(f"the {what} of event {event_id} is not JSON: {exc}") from None
    check_text(text, what, event_id)
    return text


def check_text(text: str, what: str, event_id: UUID) -> None:
    """The text rules of stored JSON (see json_text), for JSON text however it was written:
    InvalidAppend for lone surrogates and for NUL."""
    if not text.isascii():  # ASCII holds no surrogate: the common case skips the encoding
        try:
            text.encode("utf-8")  # lone surrogates cannot be stored
        except UnicodeEncodeError as exc:
            raise InvalidAppend(f"the {what} of event {event_id} is not JSON: {exc}") from None
    # json.dumps writes NUL as the escape \u0000; a literal backslash before "u0000" is "\\".
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise InvalidAppend(f"the {what} of event {event_id} contains NUL (U+0000)")


# A \u0000 escape that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
