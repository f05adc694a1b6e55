"""The guard of account streams: the domain's validity rule at the store's door.

The stream service is a general event store, but the read models halt at an event of an
`account-<id>` stream that they cannot apply (balances are money; they never skip). So an
append to account streams is checked, before it is written, with the rule the readers apply
(`domain.validity`): anything a reader would refuse is answered with a 422
`invalid-account-event` problem naming the stream, the event's index and the rule, and
nothing is written.

The rule needs the account's facts at the version the append lands after, so an append to an
account stream must state a numeric `expected_version` (`no_stream` counts as 0; `any` and
`exists` are 422 `expected-version-required`). The guard keeps the facts of recently used
streams (LRU, bounded) and brings them up to date with only the events after the cached
version: from the store's recent log when it holds them (`EventStore.recent_events`: what
another instance wrote a moment ago, already in memory for the live subscribers; no read,
no task), else read from the store. Deciding on the facts at version N is safe because the
store then writes only if the stream is still at N: if it moved, the append is a 409 or an
idempotent replay and nothing new is written. For the same reason a stream already past N
needs no check.

    AccountGuard.check      -> the facts after the batch (or None: nothing to remember)
    AccountGuard.remember   -> keep them once the store has written the batch
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import ACCOUNT_STREAM_PREFIX, Event
from eventledger.domain.validity import AccountFacts, check_batch, check_event, decode_event
from eventledger.eventstore.errors import StreamNotFound, WrongExpectedVersion
from eventledger.eventstore.records import AppendResult, StreamAppend, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.http import ProblemError
from eventledger.services.stream.guard_plain import Move, plain_events, plain_facts
from eventledger.services.stream.guard_snapshots import GuardSnapshots

DEFAULT_CACHE_SIZE = 10_000
_PAGE = 1000
_MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class Checked:
    """What a checked batch will leave: the facts of each account stream it appends to."""

    facts: Mapping[str, AccountFacts]  # by stream
    last_ids: Mapping[str, UUID] = field(default_factory=dict)  # the id of each's last event


class AccountGuard:
    """Checks appends to `account-*` streams with the validity rule, on cached facts."""

    def __init__(
        self, max_size: int = DEFAULT_CACHE_SIZE, *, snapshots: GuardSnapshots | None = None
    ) -> None:
        self._max_size = max_size
        self._snapshots = snapshots  # facts at some version, so a cold stream is not folded
        self.events_read = 0  # stored events folded into facts (a measure for tests/benches)
        self.events_recent = 0  # events folded from the store's recent log (no read)
        self._facts: OrderedDict[str, AccountFacts] = OrderedDict()

    async def check(self, store: EventStore, appends: Sequence[StreamAppend]) -> Checked | None:
        """Raise a 422 problem unless every append to an account stream is valid on the
        facts at its expected version (a 409 WrongExpectedVersion when the stream has not
        reached that version). None when there is nothing to remember afterwards."""
        parts: list[tuple[StreamAppend, int, list[Event] | None, list[Move] | None]] = []
        for append in appends:
            if append.stream.startswith(ACCOUNT_STREAM_PREFIX):
                # Plain events are checked later, without domain objects (guard_plain.py);
                # any other append is decoded now, so that a malformed event is refused
                # before anything is read, as always.
                expected = _expected(append)
                moves = plain_events(append.events)
                decoded = _decoded(append) if moves is None else None
                parts.append((append, expected, decoded, moves))
        if not parts:
            return None
        hot = [self._hot(store, append.stream, expected) for append, expected, _, _ in parts]
        if all(f is not None for f in hot):
            # Every stream's facts are cached at its expected version (a command's usual
            # case): no read, hence no task per stream and no gather.
            found: list[AccountFacts | BaseException | None] = list(hot)
        else:
            found = await self._read_facts(store, [(a, e) for a, e, _, _ in parts])
        facts: dict[str, AccountFacts] = {}
        for stream_facts in found:
            if isinstance(stream_facts, BaseException):
                raise stream_facts
            if stream_facts is None:
                # The stream is past `expected`: the store writes nothing new for this batch.
                return None
            facts[stream_facts.account_id] = stream_facts
        after = _plain_batch(facts, parts)
        if after is None:
            try:
                after = check_batch(
                    facts,
                    [
                        (_account_id(a.stream), _decoded(a) if events is None else events)
                        for a, _, events, _ in parts
                    ],
                )
            except InvalidAccountEvent as exc:
                stream = ACCOUNT_STREAM_PREFIX + (exc.account_id or "")
                raise invalid_event(stream, exc.index, exc) from None
        last_ids = {a.stream: a.events[-1].id for a, _, _, _ in parts if a.events}
        return Checked({ACCOUNT_STREAM_PREFIX + a: f for a, f in after.items()}, last_ids)

    async def _read_facts(
        self, store: EventStore, parts: Sequence[tuple[StreamAppend, int]]
    ) -> list[AccountFacts | BaseException | None]:
        # The facts of every stream at once: a batch over many streams the guard has not seen
        # costs one read's wait, not one per stream (cached streams read nothing).
        # Outcomes are taken in the order of the appends, as if read one after the other.
        return await asyncio.gather(
            *(self._facts_at(store, append.stream, expected) for append, expected in parts),
            return_exceptions=True,
        )

    def remember(self, checked: Checked | None, results: Sequence[AppendResult]) -> None:
        """Keep the facts of a checked batch the store has written (not of a replay: a
        re-sent id only says the original was written, not that its data was the same)."""
        if checked is None:
            return
        for result in results:
            facts = checked.facts.get(result.stream)
            if facts is not None and not result.replayed and facts.version == result.last_version:
                self._put(result.stream, facts)
                event_id = checked.last_ids.get(result.stream)
                if self._snapshots is not None and event_id is not None:
                    self._snapshots.note(facts, event_id, result.first_version - 1)

    def __len__(self) -> int:
        return len(self._facts)

    def _hot(self, store: EventStore, stream: str, expected: int) -> AccountFacts | None:
        """The facts of `stream` at `expected` when they are known without a read, else None."""
        cached = self._facts.get(stream)
        if cached is None:
            # A stream at version 0 has no events: nothing to read (the store checks the 0).
            if expected == 0:
                return AccountFacts(_account_id(stream))
        elif cached.version == expected:
            self._facts.move_to_end(stream)
            return cached  # the hot path: no read at all
        elif cached.version > expected:
            return None
        # Behind: another instance wrote the stream since; its events may be in memory.
        facts = self._from_recent(store, stream, cached or AccountFacts(_account_id(stream)))
        return facts if facts is not None and facts.version == expected else None

    def _from_recent(
        self, store: EventStore, stream: str, facts: AccountFacts
    ) -> AccountFacts | None:
        """`facts` after the events of the store's recent log that follow them, up to its
        end (kept); None when it cannot say, or an event there breaks the rule: the store
        read that follows checks them again and answers in the order of the appends
        (_read_facts)."""
        held = store.recent_events(stream, facts.version)
        if held is None:
            return None
        if not held:
            return facts  # nothing newer up to the log's end
        since = facts.version
        try:
            for row, data in held:
                event = decode_event(row.type, data, schema_version=row.schema_version)
                facts = check_event(facts, event, stream_version=row.stream_version)
        except InvalidAccountEvent:
            return None
        self.events_recent += len(held)
        self._put(stream, facts)
        if self._snapshots is not None:
            self._snapshots.note(facts, held[-1][0].id, since)
        return facts

    async def _facts_at(self, store: EventStore, stream: str, expected: int) -> AccountFacts | None:
        """The facts of `stream` at version `expected`; None when the stream is already past
        it; WrongExpectedVersion when it has not reached it."""
        hot = self._hot(store, stream, expected)
        if hot is not None:
            return hot
        cached = self._facts.get(stream)
        if cached is None or cached.version < expected:
            known = self._from_recent(store, stream, cached or AccountFacts(_account_id(stream)))
            if known is not None and known.version < expected and await store.fill_recent(None):
                # The recent log holds the stream up to its end, and the events up to
                # `expected` (committed: the caller saw them) come after it: another
                # instance's, read into the log once for everyone who needs them (the live
                # subscribers too), then taken from there.
                hot = self._hot(store, stream, expected)
                if hot is not None:
                    return hot
            cached = self._facts.get(stream)
        if cached is not None:
            self._facts.move_to_end(stream)
            if cached.version > expected:
                actual = await store.stream_version(stream)
                if actual > expected:
                    return None
                # Shorter than we knew it: a store that was reset under us. Start over.
                self._facts.pop(stream, None)
                cached = None
        facts = await self._catch_up(store, stream, cached or AccountFacts(_account_id(stream)))
        self._put(stream, facts)
        if facts.version == expected:
            return facts
        if facts.version > expected:
            return None
        raise WrongExpectedVersion(stream, expected, facts.version)

    async def _catch_up(self, store: EventStore, stream: str, facts: AccountFacts) -> AccountFacts:
        """`facts` after the stored events that follow them, read page by page (from a
        trusted snapshot when the guard knows nothing of the stream yet)."""
        since = facts.version
        last_id: UUID | None = None
        start = facts.version + 1
        snapshot = None
        if facts.version == 0 and self._snapshots is not None:
            snapshot = await self._snapshots.trusted(facts.account_id)
            if snapshot is not None:
                # Read from the snapshot's own version: only if the event there has the
                # recorded id is it of this log (else fold the whole stream).
                start = snapshot.facts.version
        while True:
            try:
                page = await store.read_stream(stream, from_version=start, limit=_PAGE)
            except StreamNotFound:
                return AccountFacts(facts.account_id)
            full = len(page)
            if snapshot is not None:
                first = page[0] if page else None
                verified = (
                    first is not None
                    and first.stream_version == start
                    and first.id == snapshot.event_id
                )
                if not verified:
                    snapshot, start = None, 1  # another log at that version: fold it all
                    continue
                facts, since, snapshot = snapshot.facts, snapshot.facts.version, None
                page = page[1:]
            self.events_read += len(page)
            for recorded in page:
                try:
                    event = decode_event(
                        recorded.type, recorded.data, schema_version=recorded.schema_version
                    )
                    facts = check_event(facts, event, stream_version=recorded.stream_version)
                except InvalidAccountEvent as exc:
                    raise invalid_history(stream, recorded.stream_version, exc) from None
                last_id = recorded.id
            if full < _PAGE:
                if self._snapshots is not None and last_id is not None:
                    self._snapshots.note(facts, last_id, since)
                return facts
            start = facts.version + 1

    def _put(self, stream: str, facts: AccountFacts) -> None:
        # Empty streams are not kept: appends to made-up names would only evict real facts.
        if self._max_size <= 0 or facts.version == 0:
            return
        cached = self._facts.get(stream)
        if cached is None or cached.version < facts.version:
            self._facts[stream] = facts
        self._facts.move_to_end(stream)
        while len(self._facts) > self._max_size:
            self._facts.popitem(last=False)


def _plain_batch(
    facts: Mapping[str, AccountFacts],
    parts: Sequence[tuple[StreamAppend, int, list[Event] | None, list[Move] | None]],
) -> dict[str, AccountFacts] | None:
    """The facts after the batch when every append of it is plain (guard_plain.py), else
    None: the full rule decides."""
    after: dict[str, AccountFacts] = {}
    for append, _, _, moves in parts:
        if moves is None:
            return None
        account_id = _account_id(append.stream)
        moved = plain_facts(facts[account_id], moves)
        if moved is None:
            return None
        after[account_id] = moved
    return after


def _account_id(stream: str) -> str:
    return stream[len(ACCOUNT_STREAM_PREFIX) :]


def _expected(append: StreamAppend) -> int:
    expected = append.expected_version
    if expected is StreamState.NO_STREAM:
        return 0
    if isinstance(expected, StreamState):
        raise ProblemError(
            422,
            "expected-version-required",
            "Numeric expected version required",
            f"an append to the account stream {append.stream!r} must state the version it "
            f"expects the stream at (a number, or 'no_stream'), not {expected.value!r}: the "
            "validity of account events depends on the events before them",
            stream=append.stream,
        )
    return expected


def _decoded(append: StreamAppend) -> list[Event]:
    decoded: list[Event] = []
    for index, event in enumerate(append.events):
        try:
            decoded.append(
                decode_event(event.type, event.data, schema_version=event.schema_version)
            )
        except InvalidAccountEvent as exc:
            raise invalid_event(append.stream, index, exc) from None
    return decoded


def invalid_event(stream: str, index: int | None, exc: InvalidAccountEvent) -> ProblemError:
    """422 `invalid-account-event`: event `index` of the append to `stream` breaks a rule."""
    where = f"event {index} of stream {stream!r}" if index is not None else f"stream {stream!r}"
    return ProblemError(
        422,
        "invalid-account-event",
        "Invalid account event",
        f"{where}: {exc.reason[:_MAX_DETAIL]}",
        stream=stream,
        index=index,
        rule=exc.rule,
    )


def invalid_history(stream: str, version: int, exc: InvalidAccountEvent) -> ProblemError:
    """409 `invalid-account-history`: the stored events of `stream` already break the rule at
    `version` (written before the rule, or behind the service's back), so no event can be
    judged after them. The readers are halted there too: an operator's matter."""
    return ProblemError(
        409,
        "invalid-account-history",
        "Invalid account history",
        f"the stored event at version {version} of stream {stream!r} breaks the account "
        f"rules ({exc.reason[:_MAX_DETAIL]}); nothing can be appended after it",
        stream=stream,
        version=version,
        rule=exc.rule,
    )
