"""The tail of the log, kept in memory so that live subscribers (and the stream guard) are
served what was just committed without reading it back from the database.

Why: every commit woke the subscriptions, which read the new events back (a thread hop, a
query, a decode into `RecordedEvent`s) only to encode them again as envelopes. The writer
already holds those events as `Row`s, their data and metadata as the stored JSON text. With
several instances writing one PostgreSQL log, the rows another instance committed are read
back once (`fill`), for every subscriber filter and the guard together, instead of once per
filter per wake-up.

    writer, after COMMIT       RecentLog.add(rows)          this instance's rows
    store, for a waiter        RecentLog.fill(after, rows)  the rows after `after`, read once
    event loop, a subscriber   RecentLog.page(after, …)     the envelopes after `after`, or
                                                            None: read the store instead
    the guard                  RecentLog.stream_events(…)   an account's newest events

What keeps it exact:

* **Only committed rows**: added after COMMIT returned and before the waiters are woken, or
  read from the store (committed, by definition).
* **No gap**: the log serves one run of consecutive positions. A page is served only when
  the run holds `after + 1`, so every event from there to the run's end is in it; events
  past the run's end are filled in or read from the store. A commit of ours that does not
  follow the run's end (another instance wrote in between) is kept aside (`fills=True`,
  bounded) until a fill brings the rows between, then joins the run; a store that cannot
  fill (SQLite: `fills=False`), or an aside past its bound, starts the run over at the gap,
  as it always did. `fill` is given the rows with positions `after + 1, after + 2, …` read
  in one statement: the store guarantees they are exactly the log's next rows (PostgreSQL:
  positions are gapless and commit in order, postgres.py); rows already held are skipped,
  rows of ours kept aside are taken instead of their copies, and rows that do not follow
  on are never added.
* **The same text** as a read: the envelope is assembled from the stored texts only where
  that gives exactly `pages.encoded_envelope`'s text for the event read back (ASCII JSON
  without floats, whose re-encoding is itself, and no upcaster for its type and schema
  version). Any other event in the page's range answers None: the page is read from the store.
  A filled row's texts come from the database (the store normalises them as for its own,
  `_as_read`), its hash and batch end are checked (`Filled`).
* **Bounded**: at most `MAX_EVENTS` rows and `MAX_BYTES` of stored text in the run, and a
  quarter of each aside.

Personal data (pii.py): a row of ours whose `owner`/`reference` is sealed is served opened,
with the key this instance sealed it under (`remember_keys`, before the append is sent),
opened once and shared by every subscriber. A filled row (another instance's) is never opened
here: its page, and its events for the guard, are left to a read. A forget makes an opened
text wrong, so the log forgets it:

* **Here**: `add` sees the PersonalDataErased row of a forget this instance committed, before
  the forget's caller is answered, and drops the account's opened texts and key; rows of the
  account up to that position are never opened again from memory (`_floors`). A filled
  PersonalDataErased row does the same at its position.
* **Elsewhere**: another instance's forget is heard by the store (PostgreSQL: a NOTIFY sent
  in the forget's own transaction, postgres_listener.py), which calls `forget_account`;
  rows of the account up to this log's end (aside included) are never opened again. The
  store confirms, before serving a page that `sealed` marks, that it has heard every forget
  committed before the request (EventStore.live_page); when it cannot (its listener is
  down), `forget_all`.

Rows after a floor of their account were sealed after the forget (each append's transaction
checks its key is still the account's: keys.py), under a new key: opening them is right.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

import orjson

from eventledger.eventstore import pii
from eventledger.eventstore.codec import format_time
from eventledger.eventstore.pii import PREFIX, AccountKey
from eventledger.eventstore.planning import Row
from eventledger.eventstore.upcasting import UpcasterRegistry

MAX_EVENTS = 4096
MAX_BYTES = 8 * 1024 * 1024
MAX_KEYS = 4096  # keys remembered to open rows with; past it, start over (a miss: a store read)
ERASURE = "PersonalDataErased"  # domain/events.py: written with the deletion of a key
_UNKNOWN: Any = object()
# pages.encode_json: the data of an opened row re-encoded as a read encodes it (compact, ASCII)
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


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
    sealed: bool = False  # shows opened personal data: only served once forgets are heard


class Filled(Row):
    """A row another instance committed, read back from the store (`RecentLog.fill`). Its
    personal data is never opened here (sealed: only a read can say), and its hash and batch
    end are served only when the store had them (a row of older code may not: then "" and
    0, and only a read can say)."""

    __slots__ = ()


class RecentLog:
    """The tail of the log as one store instance knows it; `add` from the writer's thread,
    the rest from any."""

    def __init__(
        self,
        upcasters: UpcasterRegistry,
        *,
        max_events: int = MAX_EVENTS,
        max_bytes: int = MAX_BYTES,
        fills: bool = False,
    ) -> None:
        self._upcasters = upcasters
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._rows: deque[Row] = deque()  # the run: consecutive positions
        self._bytes = 0
        # The positions of each stream's rows in the run, oldest first (the guard's lookup).
        self._streams: dict[str, list[int]] = {}
        # Rows of ours past a gap, in position order (maybe with gaps between them), until a
        # fill joins them to the run; only for a store that fills (else a gap clears the run).
        self._fills = fills
        self._aside: deque[Row] = deque()
        self._aside_bytes = 0
        # Envelopes made so far, by position (None: only a read can say): the subscriptions
        # with different filters ask for the same events.
        self._texts: dict[int, str | None] = {}
        # Personal data: the keys to open rows with, the positions whose text is opened, the
        # rows never opened from memory again (an account's up to its floor, all up to
        # `_floor`), and a count of forgets, so that a text opened while one was heard is
        # not kept.
        self._keys: dict[str, AccountKey] = {}
        self._opened: set[int] = set()
        self._floors: dict[str, int] = {}
        self._floor = 0
        self._forgets = 0
        self._applied: deque[str] = deque(maxlen=64)  # event ids of the forgets added here

    def add(self, rows: Sequence[Row]) -> None:
        """The rows of one COMMIT of ours, in position order."""
        if not rows:
            return
        with self._lock:
            end = self._rows[-1].position if self._rows else 0
            if self._rows and rows[0].position <= end:
                # Read back by a fill before the writer got here: the same committed rows.
                rows_past = [r for r in rows if r.position > end]
            else:
                rows_past = list(rows)
            if rows_past:
                if self._aside or (self._rows and end + 1 != rows_past[0].position):
                    if self._fills:
                        self._set_aside(rows_past)  # a gap: until a fill brings what is between
                    else:
                        self._clear()  # a gap: start the run over
                        self._extend(rows_past)
                else:
                    self._extend(rows_past)
                self._trim()
            for row in rows:
                if row.type == ERASURE and (account := pii.account_of(row.stream)) is not None:
                    self._forget(account, row.position)  # before its caller is answered
                    self._applied.append(row.id_text)

    def fill(self, after: int, rows: Sequence[Row]) -> None:
        """The log's rows after `after` (positions `after + 1, …`, as one read of the store
        gave them: committed, consecutive, nothing left out), another instance's among them.
        They extend the run when they reach its end, or start it over at `after` when the
        run ends before `after`; rows of ours kept aside join it."""
        if not rows or rows[0].position != after + 1:
            return
        with self._lock:
            end = self._rows[-1].position if self._rows else 0
            if self._rows and self._rows[0].position - 1 <= after <= end:
                start = end - after  # rows already held are skipped
            elif self._rows and after < end:
                return  # a fill from before the run: nothing it can join exactly
            else:
                self._clear()  # the run ends before `after` (or is empty): start it there
                start = 0
            last = self._rows[-1].position if self._rows else after
            aside = self._aside
            erased: list[tuple[str, int]] = []
            for row in itertools.islice(rows, start, None):
                if row.position != last + 1:
                    break  # not the store's promise: keep what joined exactly
                while aside and aside[0].position < row.position:
                    self._drop_aside()  # before a run started over at `after`
                if aside and aside[0].position == row.position:
                    self._aside_bytes -= _size(aside[0])
                    row = aside.popleft()  # ours: opened with our keys
                elif row.type == ERASURE and (account := pii.account_of(row.stream)) is not None:
                    erased.append((account, row.position))
                self._push(row)
                last = row.position
            self._join()
            self._trim()
            for account, position in erased:
                self._forget(account, position)

    def fill_start(self, after: int | None, upto: int | None, limit: int) -> int | None:
        """Where a fill of at most `limit` rows should read from for a reader at `after`
        (None: anywhere, the guard) that needs the run to reach `upto` (None: past its end);
        None when no fill is needed or it would not serve that reader (far behind the run:
        read the store)."""
        with self._lock:
            if upto is None:
                upto = (self._rows[-1].position if self._rows else 0) + 1
            if not self._rows:
                start = after if after is not None and upto - after <= limit else None
            else:
                first, end = self._rows[0].position, self._rows[-1].position
                if after is None or first - 1 <= after <= end:
                    start = end
                elif after > end:
                    start = end if upto - end <= limit else after
                    if upto - start > limit:
                        start = None  # far ahead of the run and behind the head: read
                else:
                    start = None
        return start if start is not None and start < upto else None

    def clear(self) -> None:
        with self._lock:
            self._clear()
            while self._aside:
                self._drop_aside()

    def _clear(self) -> None:
        self._rows.clear()
        self._streams.clear()
        self._texts.clear()
        self._opened.clear()
        self._bytes = 0

    def _push(self, row: Row) -> None:
        self._rows.append(row)
        self._bytes += _size(row)
        positions = self._streams.get(row.stream)
        if positions is None:
            self._streams[row.stream] = [row.position]
        else:
            positions.append(row.position)

    def _extend(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self._push(row)

    def _trim(self) -> None:
        while self._rows and (len(self._rows) > self._max_events or self._bytes > self._max_bytes):
            old = self._rows.popleft()
            self._bytes -= _size(old)
            self._texts.pop(old.position, None)
            self._opened.discard(old.position)
            positions = self._streams[old.stream]
            if len(positions) == 1:
                del self._streams[old.stream]
            else:
                del positions[0]

    def _set_aside(self, rows: Sequence[Row]) -> None:
        self._aside.extend(rows)
        self._aside_bytes += sum(_size(r) for r in rows)
        while self._aside and (
            len(self._aside) > self._max_events // 4 or self._aside_bytes > self._max_bytes // 4
        ):
            # Past the bound, the oldest row kept aside goes to the run as a commit always
            # did: past a gap, the run starts over there.
            row = self._aside.popleft()
            self._aside_bytes -= _size(row)
            if self._rows and self._rows[-1].position + 1 != row.position:
                self._clear()
            self._push(row)
        self._join()

    def _join(self) -> None:
        """Move the rows kept aside that now follow the run's end (or start an empty run)."""
        aside = self._aside
        while aside:
            end = self._rows[-1].position if self._rows else None
            if end is not None and aside[0].position <= end:
                self._drop_aside()
            elif end is None or aside[0].position == end + 1:
                self._aside_bytes -= _size(aside[0])
                self._push(aside.popleft())
            else:
                return

    def _drop_aside(self) -> None:
        self._aside_bytes -= _size(self._aside.popleft())

    @property
    def end(self) -> int:
        """The position of the last row of the run (0: none)."""
        with self._lock:
            return self._rows[-1].position if self._rows else 0

    def _held_end(self) -> int:
        """The highest position held, aside included (0: none)."""
        end = self._rows[-1].position if self._rows else 0
        return max(end, self._aside[-1].position) if self._aside else end

    def remember_keys(self, keys: Mapping[str, AccountKey]) -> None:
        """The keys an append is about to be sealed under (before it is sent: a subscriber
        woken by its COMMIT finds them)."""
        if not keys:
            return
        with self._lock:
            if len(self._keys) + len(keys) > MAX_KEYS:
                self._keys.clear()
            self._keys.update(keys)

    def forget_account(self, account: str, event_id: str = "", *, floor: int = 0) -> None:
        """Another instance forgot `account` (by its event `event_id`): no row of it up to
        `floor` (the highest position of a COMMIT sent before the forget was heard), nor any
        held now, is opened from memory again; rows committed later were sealed after that
        forget, under a new key. A forget this log added itself (`add`) was applied at its
        position."""
        with self._lock:
            if event_id and event_id in self._applied:
                return
            self._forget(account, max(floor, self._held_end()))

    def forget_all(self, *, floor: int = 0) -> None:
        """Forgets may have been missed (the store's listener was down): no row up to `floor`,
        nor any held now, is opened from memory again."""
        with self._lock:
            self._forgets += 1
            self._floor = max(self._floor, floor, self._held_end())
            self._keys.clear()
            for position in self._opened:
                self._texts.pop(position, None)
            self._opened.clear()

    def _forget(self, account: str, floor: int) -> None:
        self._forgets += 1
        self._keys.pop(account, None)
        if floor > self._floors.get(account, 0):
            self._floors[account] = floor
        stream = pii.ACCOUNT_STREAM + account
        for row in self._rows:
            if row.position in self._opened and row.stream == stream:
                self._texts.pop(row.position, None)
                self._opened.discard(row.position)
        if len(self._floors) > MAX_KEYS:  # floors below the held rows mean nothing any more
            first = self._rows[0].position if self._rows else self._floor
            self._floors = {a: f for a, f in self._floors.items() if f >= first}
            if len(self._floors) > MAX_KEYS:  # (bounded whatever happens: the safe side)
                self._floors.clear()
                self._floor = max(self._floor, self._held_end())

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
            forgets = self._forgets
        events: list[RecentEvent] = []
        size = 0
        wanted = set(types)
        texts = self._texts
        made: dict[int, str | None] = {}
        made_opened: set[int] = set()
        holds_opened = False
        cut = False
        last = end
        for row in rows:
            if wanted and row.type not in wanted:
                continue
            if stream_prefix and not row.stream.startswith(stream_prefix):
                continue
            text = texts.get(row.position, _UNKNOWN)
            if text is _UNKNOWN:
                text, was_opened = self._envelope(row)
                made[row.position] = text
                if was_opened:
                    made_opened.add(row.position)
            if text is None:
                self._keep(made, made_opened, forgets)
                return None
            if events and size + len(text) > max_bytes:
                cut, last = True, events[-1].position
                break
            holds_opened = holds_opened or row.position in made_opened or _opened(row)
            events.append(RecentEvent(row.position, row.type, text))
            size += len(text)
            if len(events) >= limit or size >= max_bytes:
                cut, last = True, row.position
                break
        if not self._keep(made, made_opened, forgets) and holds_opened:
            return None  # a forget was heard while this page was made: read the store
        return RecentPage(events, last, cut, sealed=holds_opened)

    def stream_events(self, stream: str, after_version: int) -> list[tuple[Row, Any]] | None:
        """The run's events of `stream` after `after_version`, oldest first, each with its
        data as a read decodes it, when the run holds all of them up to its end ([]: none
        up to the run's end); None when only a read can say: the run does not reach back to
        `after_version + 1`, or an event's data may read otherwise (an upcaster applies,
        sealed personal data, not plain JSON: see `_plain`)."""
        with self._lock:
            positions = self._streams.get(stream)
            if not positions:
                return None
            first = self._rows[0].position
            held: list[Row] = []
            for position in reversed(positions):
                row = self._rows[position - first]
                if row.stream_version <= after_version:
                    break  # versions follow positions: the rest are older
                held.append(row)
            else:
                if not held or held[-1].stream_version != after_version + 1:
                    return None  # older events of it are before the run
        events: list[tuple[Row, Any]] = []
        for row in reversed(held):
            if self._upcasters.applies(row.type, row.schema_version) or _sealed(row.data):
                return None
            data = _plain_object(row.data)
            if data is None:
                return None
            events.append((row, data))
        return events

    def _keep(self, made: dict[int, str | None], opened: set[int], forgets: int) -> bool:
        """Keep the texts made for rows still held, except opened ones when a forget was
        heard meanwhile (then False: they may show what was just erased)."""
        if not made:  # the common live page: every text made already, no lock to take
            return forgets == self._forgets
        with self._lock:
            fresh = forgets == self._forgets
            if self._rows:  # only rows still held: a concurrent add may drop some
                first, end = self._rows[0].position, self._rows[-1].position
                for position, text in made.items():
                    if first <= position <= end and (fresh or position not in opened):
                        self._texts[position] = text
                        if position in opened:
                            self._opened.add(position)
            return fresh

    def _envelope(self, row: Row) -> tuple[str | None, bool]:
        """The envelope of a committed row as a read would serve it, or None when only a
        read can say; and whether it shows opened personal data."""
        if self._upcasters.applies(row.type, row.schema_version):
            return None, False
        if not (_plain(row.data) and _plain(row.metadata)):
            return None, False
        data = row.data
        opened = False
        hash_ = row.hash
        if type(row) is Filled:
            if not hash_ or not row.batch_end:
                return None, False
            hash_ = encode_basestring_ascii(hash_)[1:-1]  # from the database: escaped as a read
        if _sealed(data) and (account := pii.account_of(row.stream)) is not None:
            if type(row) is Filled:
                return None, False  # another instance's: never opened here
            opened_data = self._opened_data(row, account)
            if opened_data is None:
                return None, False
            data, opened = opened_data, opened_data != row.data
        return (
            f'{{"id":"{row.id_text}","stream":{encode_basestring_ascii(row.stream)},'
            f'"type":{encode_basestring_ascii(row.type)},"schema_version":{row.schema_version},'
            f'"data":{data},"metadata":{row.metadata},"stream_version":{row.stream_version},'
            f'"position":{row.position},"recorded_at":"{row.recorded_at}","hash":"{hash_}",'
            f'"batch_end":{row.batch_end}}}'
        ), opened

    def _opened_data(self, row: Row, account: str) -> str | None:
        """The row's data with its sealed personal data opened, as a read encodes it; None
        when only a read can say (no key here, another key, or a forget since)."""
        with self._lock:
            key = self._keys.get(account)
            floor = max(self._floor, self._floors.get(account, 0))
        if key is None or row.position <= floor:
            return None
        data = orjson.loads(row.data)  # _plain: a dict
        for field in pii.FIELDS:
            value = data.get(field)
            if not pii.is_sealed(value):
                continue
            if pii.key_id_of(value) != key.key_id:
                return None
            try:
                data[field] = pii.open_sealed(key, value, event_id=row.id, field=field)
            except pii.PersonalDataUnreadable:
                return None  # a read raises it
        # What pages.encoded_envelope writes for the opened data: compact, ASCII (a plaintext
        # outside ASCII is escaped, as the standard library does for the whole envelope).
        return _encode_json(data)


def _opened(row: Row) -> bool:
    return _sealed(row.data) and row.stream.startswith(pii.ACCOUNT_STREAM)


def _sealed(data: object) -> bool:
    """Whether stored data may hold sealed personal data (pii.py): what a reader sees of it
    depends on the account's key (opened, or erased since)."""
    return type(data) is str and _SEALED in data


_SEALED = f'"{PREFIX}'


def _plain(text: str) -> bool:
    """Whether the stored JSON text is its own compact ASCII re-encoding: ASCII (the stdlib
    escapes nothing else), of an object with no float (whose spelling may change) and no
    integer orjson cannot hold (then we cannot tell)."""
    return text == "{}" or _plain_object(text) is not None


def _plain_object(text: str) -> dict[str, Any] | None:
    """The object a plain text (`_plain`) holds, as a read decodes it; None if not plain."""
    if not text.isascii():
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if type(value) is dict and not has_float(value) else None


def _size(row: Row) -> int:
    return len(row.data) + len(row.metadata)


def has_float(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a float is anywhere in a JSON object or array of exact JSON types (what
    orjson gives), however deep."""
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
    return type(value) is dict and not has_float(value) and orjson.dumps(value) == text.encode()
