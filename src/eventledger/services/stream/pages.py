"""Pages of events bounded in bytes as well as in count.

A page of the log (`GET /events`, `GET /streams/…`, each step of an SSE subscription) stops at
`limit` events or once its encoded events reach `max_bytes`, whichever comes first, and always
holds at least one event when there is one: a single event larger than the budget (stored
before events were bounded) is still served, alone. The byte bound keeps one request from
holding the service's memory: 80 events of 1 MB once made one `GET /events` cost 2.3 GB.

The store pages by count only, so events are read in chunks sized from a running estimate of
their encoded size: a chunk asks for about as many events as the remaining budget holds (at
most `MAX_CHUNK`), and the page reads another chunk only while the budget is not spent. Every
event is encoded here once; the callers write the encoded text as it is.

A page that stopped at `limit` or at `max_bytes` is *cut*: more events may follow at once. A
page that is not cut reached the end of what the store held when it was read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from eventledger.eventstore.codec import to_envelope
from eventledger.eventstore.pii import ACCOUNT_STREAM, ERASED
from eventledger.eventstore.recent import RecentEvent
from eventledger.eventstore.records import RecordedEvent
from eventledger.eventstore.sqlite import SqliteEventStore
from eventledger.eventstore.store import EventStore

LOG_PAGE_BYTES = 1024 * 1024  # `GET /events`, `GET /streams/…`: about 1 MiB of JSON at most
MAX_CHUNK = 256  # events per store read: 256 events of 64 KiB are 16 MiB in memory at most

encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encoded_envelope(event: RecordedEvent) -> str:
    """The event's envelope as compact ASCII JSON (what every reader is served)."""
    envelope = to_envelope(event)
    # orjson writes the same text as the stdlib for ASCII envelopes of strings and integers
    # in half the time (4.5 vs 9.6 us an event). Where the two could differ, the stdlib's
    # text is served: non-ASCII (orjson does not escape it), floats (their spelling),
    # integers beyond 64 bits (orjson refuses them).
    try:
        text = orjson.dumps(envelope, default=_refuse).decode()
    except (TypeError, orjson.JSONEncodeError):
        return encode_json(envelope)
    if text.isascii() and not _has_float(envelope["data"]) and not _has_float(envelope["metadata"]):
        return text
    return encode_json(envelope)


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is left to the standard library")


# Values that are never a float nor hold one, by exact type: one set lookup for each of
# the strings, integers and nulls most event data is made of (a catch-up page served from
# PostgreSQL checks every event's data: the recursive generator was a fifth of its CPU).
_SCALARS = frozenset({str, int, bool, type(None)})


def _has_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        values: Iterable[object] = value.values()
    elif isinstance(value, list):
        values = value
    else:
        return False
    for item in values:  # noqa: SIM110 - a loop: any() over a generator costs more per item
        if type(item) not in _SCALARS and _has_float(item):
            return True
    return False


class SizeEstimate:
    """A running estimate of the encoded size of one event, to size the next store read.
    It starts at the largest event size accepted today, so that a first read over events
    stored before sizes were bounded (up to 1 MiB each) asks for a few of them, not hundreds;
    small events bring it down within a few reads."""

    def __init__(self, initial: int = 64 * 1024) -> None:
        self.average = float(initial)

    def observe(self, total_bytes: int, count: int) -> None:
        if count:
            self.average = 0.5 * self.average + 0.5 * (total_bytes / count)

    def chunk(self, room_bytes: int, room_count: int) -> int:
        """How many events to ask for to fill about `room_bytes` without passing `room_count`."""
        fits = int(room_bytes / max(self.average, 1.0)) + 1
        return max(1, min(room_count, fits, MAX_CHUNK))


class Entry(Protocol):
    """What a log page keeps of an event besides its envelope."""

    @property
    def position(self) -> int: ...
    @property
    def type(self) -> str: ...


E = TypeVar("E", bound=Entry)


