"""What the group commit decides before it writes (group_commit.py), pure and without I/O:

    encode      a new event as it will be stored: its JSON texts and its canonical texts
                (encoded by the caller, before the request is queued)
    Planner     the requests of one group, one after the other, on the `Snapshot` the
                backend read under its write lock: the replay rule, expected versions,
                positions, and the hash chain; the `Row`s to INSERT

Both are the hot path of a bulk append (a thousand events per request): rows and encoded
events are tuples, and what the events of a write share is encoded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar
from uuid import UUID

from eventledger.eventstore.codec import check_text, format_time, json_text
from eventledger.eventstore.hashing import (
    HashChain,
    canonical_json,
    flat_json,
    flat_values,
    is_flat,
    orjson_flat_json,
)
from eventledger.eventstore.records import AppendResult, NewEvent, StreamAppend
from eventledger.eventstore.store import Placed, check_expected_version, classify_batch_replay

# -- encoding ------------------------------------------------------------------------------

_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (hot path)


class Encoded(NamedTuple):
    """A new event as it will be stored: its data and metadata as JSON text (codec.json_text,
    which also applies the text rules every backend shares), and in the canonical JSON that
    its hash covers (hashing.py). Encoded by the caller, so the writer only concatenates.
    A tuple: a thousand are built per bulk append."""

    id: UUID
    id_text: str  # str(id), written once: the hash and SQLite need it as text
    type: str
    schema_version: int
    data: str
    metadata: str
    canonical_data: str
    canonical_metadata: str


def encode(event: NewEvent) -> Encoded:
    """Raises InvalidAppend for data or metadata no backend can store."""
    data, canonical_data = _texts(event.data, "data", event.id)
    if type(event.metadata) is dict and not event.metadata:  # the common event: no metadata
        metadata = canonical_metadata = "{}"
    else:
        metadata, canonical_metadata = _texts(event.metadata, "metadata", event.id)
    # tuple.__new__ rather than Encoded(...): the same tuple without a Python-level __new__.
    return _tuple_new(
        Encoded,
        (
            event.id,
            str(event.id),
            event.type,
            event.schema_version,
            data,
            metadata,
            canonical_data,
            canonical_metadata,
        ),
    )


def _texts(value: Mapping[str, Any], what: str, event_id: UUID) -> tuple[str, str]:
    """The stored and the canonical JSON text of a data or metadata object. A flat object (the
    common event) is stored in its canonical text: encoded once, and the hash covers exactly
    the stored text. Any other keeps its own key order and is encoded twice."""
    if type(value) is dict:
        if not value:
            return "{}", "{}"
        if flat_values(value):
            text = orjson_flat_json(value)  # the common event: 0.3 µs
            if text is None and is_flat(value):
                with contextlib.suppress(ValueError, RecursionError):  # e.g. an int too long
                    text = flat_json(value)  # to write: said below
            if text is not None:
                check_text(text, what, event_id)
                return text, text
    return json_text(value, what, event_id), canonical_json(value)


# -- planning -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredPlace:
    """Where an already stored event sits (what the replay rule compares)."""

    id: UUID
    stream: str
    stream_version: int
    position: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a backend reads at the start of the group's transaction, after it took the lock
    that makes it the only writer: nothing it read can change before COMMIT."""

    head: int  # the newest position
    head_hash: str  # its hash (hashing.GENESIS in an empty store)
    recorded_at: datetime  # the time the group's events are recorded at
    stored: Mapping[UUID, Placed]  # the group's event ids that are stored already
    versions: Mapping[str, int]  # the group's streams' versions (absent: 0)
    # The key id of each account the group seals personal data for (keys.py; absent: none).
    keys: Mapping[str, str] = field(default_factory=dict)


class Row(NamedTuple):
    """One event to INSERT, with every column decided. A tuple (cheap to build, a thousand per
    append) whose first 11 fields are the columns in the order of the INSERTs; `id` comes last
    so that a row is also a `Placed` (the replay rule reads it)."""

    position: int
    id_text: str  # str(id)
    stream: str
    stream_version: int
    type: str
    schema_version: int
    data: str
    metadata: str
    recorded_at: str  # codec.format_time
    hash: str  # hashing.py: chained to the row before
    batch_end: int  # the position of the last row of its request (its `append_batch`)
    id: UUID


COLUMNS = 11  # Row[:COLUMNS]: the values of one INSERT


class Requested(Protocol):
    """What planning reads of a request (group_commit.Request): its appends, and their
    events encoded (`encode`), per append."""

    @property
    def appends(self) -> Sequence[StreamAppend]: ...
    @property
    def events(self) -> list[list[Encoded]]: ...


R = TypeVar("R", bound=Requested)


@dataclass(eq=False)
class Write(Generic[R]):
    """A request that passed its checks: its rows and the results its caller will get."""

    request: R
    rows: list[Row]
    results: list[AppendResult]


class Planner:
    """Decides requests one after the other, each as if the earlier accepted ones were
    written: the rules of memory.py, on the state a `Snapshot` gave."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.head = snapshot.head
        self.head_hash = snapshot.head_hash
        at = snapshot.recorded_at
        # A naive clock is read as UTC (astimezone would take it for local time).
        self._recorded_at = format_time(at if at.tzinfo else at.replace(tzinfo=UTC))
        self._stored: dict[UUID, Placed] = dict(snapshot.stored)
        self._versions = dict(snapshot.versions)

    def plan(self, request: R) -> Write[R] | list[AppendResult]:
        """The request's rows, or the original results of a replay. Raises the request's
        EventStoreError (WrongExpectedVersion, DuplicateEventId)."""
        replayed = classify_batch_replay(request.appends, self._stored)
        if replayed is not None:
            return replayed
        results: list[AppendResult] = []
        first = self.head + 1
        position = self.head
        for append in request.appends:
            actual = self._versions.get(append.stream, 0)
            check_expected_version(append.stream, append.expected_version, actual)
            count = len(append.events)
            results.append(
                AppendResult(
                    append.stream,
                    actual + 1,
                    actual + count,
                    tuple(range(position + 1, position + count + 1)),
                )
            )
            position += count
        # One hash per event, chained in position order; the whole request is one batch.
        rows: list[Row] = []
        hashes = HashChain(self.head_hash, self._recorded_at)
        batch_end, position, at = position, first, self._recorded_at
        for result, events in zip(results, request.events, strict=True):
            stream = result.stream
            stream_json = hashes.string(stream)
            for version, event in enumerate(events, start=result.first_version):
                digest = hashes.add(
                    batch_end,
                    event.canonical_data,
                    event.id_text,
                    event.canonical_metadata,
                    position,
                    event.schema_version,
                    stream_json,
                    version,
                    hashes.string(event.type),
                )
                rows.append(
                    _tuple_new(
                        Row,
                        (
                            position,
                            event.id_text,
                            stream,
                            version,
                            event.type,
                            event.schema_version,
                            event.data,
                            event.metadata,
                            at,
                            digest,
                            batch_end,
                            event.id,
                        ),
                    )
                )
                position += 1
        return Write(request, rows, results)

    def accept(self, write: Write[Any]) -> None:
        """Take a planned write as written: later requests are planned after it."""
        for row in write.rows:
            self._stored[row.id] = row
            self._versions[row.stream] = row.stream_version
        self.head = write.rows[-1].position
        self.head_hash = write.rows[-1].hash
