"""The tamper-evident hash chain of the log, defined once: what every store computes when it
writes an event, and what `eventledger verify` recomputes from the stored rows.

    hash(event) = hex SHA-256( bytes of the previous event's hash  (32 bytes; 64 zeros as hex
                                                                     before the first event)
                               + UTF-8 of the event's canonical content )

The canonical content is the canonical JSON of the event's envelope without `hash`:

    {"batch_end":…,"data":…,"id":"…","metadata":…,"position":…,"recorded_at":"…",
     "schema_version":…,"stream":"…","stream_version":…,"type":"…"}

Canonical JSON: keys sorted, no spaces, non-ASCII characters as themselves (UTF-8), the data
and metadata as stored (never upcast), `recorded_at` as codec.format_time writes it. Numbers
are compared by value, as JSON means them: a float with an integral value is written as that
integer (PostgreSQL's jsonb gives `1e20` back as `100000000000000000000`), any other float
as Python's shortest repr.

What the chain proves: no stored event was edited, removed or inserted after it was written,
unless whoever did it also recomputed every later hash (anyone with write access to the
database can). Compare the head hash with one recorded elsewhere earlier (a read model, a
log line, a printed `verify`) to rule that out.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeGuard
from uuid import UUID

import orjson

from eventledger.eventstore.codec import format_time
from eventledger.eventstore.records import RecordedEvent

if TYPE_CHECKING:
    from eventledger.eventstore.store import EventStore

GENESIS = "0" * 64  # the "previous hash" of the first event

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# The C encoder behind json.dumps, built once: json.dumps builds a new one per call, which
# costs more than encoding a small event. Used for flat objects only (no floats, no nesting),
# where it writes exactly what `_dumps` writes. No circular-reference markers: a flat object
# holds no containers. Arguments: markers, default, string encoder, indent, key separator,
# item separator, sort_keys, skipkeys, allow_nan.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_flat_encoder: Any = _c_make_encoder and _c_make_encoder(
    None, _refuse, json.encoder.encode_basestring, None, ":", ",", True, False, False
)


def is_flat(value: Any) -> TypeGuard[dict[str, Any]]:
    """A dict of string keys and string, int, bool or None values: the common event, whose
    canonical JSON is its plain sorted JSON (no float to normalise, nothing nested)."""
    return type(value) is dict and all(
        type(k) is str and type(v) in _PLAIN for k, v in value.items()
    )


def orjson_flat_json(value: dict[Any, Any]) -> str | None:
    """flat_json by orjson alone, for a dict whose values `flat_values` accepted; None when
    orjson refuses it (an int past 64 bits, a lone surrogate, a key that is not a string)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return None


def flat_values(value: dict[Any, Any]) -> bool:
    """Whether the values of a dict are all strings, ints, bools or None (its keys unchecked:
    `flat_json` refuses keys that are not strings)."""
    return _PLAIN.issuperset(map(type, value.values()))


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a JSON value (see the module docstring)."""
    if is_flat(value):
        return flat_json(value)
    return _dumps(_normal(value))


def flat_json(value: dict[str, Any]) -> str:
    """canonical_json of a value `is_flat` accepted (without checking it again).

    orjson writes a dict of strings, ints (of 64 bits), bools and None byte for byte as
    `_dumps` does (every code point checked, tests/unit/test_hashing.py), sorted by code
    point, at a seventh of the C encoder's cost; what it refuses (a longer int, a lone
    surrogate, a key that is not a string) is encoded by the standard library."""
    text = orjson_flat_json(value)
    if text is not None:
        return text
    if _flat_encoder is None:
        return _dumps(value)
    return "".join(_flat_encoder(value, 0))


def event_content(
    *,
    id: UUID,
    stream: str,
    type: str,
    schema_version: int,
    data: str,
    metadata: str,
    stream_version: int,
    position: int,
    recorded_at: str,
    batch_end: int,
) -> bytes:
    """The canonical content of one event: `data` and `metadata` already canonical JSON
    (canonical_json), `recorded_at` as codec.format_time writes it."""
    return _content(
        batch_end,
        data,
        str(id),
        metadata,
        position,
        _dumps(recorded_at),
        schema_version,
        _dumps(stream),
        stream_version,
        _dumps(type),
    )


def _content(
    batch_end: int,
    data: str,
    id: str,
    metadata: str,
    position: int,
    recorded_at: str,
    schema_version: int,
    stream: str,
    stream_version: int,
    type: str,
) -> bytes:
    # The one spelling of the content. `recorded_at`, `stream`, `type`: JSON string literals.
    return (
        f'{{"batch_end":{batch_end},"data":{data},"id":"{id}","metadata":{metadata},'
        f'"position":{position},"recorded_at":{recorded_at},'
        f'"schema_version":{schema_version},"stream":{stream},'
        f'"stream_version":{stream_version},"type":{type}}}'
    ).encode()


def chain(previous: str, content: bytes) -> str:
    """The hash of an event whose predecessor's hash is `previous`."""
    return hashlib.sha256(bytes.fromhex(previous) + content).hexdigest()


