"""The events this store instance committed last, kept in memory so that live subscribers are
served what the writer just committed without reading it back from the database.

Why: every commit woke the subscriptions, which read the new events back (a thread hop, a
query, a decode into `RecordedEvent`s) only to encode them again as envelopes. The writer
already holds those events as `Row`s, their data and metadata as the stored JSON text.

    writer thread, after COMMIT   RecentLog.add(rows)       keep the rows (a list extend)
    event loop, a subscription    RecentLog.page(after, …)  the envelopes after `after`, or
                                                            None: read the store instead

What keeps it exact:

* **Only committed rows**, added after COMMIT returned and before the waiters are woken.
* **No gap**: the log holds one run of consecutive positions. A commit that does not follow
  its last position (another process wrote in between, or a commit whose outcome was unknown)
  starts the run over. A page is served only when the run holds `after + 1`, so every event
  from there to the run's end is in it; events past the run's end (another writer's) are
  found by the store read the next time round.
* **The same text** as a read: the envelope is assembled from the stored texts only where
  that gives exactly `pages.encoded_envelope`'s text for the event read back (ASCII JSON
  without floats, whose re-encoding is itself, and no upcaster for its type and schema
  version). Any other event in the page's range answers None: the page is read from the store.
* **Bounded**: at most `MAX_EVENTS` rows and `MAX_BYTES` of stored text.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

import orjson

from eventledger.eventstore.codec import format_time
from eventledger.eventstore.pii import PREFIX
from eventledger.eventstore.planning import Row
from eventledger.eventstore.upcasting import UpcasterRegistry

MAX_EVENTS = 4096
MAX_BYTES = 8 * 1024 * 1024
_UNKNOWN: Any = object()


@dataclass(frozen=True, slots=True)
class RecentEvent:
    position: int
    type: str
    text: str  # the envelope, as pages.encoded_envelope writes it


@dataclass(frozen=True, slots=True)
class RecentPage:
    """The events after a position that match a page's filters. `last` is the position every
    event up to which was looked at; `cut` when the page stopped at its limit or byte bound."""

    events: list[RecentEvent]
    last: int
    cut: bool


class RecentLog:
    """The last committed rows of one store instance; `add` from the writer's thread, `page`
    from any."""

    def __init__(
        self,
        upcasters: UpcasterRegistry,
        *,
        max_events: int = MAX_EVENTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._upcasters = upcasters
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._rows: deque[Row] = deque()
        self._bytes = 0
        # Envelopes made so far, by position (None: only a read can say): the subscriptions
        # with different filters ask for the same events.
        self._texts: dict[int, str | None] = {}

    def add(self, rows: Sequence[Row]) -> None:
        """The rows of one COMMIT, in position order."""
        if not rows:
            return
        size = sum(len(r.data) + len(r.metadata) for r in rows)
        with self._lock:
            if self._rows and self._rows[-1].position + 1 != rows[0].position:
                self._clear()  # a gap: start the run over
            self._rows.extend(rows)
            self._bytes += size
            while self._rows and (
                len(self._rows) > self._max_events or self._bytes > self._max_bytes
            ):
                old = self._rows.popleft()
                self._bytes -= len(old.data) + len(old.metadata)
                self._texts.pop(old.position, None)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._rows.clear()
        self._texts.clear()
        self._bytes = 0

    def page(
        self,
        after: int,
        *,
        limit: int,
        max_bytes: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> RecentPage | None:
        """The page after `after` (bounded like pages.read_log_page: `limit` events, about
        `max_bytes` of envelopes, at least one event), or None when it cannot be served
        from here exactly."""
        with self._lock:
            if not self._rows:
                return None
            first, end = self._rows[0].position, self._rows[-1].position
            if not first - 1 <= after < end:
                return None
            rows = list(itertools.islice(self._rows, after + 1 - first, None))
        events: list[RecentEvent] = []
        size = 0
        wanted = set(types)
        texts = self._texts
        made: dict[int, str | None] = {}
        for row in rows:
            if wanted and row.type not in wanted:
                continue
            if stream_prefix and not row.stream.startswith(stream_prefix):
                continue
            text = texts.get(row.position, _UNKNOWN)
            if text is _UNKNOWN:
                text = made[row.position] = self._envelope(row)
            if text is None:
                self._keep(made)
                return None
            if events and size + len(text) > max_bytes:
                self._keep(made)
                return RecentPage(events, events[-1].position, cut=True)
            events.append(RecentEvent(row.position, row.type, text))
            size += len(text)
            if len(events) >= limit or size >= max_bytes:
                self._keep(made)
                return RecentPage(events, row.position, cut=True)
        self._keep(made)
        return RecentPage(events, end, cut=False)

    def _keep(self, made: dict[int, str | None]) -> None:
        if not made:
            return
        with self._lock:
            if self._rows:  # only for rows still held: a concurrent add may have dropped some
                first, end = self._rows[0].position, self._rows[-1].position
                for position, text in made.items():
                    if first <= position <= end:
                        self._texts[position] = text

    def _envelope(self, row: Row) -> str | None:
        """The envelope of a committed row as a read would serve it, or None when only a
        read can say."""
        if self._upcasters.applies(row.type, row.schema_version) or _sealed(row.data):
            return None
        if not (_plain(row.data) and _plain(row.metadata)):
            return None
        return (
            f'{{"id":"{row.id_text}","stream":{encode_basestring_ascii(row.stream)},'
            f'"type":{encode_basestring_ascii(row.type)},"schema_version":{row.schema_version},'
            f'"data":{row.data},"metadata":{row.metadata},"stream_version":{row.stream_version},'
            f'"position":{row.position},"recorded_at":"{row.recorded_at}","hash":"{row.hash}",'
            f'"batch_end":{row.batch_end}}}'
        )


def _sealed(data: object) -> bool:
    """Whether stored data may hold sealed personal data (pii.py): only a read, which reads
    the account's key, can say what a reader sees of it (opened, or erased since). Never
    kept in memory as opened text, so a forget needs no cache here to be cleared."""
    return type(data) is str and _SEALED in data


_SEALED = f'"{PREFIX}'


def _plain(text: str) -> bool:
    """Whether the stored JSON text is its own compact ASCII re-encoding: ASCII (the stdlib
    escapes nothing else), of an object with no float (whose spelling may change) and no
    integer orjson cannot hold (then we cannot tell)."""
    if text == "{}":
        return True
    if not text.isascii():
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return type(value) is dict and not _has_float(value)


def _has_float(value: dict[str, Any]) -> bool:
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        for v in item.values() if type(item) is dict else item:
            kind = type(v)
            if kind is float:
                return True
            if kind is dict or kind is list:
                todo.append(v)
    return False


_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class StoredEnvelopes:
    """Envelopes of rows read back from the store, assembled from their stored texts where
    that is exactly `pages.encoded_envelope`'s text for the decoded (and upcast) event; None
    where it may not be, and the caller decodes that row. Why: a catch-up page decoded every
    row into a `RecordedEvent` (UUID, datetime, json.loads) only to encode it again.

    Stored rows, unlike the writer's, may come from older code, so each text is checked to be
    its own re-encoding: the id is a canonical UUID, the time is `format_time`'s text of
    itself (checked once per distinct time: an append's events share theirs), and data and
    metadata are ASCII JSON objects without floats that orjson writes back byte for byte."""

    def __init__(self, upcasters: UpcasterRegistry) -> None:
        self._upcasters = upcasters
        self._times: dict[str, bool] = {}

    def text(self, row: tuple[Any, ...]) -> str | None:
        position, event_id, stream, version, type_, schema, data, meta, at, hash_, end = row
        if self._upcasters.applies(type_, schema) or _sealed(data):
            return None
        if not (type(event_id) is str and _UUID_TEXT.fullmatch(event_id)):
            return None
        if not (type(hash_) is str and type(at) is str and self._canonical_time(at)):
            return None
        if not (_canonical(data) and (meta == "{}" or _canonical(meta))):
            return None
        return (
            f'{{"id":"{event_id}","stream":{encode_basestring_ascii(stream)},'
            f'"type":{encode_basestring_ascii(type_)},"schema_version":{schema},'
            f'"data":{data},"metadata":{meta},"stream_version":{version},'
            f'"position":{position},"recorded_at":"{at}","hash":{encode_basestring_ascii(hash_)},'
            f'"batch_end":{end}}}'
        )

    def _canonical_time(self, at: str) -> bool:
        known = self._times.get(at)
        if known is None:
            if len(self._times) > 4096:  # bounded: a page holds at most a few thousand
                self._times.clear()
            try:
                # What a decode then an encode makes of it (sqlite._decode_rows, to_envelope).
                known = format_time(datetime.fromisoformat(at)) == at
            except (ValueError, OverflowError):
                known = False
            self._times[at] = known
        return known


def _canonical(text: object) -> bool:
    """Whether a stored JSON text is the object orjson writes back for it, byte for byte,
    ASCII and without floats (then the stdlib writes it the same: pages.encoded_envelope)."""
    if type(text) is not str or not text.isascii():
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return type(value) is dict and not _has_float(value) and orjson.dumps(value) == text.encode()