@dataclass
class Page(Generic[E]):
    """Events in order with their encoded envelopes; `cut` when more may follow at once."""

    events: list[E] = field(default_factory=list)
    encoded: list[str] = field(default_factory=list)
    size: int = 0
    cut: bool = False
    # It shows personal data (opened or erased: eventstore/pii.py): a forget changes what it
    # shows, so it is never kept beyond its request (the SSE feed's page cache).
    personal: bool = False

    def add(self, event: E, text: str) -> None:
        self.events.append(event)
        self.encoded.append(text)
        self.size += len(text)
        if not self.personal and isinstance(event, RecordedEvent) and _personal(event):
            self.personal = True

    def fits(self, text: str, max_bytes: int) -> bool:
        return not self.events or self.size + len(text) <= max_bytes


def _personal(event: RecordedEvent) -> bool:
    if not event.stream.startswith(ACCOUNT_STREAM):
        return False
    data = event.data
    return (
        data.get("owner") is not None
        or data.get("reference") is not None
        or ERASED in event.metadata
    )


async def read_log_page(
    store: EventStore,
    estimate: SizeEstimate,
    *,
    after: int,
    limit: int,
    max_bytes: int,
    types: tuple[str, ...] = (),
    stream_prefix: str | None = None,
) -> Page[Entry]:
    """Events of the global log after `after`, at most `limit` and about `max_bytes`."""
    page: Page[Entry] = Page()
    cursor = after
    while True:
        want = estimate.chunk(max_bytes - page.size, limit - len(page.events))
        chunk: list[RecentEvent | RecordedEvent]
        if isinstance(store, SqliteEventStore):
            # Envelopes straight from the stored texts where exact (catch-up: 2-3x cheaper).
            chunk = await store.read_log_entries(
                after=cursor, limit=want, types=types, stream_prefix=stream_prefix
            )
        else:
            chunk = list(
                await store.read_all(
                    after=cursor, limit=want, types=types, stream_prefix=stream_prefix
                )
            )
        if _fill(page, chunk, estimate, limit=limit, max_bytes=max_bytes) or len(chunk) < want:
            return page
        cursor = chunk[-1].position


async def read_stream_page(
    store: EventStore,
    estimate: SizeEstimate,
    stream: str,
    *,
    from_version: int,
    limit: int,
    max_bytes: int,
) -> Page[RecordedEvent]:
    """Events of one stream from `from_version` on, at most `limit` and about `max_bytes`.
    Raises the store's StreamNotFound when the stream has no events."""
    page: Page[RecordedEvent] = Page()
    version = from_version
    while True:
        want = estimate.chunk(max_bytes - page.size, limit - len(page.events))
        chunk = await store.read_stream(stream, from_version=version, limit=want)
        if _fill(page, chunk, estimate, limit=limit, max_bytes=max_bytes) or len(chunk) < want:
            return page
        version = chunk[-1].stream_version + 1


def _fill(
    page: Page[Any],
    chunk: list[RecentEvent] | list[RecordedEvent] | list[RecentEvent | RecordedEvent],
    estimate: SizeEstimate,
    *,
    limit: int,
    max_bytes: int,
) -> bool:
    """Add `chunk`'s events to `page` while they fit; True when the page is cut (full)."""
    added = 0
    start = page.size
    try:
        for event in chunk:
            text = event.text if isinstance(event, RecentEvent) else encoded_envelope(event)
            if not page.fits(text, max_bytes):
                page.cut = True
                return True
            page.add(event, text)
            added += 1
            if len(page.events) >= limit or page.size >= max_bytes:
                page.cut = True
                return True
        return False
    finally:
        estimate.observe(page.size - start, added)


def log_page_json(page: Page[Any], last_position: int) -> bytes:
    """`{"events": [...], "last_position": P}` from the already encoded envelopes."""
    return f'{{"events":[{",".join(page.encoded)}],"last_position":{last_position}}}'.encode(
        "ascii"
    )


def stream_page_json(stream: str, version: int, page: Page[Any]) -> bytes:
    """`{"stream", "version", "events"}` from the already encoded envelopes."""
    head: dict[str, Any] = {"stream": stream, "version": version}
    return f'{encode_json(head)[:-1]},"events":[{",".join(page.encoded)}]}}'.encode("ascii")
