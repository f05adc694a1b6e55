"""The event store interface that every backend implements, and the checks they share.

Semantics every backend guarantees (the contract suite in tests/integration checks them):

* `append_batch` is atomic: every append of the batch is written, or none is.
* Stream versions start at 1 and have no gaps. Global positions strictly increase in the
  order in which events become visible to readers: a reader that has seen position P never
  later sees a newly committed event below P.
* Event ids are permanent deduplication keys. Re-appending events whose ids are already
  stored in the same stream, at the same versions and in the same order, writes nothing and
  returns the original result with `replayed=True` (whatever the expected version says).
  An id stored anywhere else raises `DuplicateEventId`.
* A failed expected-version check raises `WrongExpectedVersion` and writes nothing.
* Events stored in an older schema version are upcast on every read.
* `read_transaction` finds the events of account streams by their `data.transaction_id`
  through an index the store keeps in the same transaction as the append (never by
  scanning the log): the command side finds the events of a transaction it must reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from eventledger.eventstore import pii
from eventledger.eventstore.errors import (
    DuplicateEventId,
    InvalidAppend,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventledger.eventstore.keys import KEY_ATTEMPTS, KEY_WORK, KeyConflict, KeyWork
from eventledger.eventstore.records import (
    EVENT_TYPE,
    STREAM_NAME,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamState,
)
from eventledger.eventstore.upcasting import UpcasterRegistry

if TYPE_CHECKING:  # recent.py builds on planning.py, which builds on this module
    from eventledger.eventstore.planning import Row
    from eventledger.eventstore.recent import RecentPage

MAX_PAGE = 10_000
SEALING_KEYS = 100_000  # accounts whose personal data key a store keeps for sealing
# At most this many events of one transaction are read at once (a transaction writes a few:
# one per account it touches, per step of a two-phase transfer).
MAX_TRANSACTION_EVENTS = 1000
ACCOUNT_STREAMS = ("account-", "account.")  # the range of account stream names: [low, high)


class Placed(Protocol):
    """Where a stored event sits: all the replay rule needs (a RecordedEvent is one)."""

    @property
    def id(self) -> UUID: ...
    @property
    def stream(self) -> str: ...
    @property
    def stream_version(self) -> int: ...
    @property
    def position(self) -> int: ...


class EventStore(ABC):
    """An append-only log of events, organised in streams, with one global order."""

    def __init__(self, *, upcasters: UpcasterRegistry | None = None) -> None:
        self._upcasters = upcasters or UpcasterRegistry()
        # The keys this store sealed with last, by account: for writing only (each append's
        # transaction checks them, keys.py); reads always read the keys.
        self._sealing_keys: dict[str, pii.AccountKey] = {}

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, stream: str, *, expected_version: ExpectedVersion, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Append events to one stream if it is at `expected_version`."""
        (result,) = await self.append_batch([StreamAppend(stream, expected_version, events)])
        return result

    async def append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams atomically: all appends are written, or none.
        Personal data (pii.py) is sealed under its account's key first."""
        validate_batch(appends)
        accounts = pii.accounts_to_seal(appends)
        if not accounts:  # the common append: no key, no work
            return await self._append_batch(appends)
        for _ in range(KEY_ATTEMPTS):
            # Sealed under the keys this store remembers (else reads them); the append's own
            # transaction checks that they are still the accounts' keys, and creates the new
            # ones: a key deleted or created meanwhile fails it (KeyConflict), sealed again.
            keys = {a: k for a in accounts if (k := self._sealing_keys.get(a)) is not None}
            if len(keys) < len(accounts):
                keys.update(await self._load_keys(accounts - keys.keys()))
            created = {a: pii.new_key() for a in accounts if a not in keys}
            used = {a: k.key_id for a, k in keys.items()}
            sealed = pii.seal_appends(appends, {**keys, **created})
            self._sealing({**keys, **created})
            try:
                results = await self._keyed_append(sealed, KeyWork(create=created, use=used))
            except KeyConflict:
                for account in accounts:
                    self._sealing_keys.pop(account, None)
                continue
            self._remember_keys({**keys, **created})
            return results
        raise KeyConflict()

    def _remember_keys(self, keys: Mapping[str, pii.AccountKey]) -> None:
        # Bounded: past the bound it starts over (a miss costs one key read).
        if len(self._sealing_keys) + len(keys) > SEALING_KEYS:
            self._sealing_keys.clear()
        self._sealing_keys.update(keys)

    def _sealing(self, keys: Mapping[str, pii.AccountKey]) -> None:  # noqa: B027 - optional hook
        """Hook: an append is about to be sent sealed under these keys (a store that serves
        its recent commits from memory opens them with these: recent.py)."""

    async def forget(
        self, account_id: str, event: NewEvent, *, expected_version: ExpectedVersion
    ) -> AppendResult:
        """Delete the key of `account_id` and append `event` (its PersonalDataErased) to its
        stream, in one transaction: from the COMMIT on, every read shows its sealed personal
        data erased. A replay of the same event (same id) writes and deletes nothing."""
        appends = [StreamAppend(pii.ACCOUNT_STREAM + account_id, expected_version, [event])]
        validate_batch(appends)
        self._sealing_keys.pop(account_id, None)
        work = KeyWork(erase=(account_id,), notice=str(event.id))
        (result,) = await self._keyed_append(appends, work)
        return result

    async def plaintext_personal_fields(self, account_id: str) -> int:
        """How many personal values of the account's stored events are plaintext (written
        before personal data was sealed): what a forget cannot erase (pii.py)."""
        stream, found, version = pii.ACCOUNT_STREAM + account_id, 0, 1
        while True:
            try:
                page = await self._read_stream(stream, version, MAX_PAGE)
            except StreamNotFound:
                return found
            found += pii.plaintext_fields(page)
            if len(page) < MAX_PAGE:
                return found
            version = page[-1].stream_version + 1

    async def _keyed_append(
        self, appends: Sequence[StreamAppend], work: KeyWork
    ) -> list[AppendResult]:
        # The key work travels beside the batch (a context variable, read by the backend when
        # it queues the request), so `_append_batch`'s signature, which wrappers override,
        # stays the same.
        token = KEY_WORK.set(work)
        try:
            return await self._append_batch(appends)
        finally:
            KEY_WORK.reset(token)

    @abstractmethod
    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Write a validated batch (see the module docstring for the semantics)."""

    # -- reading -------------------------------------------------------------------------

    async def read_stream(
        self, stream: str, *, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of one stream from `from_version` on, oldest first.
        Raises StreamNotFound when the stream has no events."""
        limit = None if limit is None else max(limit, 0)
        events = await self._read_stream(stream, max(from_version, 1), limit)
        return [self._upcasters.upcast(e) for e in await self.reveal(events)]

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
    ) -> list[RecordedEvent]:
        """A page of the global log: events with position > `after`, oldest first."""
        limit = max(1, min(limit, MAX_PAGE))
        events = await self._read_all(max(after, 0), limit, tuple(types or ()), stream_prefix)
        return [self._upcasters.upcast(e) for e in await self.reveal(events)]

    async def read_stored(self, *, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """A page of the global log exactly as stored, never upcast (what the hash chain
        covers: `eventledger verify` reads this)."""
        return await self._read_all(max(after, 0), max(1, min(limit, MAX_PAGE)), (), None)

    async def get_event(self, event_id: UUID) -> RecordedEvent | None:
        """The stored event with this id, or None."""
        event = await self._get_event(event_id)
        return None if event is None else self._upcasters.upcast((await self.reveal([event]))[0])

    async def reveal(self, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
        """The stored events as readers see them: personal data opened, or erased where its
        account's key was deleted (pii.py). Reads the keys only when something is sealed."""
        accounts = pii.accounts_to_open(events)
        if not accounts:
            return list(events)
        return pii.reveal(events, await self._load_keys(accounts))

    async def _load_keys(self, accounts: Collection[str]) -> dict[str, pii.AccountKey]:
        """The current keys of these accounts (absent: none, or deleted by a forget)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no personal data keys")

    async def read_transaction(
        self, transaction_id: str, *, limit: int = 100
    ) -> list[RecordedEvent]:
        """The events of `account-*` streams whose data's `transaction_id` is
        `transaction_id`, oldest first, at most `limit` (1..MAX_TRANSACTION_EVENTS); found by
        the store's index of transaction ids, whatever the length of the log."""
        limit = max(1, min(limit, MAX_TRANSACTION_EVENTS))
        events = await self._read_transaction(transaction_id, limit)
        return [self._upcasters.upcast(e) for e in await self.reveal(events)]

    @abstractmethod
    async def _read_transaction(self, transaction_id: str, limit: int) -> list[RecordedEvent]: ...

    @abstractmethod
    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]: ...

    @abstractmethod
    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]: ...

    @abstractmethod
    async def _get_event(self, event_id: UUID) -> RecordedEvent | None: ...

    @abstractmethod
    async def stream_version(self, stream: str) -> int:
        """The stream's current version; 0 when it does not exist."""

    @abstractmethod
    async def head_position(self) -> int:
        """The position of the newest visible event; 0 when the store is empty."""

    def recent_page(
        self,
        after: int,
        *,
        limit: int,
        max_bytes: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> RecentPage | None:
        """The log page after `after` from the events this instance committed last, without
        I/O (recent.py), or None when the store must be read for it."""
        return None

    async def fill_recent(self, upto: int | None, *, after: int | None = None) -> bool:
        """Extend the recent run (recent.py) toward `upto` (None: whatever follows its end)
        with what other instances committed, read once for every caller asking at the same
        time, when a reader at `after` (None: the stream guard) needs positions past the
        run's end. True when a fill ran. A store that serves only its own commits does
        nothing."""
        return False

    def recent_events(self, stream: str, after_version: int) -> list[tuple[Row, Any]] | None:
        """The events of `stream` after `after_version` from the recent run, each with its
        data as a read gives it, without I/O (RecentLog.stream_events; [] when none up to
        the run's end); None: read the store."""
        return None

    async def live_page(
        self,
        after: int,
        *,
        limit: int,
        max_bytes: int,
        types: tuple[str, ...] = (),
        stream_prefix: str | None = None,
    ) -> RecentPage | None:
        """`recent_page`, served only where it is exact now: a page showing opened personal
        data is served once the store has made sure it heard every forget committed before
        this call (`_forgets_heard`), then made again (a forget heard meanwhile is applied to
        it). None: read the store."""
        page = self.recent_page(
            after, limit=limit, max_bytes=max_bytes, types=types, stream_prefix=stream_prefix
        )
        if page is None or not page.sealed:
            return page
        if not await self._forgets_heard():
            return None
        return self.recent_page(
            after, limit=limit, max_bytes=max_bytes, types=types, stream_prefix=stream_prefix
        )

    async def _forgets_heard(self) -> bool:
        """True once every forget committed before this call (by any instance) has been
        applied to the recent pages; False when the store cannot tell (then read it)."""
        return False

    def known_head(self) -> int:
        """A position known to be committed and visible, without I/O (a lower bound of
        `head_position`, e.g. this instance's last COMMIT); 0 when none is known."""
        return 0

    @abstractmethod
    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait, without busy polling, until an event with position > `after` is visible or
        `timeout` seconds pass. Returns True when there is such an event. A True answer is
        a hint: read with `read_all(after=...)`, which is the truth."""

    @property
    def lease_holder(self) -> bool:
        """Whether this instance holds the writer lease of a shared store (postgres_lease)."""
        return False

    def forward_to(self) -> str | None:
        """Where this instance hands its appends (`POST /appends`): the URL of the stream
        instance that holds the writer lease of a shared store (postgres_lease.py); None
        when this instance writes them itself (always, for a store of one process)."""
        return None

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise StoreUnavailable when the backing database cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""


# -- checks shared by every backend -----------------------------------------------------


def validate_batch(appends: Sequence[StreamAppend]) -> None:
    """Refuse appends that can never succeed, before any backend work."""
    if not appends:
        raise InvalidAppend("a batch needs at least one append")
    streams: set[str] = set()
    ids: set[UUID] = set()
    types: set[str] = set()  # event types already matched
    for append in appends:
        if not isinstance(append.stream, str) or not STREAM_NAME.match(append.stream):
            raise InvalidAppend(f"invalid stream name {append.stream!r}")
        if append.stream in streams:
            raise InvalidAppend(f"stream {append.stream!r} appears twice in one batch")
        streams.add(append.stream)
        expected = append.expected_version
        if not isinstance(expected, StreamState) and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
        ):
            raise InvalidAppend(f"invalid expected version {expected!r}")
        if not append.events:
            raise InvalidAppend(f"append to {append.stream!r} has no events")
        for event in append.events:
            # isinstance first: a wrong type is an InvalidAppend, never a TypeError.
            if not isinstance(event.id, UUID):
                raise InvalidAppend(f"event id {event.id!r} is not a UUID")
            # Each type is matched once per batch (a bulk append has a thousand of one type).
            event_type = event.type
            if type(event_type) is not str or event_type not in types:
                if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
                    raise InvalidAppend(f"invalid event type {event_type!r}")
                types.add(event_type)
            version = event.schema_version
            if type(version) is not int and (
                isinstance(version, bool) or not isinstance(version, int)
            ):
                raise InvalidAppend(f"invalid schema version {version!r}")
            if version < 1:
                raise InvalidAppend(f"invalid schema version {version!r}")
            # `type(...) is dict` first: the common case, without the slower ABC check.
            if not (type(event.data) is dict or isinstance(event.data, Mapping)) or not (
                type(event.metadata) is dict or isinstance(event.metadata, Mapping)
            ):
                raise InvalidAppend(f"the data and metadata of event {event.id} must be objects")
            if event.id in ids:
                raise InvalidAppend(f"event id {event.id} appears twice in one request")
            ids.add(event.id)


def check_expected_version(stream: str, expected: ExpectedVersion, actual: int) -> None:
    """Raise WrongExpectedVersion unless a stream at version `actual` satisfies `expected`."""
    if expected is StreamState.ANY:
        return
    if expected is StreamState.EXISTS:
        ok = actual > 0
    elif expected is StreamState.NO_STREAM:
        ok = actual == 0
    else:
        ok = actual == expected
    if not ok:
        raise WrongExpectedVersion(
            stream, expected.value if isinstance(expected, StreamState) else expected, actual
        )


def classify_replay(
    stream: str, events: Sequence[NewEvent], stored: Sequence[Placed | None]
) -> AppendResult | None:
    """Given the already stored events for each new event's id (None where unknown), return
    the original result when the whole append is an exact replay, None when nothing of it is
    stored yet, and raise DuplicateEventId when it is stored only partly or elsewhere."""
    if all(s is None for s in stored):
        return None
    first = stored[0]
    if len(stored) != len(events):
        raise ValueError("one stored entry (or None) per event")
    for i, old in enumerate(stored):
        if (
            old is None
            or first is None
            or old.stream != stream
            or old.stream_version != first.stream_version + i
        ):
            # Name an id that is stored (elsewhere), not a new one beside it.
            stored_id = old.id if old is not None else next(s.id for s in stored if s)
            raise DuplicateEventId(stored_id, stream)
    assert first is not None
    return AppendResult(
        stream=stream,
        first_version=first.stream_version,
        last_version=first.stream_version + len(events) - 1,
        positions=tuple(s.position for s in stored if s is not None),
        replayed=True,
    )


def classify_batch_replay(
    appends: Sequence[StreamAppend],
    stored: Mapping[UUID, Placed] | Callable[[Sequence[NewEvent]], list[Placed | None]],
) -> list[AppendResult] | None:
    """The batch rule every backend shares: the original results when every append of the
    batch is an exact replay, None when no event of it is stored yet, DuplicateEventId when
    it is stored only in part (some appends replayed, some new) or elsewhere.

    `stored` gives the already stored event for each id: a mapping, or a function that looks
    up the events of one append (None where unknown)."""

    def lookup(events: Sequence[NewEvent]) -> list[Placed | None]:
        if callable(stored):
            return stored(events)
        return [stored.get(e.id) for e in events]

    replays = [classify_replay(a.stream, a.events, lookup(a.events)) for a in appends]
    if all(r is not None for r in replays):
        return [r for r in replays if r is not None]
    for append, replay in zip(appends, replays, strict=True):
        if replay is not None:
            # Part of the batch is stored, part is not: its ids are used elsewhere.
            raise DuplicateEventId(append.events[0].id, append.stream)
    return None