class HashChain:
    """Hashes the events of one write, one after the other: what `chain(event_content(...))`
    gives for each, with what the events share encoded once (the time, the JSON of stream
    names and types) and the previous hash kept as bytes (no hex round trip per event)."""

    __slots__ = ("_previous", "_recorded_at", "_strings")

    def __init__(self, previous: str, recorded_at: str) -> None:
        self._previous = bytes.fromhex(previous)
        self._recorded_at = _dumps(recorded_at)
        self._strings: dict[str, str] = {}  # JSON literals of the stream names and types seen

    def string(self, text: str) -> str:
        """`text` as a JSON string literal (cached: a write has few streams and types)."""
        literal = self._strings.get(text)
        if literal is None:
            literal = self._strings[text] = _dumps(text)
        return literal

    def add(
        self,
        batch_end: int,
        data: str,
        id: str,
        metadata: str,
        position: int,
        schema_version: int,
        stream: str,
        stream_version: int,
        type: str,
    ) -> str:
        """The hash of the next event (`stream` and `type` as `string` gives them); positional
        arguments in the order of the content, on the hot path of every append."""
        digest = hashlib.sha256(
            self._previous
            + _content(
                batch_end,
                data,
                id,
                metadata,
                position,
                self._recorded_at,
                schema_version,
                stream,
                stream_version,
                type,
            )
        ).digest()
        self._previous = digest
        return digest.hex()


_PLAIN = frozenset({str, int, bool, type(None)})


def _normal(value: Any) -> Any:
    """The value as JSON stores it, in the form canonical JSON writes."""
    if is_flat(value):
        return value  # the common event: flat, nothing to change
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        # repr is the shortest text that reads back as this float: its decimal value.
        return int(Decimal(repr(value))) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else _key(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value  # json refuses it further on


def _key(key: object) -> str:
    """A key that is not a string, as json.dumps writes it (`1` → "1", `True` → "true")."""
    text: str = json.loads(json.dumps({key: 0})).popitem()[0]
    return text


def event_hash(previous: str, event: RecordedEvent) -> str:
    """The hash a stored event (as stored: never upcast) carries when its predecessor's hash is
    `previous`. What `verify` and the migrations compute from the rows."""
    return chain(
        previous,
        event_content(
            id=event.id,
            stream=event.stream,
            type=event.type,
            schema_version=event.schema_version,
            data=canonical_json(event.data),
            metadata=canonical_json(event.metadata),
            stream_version=event.stream_version,
            position=event.position,
            recorded_at=format_time(event.recorded_at),
            batch_end=event.batch_end,
        ),
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What `verify_chain` found: the head it reached, and the first position whose stored
    content no longer matches its hash (None: the whole chain holds)."""

    checked: int
    head_position: int
    head_hash: str
    broken_at: int | None = None
    reason: str = ""


async def verify_chain(
    store: EventStore, *, page: int = 2000, progress: Callable[[int, int], None] | None = None
) -> ChainReport:
    """Recompute the chain over every stored event, in position order, from the stored rows.
    `progress(position, events checked)` is called after each page."""
    previous, checked, head = GENESIS, 0, 0
    while events := await store.read_stored(after=head, limit=page):
        for event in events:
            if event.position != head + 1:  # positions have no gaps on any backend
                reason = f"the events at positions {head + 1}..{event.position - 1} are missing"
                return ChainReport(checked, head, previous, head + 1, reason)
            expected = event_hash(previous, event)
            if event.hash != expected:
                reason = (
                    "its stored hash is not the hash of its content chained to the event before"
                    f" (stored {event.hash[:16] or '(none)'}…, computed {expected[:16]}…)"
                )
                return ChainReport(checked, head, previous, event.position, reason)
            previous, head, checked = event.hash, event.position, checked + 1
        if progress is not None:
            progress(head, checked)
    return ChainReport(checked, head, previous)
