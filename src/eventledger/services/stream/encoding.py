"""JSON and Server-Sent Events bytes, written once per response.

The handlers return these bytes directly, skipping FastAPI's response-model serialisation:
each envelope goes through `json.dumps` exactly once. Output is ASCII (`ensure_ascii`), so no
line separator such as U+2028 or U+0085 can split an SSE `data:` line in a client that splits
lines more eagerly than the SSE specification does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi.responses import Response

from eventledger.eventstore.codec import to_envelope
from eventledger.eventstore.records import AppendResult, RecordedEvent

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class JSONBytes(Response):
    """A JSON response whose body is already encoded."""

    media_type = "application/json"


def json_response(payload: Any, status: int = 200) -> JSONBytes:
    return JSONBytes(_encode(payload).encode("ascii"), status_code=status)


def encode_items(items: list[dict[str, Any]]) -> bytes:
    """The body of a `POST /appends` answer."""
    return _encode({"items": items}).encode("ascii")


def append_result(result: AppendResult) -> dict[str, Any]:
    return {
        "stream": result.stream,
        "first_version": result.first_version,
        "last_version": result.last_version,
        "positions": list(result.positions),
    }


def envelopes(events: Iterable[RecordedEvent]) -> list[dict[str, Any]]:
    return [to_envelope(e) for e in events]


def sse_frames(events: Sequence[RecordedEvent]) -> bytes:
    """One SSE message per event: `id:` the position, `event:` the type, `data:` the envelope."""
    return "".join(
        f"id: {e.position}\nevent: {e.type}\ndata: {_encode(to_envelope(e))}\n\n" for e in events
    ).encode("ascii")


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode("ascii")
