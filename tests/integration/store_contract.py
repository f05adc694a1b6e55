"""The event store contract: one suite, run against every backend.

A backend's test module subclasses `EventStoreContract` and implements `create_store`:

    class TestSqliteEventStore(EventStoreContract):
        async def create_store(self, tmp_path, *, upcasters=None):
            return SqliteEventStore(tmp_path / "events.db", upcasters=upcasters)

Fault injection (a held writer, a refused row, a failing COMMIT) goes through hooks that a
backend overrides where the fault means something for it; the default skips the test.

The suite makes no assumption about the backend: every test uses its own stream names, event
types and stream prefixes (uuids), and never assumes the store starts empty: it measures the
head position first and reasons relative to it, so a shared database is fine. It does not
assume positions are gapless either, only that they strictly increase.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from eventledger.eventstore.errors import (
    DuplicateEventId,
    InvalidAppend,
    StoreOutcomeUnknown,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventledger.eventstore.hashing import GENESIS, event_hash
from eventledger.eventstore.records import (
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamState,
)
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry

ANY, NO_STREAM, EXISTS = StreamState.ANY, StreamState.NO_STREAM, StreamState.EXISTS


def new_stream(kind: str = "stream") -> str:
    return f"{kind}-{uuid4().hex}"


def new_type() -> str:
    return f"Happened{uuid4().hex}"


def new_event(
    event_type: str = "Happened",
    data: Mapping[str, Any] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    schema_version: int = 1,
) -> NewEvent:
    return NewEvent(
        id=uuid4(),
        type=event_type,
        data={"n": 1} if data is None else data,
        metadata={} if metadata is None else metadata,
        schema_version=schema_version,
    )


def new_events(count: int, event_type: str = "Happened") -> list[NewEvent]:
    return [new_event(event_type, {"n": n}) for n in range(1, count + 1)]


async def read_everything(
    store: EventStore, *, after: int, stream_prefix: str | None = None
) -> list[RecordedEvent]:
    """Every event after `after` (optionally under a prefix), paging through the log."""
    events: list[RecordedEvent] = []
    while page := await store.read_all(after=after, limit=500, stream_prefix=stream_prefix):
        events.extend(page)
        after = page[-1].position
    return events


def assert_strictly_increasing(positions: Sequence[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(positions)), positions


class EventStoreContract(ABC):
    """What every EventStore backend guarantees. Not collected itself (no `Test` prefix)."""

    @abstractmethod
    async def create_store(
        self, tmp_path: Path, *, upcasters: UpcasterRegistry | None = None
    ) -> EventStore:
        """A store for one test; the suite closes it."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[EventStore]:
        store = await self.create_store(tmp_path)
        try:
            yield store
        finally:
            await store.close()

    # -- fault injection hooks: a backend overrides those that mean something for it ------

    @contextlib.asynccontextmanager
    async def writes_held(self, store: EventStore) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Hold the lock every append needs (as another writer would) for the block. Yields a
        function that returns once the store has taken every append submitted so far and
        waits for the lock with them."""
        pytest.skip("this backend has no lock to hold")
        yield  # pragma: no cover

    async def refuse_marked_rows(self, store: EventStore, marker: str) -> None:
        """Make the database itself refuse any event whose data has the key `marker` (a rule
        only the database knows, as an operator might add)."""
        pytest.skip("this backend has no database rules")

    @contextlib.contextmanager
    def failing_commit(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch, *, applied: bool
    ) -> Iterator[None]:
        """Make the COMMITs in the block fail with an I/O error, after the COMMIT took effect
        (`applied`) or before."""
        pytest.skip("this backend has no COMMIT that can fail")
        yield  # pragma: no cover

    async def assert_nothing_written(
        self, store: EventStore, *, head: int, streams: Sequence[str], ids: Sequence[UUID]
    ) -> None:
        assert await store.head_position() == head
        for stream in streams:
            assert await store.stream_version(stream) == 0
        for event_id in ids:
            assert await store.get_event(event_id) is None

    # -- stream versions -----------------------------------------------------------------

    async def test_the_first_append_to_a_stream_gets_version_1(self, store: EventStore) -> None:
        stream = new_stream()
        head = await store.head_position()
        result = await store.append(stream, expected_version=NO_STREAM, events=[new_event()])
        assert (result.stream, result.first_version, result.last_version) == (stream, 1, 1)
        assert not result.replayed
        assert len(result.positions) == 1
        assert result.positions[0] > head
        assert await store.stream_version(stream) == 1

    async def test_stream_versions_have_no_gaps_across_appends(self, store: EventStore) -> None:
        stream = new_stream()
        first = await store.append(stream, expected_version=ANY, events=new_events(3))
        second = await store.append(stream, expected_version=3, events=new_events(2))
        third = await store.append(stream, expected_version=ANY, events=new_events(1))
        assert (first.first_version, first.last_version) == (1, 3)
        assert (second.first_version, second.last_version) == (4, 5)
        assert (third.first_version, third.last_version) == (6, 6)
        events = await store.read_stream(stream)
        assert [e.stream_version for e in events] == [1, 2, 3, 4, 5, 6]
        assert await store.stream_version(stream) == 6

    async def test_an_unknown_stream_is_at_version_0(self, store: EventStore) -> None:
        assert await store.stream_version(new_stream()) == 0

    # -- expected versions ---------------------------------------------------------------

    @pytest.mark.parametrize(
        ("existing", "expected"),
        [(0, 0), (0, NO_STREAM), (0, ANY), (2, 2), (2, EXISTS), (2, ANY)],
        ids=["0-at-0", "no_stream-new", "any-new", "2-at-2", "exists-at-2", "any-at-2"],
    )
    async def test_an_append_passes_when_the_stream_is_where_it_is_expected(
        self, store: EventStore, existing: int, expected: ExpectedVersion
    ) -> None:
        stream = new_stream()
        if existing:
            await store.append(stream, expected_version=ANY, events=new_events(existing))
        result = await store.append(stream, expected_version=expected, events=[new_event()])
        assert (result.first_version, result.last_version) == (existing + 1, existing + 1)

    @pytest.mark.parametrize(
        ("existing", "expected"),
        [(0, 1), (0, EXISTS), (2, 0), (2, 1), (2, 3), (2, NO_STREAM)],
        ids=["1-new", "exists-new", "0-at-2", "1-at-2", "3-at-2", "no_stream-at-2"],
    )
    async def test_an_append_fails_when_the_stream_is_elsewhere_and_writes_nothing(
        self, store: EventStore, existing: int, expected: ExpectedVersion
    ) -> None:
        stream = new_stream()
        if existing:
            await store.append(stream, expected_version=ANY, events=new_events(existing))
        head = await store.head_position()
        events = new_events(2)
        with pytest.raises(WrongExpectedVersion) as raised:
            await store.append(stream, expected_version=expected, events=events)
        assert raised.value.stream == stream
        assert raised.value.actual == existing
        assert await store.stream_version(stream) == existing
        assert await store.head_position() == head
        for event in events:
            assert await store.get_event(event.id) is None

    # -- batches -------------------------------------------------------------------------

    async def test_a_batch_is_written_whole_with_one_result_per_append_in_order(
        self, store: EventStore
    ) -> None:
        a, b, c = new_stream("a"), new_stream("b"), new_stream("c")
        await store.append(b, expected_version=NO_STREAM, events=new_events(1))
        head = await store.head_position()
        results = await store.append_batch(
            [
                StreamAppend(a, NO_STREAM, new_events(2)),
                StreamAppend(b, 1, new_events(1)),
                StreamAppend(c, ANY, new_events(3)),
            ]
        )
        assert [r.stream for r in results] == [a, b, c]
        assert [(r.first_version, r.last_version) for r in results] == [(1, 2), (2, 2), (1, 3)]
        positions = [p for r in results for p in r.positions]
        assert len(positions) == 6
        assert positions[0] > head
        assert_strictly_increasing(positions)
        assert await store.head_position() >= positions[-1]

    async def test_a_batch_with_one_wrong_expected_version_writes_nothing_of_any_stream(
        self, store: EventStore
    ) -> None:
        a, b, c = new_stream("a"), new_stream("b"), new_stream("c")
        await store.append(c, expected_version=NO_STREAM, events=new_events(1))
        head = await store.head_position()
        events_a, events_b, events_c = new_events(2), new_events(1), new_events(1)
        with pytest.raises(WrongExpectedVersion) as raised:
            await store.append_batch(
                [
                    StreamAppend(a, NO_STREAM, events_a),
                    StreamAppend(b, ANY, events_b),
                    StreamAppend(c, 5, events_c),
                ]
            )
        assert (raised.value.stream, raised.value.actual) == (c, 1)
        await self.assert_nothing_written(
            store, head=head, streams=[a, b], ids=[e.id for e in events_a + events_b + events_c]
        )
        assert await store.stream_version(c) == 1

    # -- idempotency ---------------------------------------------------------------------

    async def test_re_appending_the_same_events_is_a_replay_that_writes_nothing(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        events = new_events(3)
        await store.append(stream, expected_version=NO_STREAM, events=new_events(1))
        original = await store.append(stream, expected_version=1, events=events)
        head = await store.head_position()
        again = await store.append(stream, expected_version=1, events=events)
        assert again.replayed
        assert (again.first_version, again.last_version, again.positions) == (
            original.first_version,
            original.last_version,
            original.positions,
        )
        assert await store.head_position() == head
        assert await store.stream_version(stream) == 4

    async def test_a_replay_ignores_the_expected_version(self, store: EventStore) -> None:
        stream = new_stream()
        events = new_events(2)
        original = await store.append(stream, expected_version=NO_STREAM, events=events)
        await store.append(stream, expected_version=2, events=new_events(1))
        again = await store.append(stream, expected_version=NO_STREAM, events=events)
        assert again == AppendResult(stream, 1, 2, original.positions, replayed=True)
        assert await store.stream_version(stream) == 3

    async def test_re_sending_a_whole_batch_is_a_replay(self, store: EventStore) -> None:
        a, b = new_stream("a"), new_stream("b")
        batch = [
            StreamAppend(a, NO_STREAM, new_events(2)),
            StreamAppend(b, NO_STREAM, new_events(1)),
        ]
        original = await store.append_batch(batch)
        head = await store.head_position()
        again = await store.append_batch(batch)
        assert all(r.replayed for r in again)
        assert [(r.stream, r.first_version, r.last_version, r.positions) for r in again] == [
            (r.stream, r.first_version, r.last_version, r.positions) for r in original
        ]
        assert await store.head_position() == head

    async def test_an_event_id_stored_in_another_stream_is_refused(self, store: EventStore) -> None:
        a, b = new_stream("a"), new_stream("b")
        event = new_event()
        await store.append(a, expected_version=NO_STREAM, events=[event])
        head = await store.head_position()
        with pytest.raises(DuplicateEventId) as raised:
            await store.append(b, expected_version=ANY, events=[event])
        assert raised.value.event_id == event.id
        await self.assert_nothing_written(store, head=head, streams=[b], ids=[])
        stored = await store.get_event(event.id)
        assert stored is not None and stored.stream == a

    async def test_an_event_id_stored_at_another_version_is_refused(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        first, second = new_event(), new_event()
        await store.append(stream, expected_version=NO_STREAM, events=[first, second])
        head = await store.head_position()
        with pytest.raises(DuplicateEventId):  # same ids, swapped order
            await store.append(stream, expected_version=ANY, events=[second, first])
        with pytest.raises(DuplicateEventId):  # the second event alone at the first place
            await store.append(stream, expected_version=ANY, events=[second, new_event()])
        assert await store.head_position() == head
        assert await store.stream_version(stream) == 2

    async def test_stored_ids_mixed_with_new_ids_are_refused_and_nothing_is_written(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        stored = new_event()
        await store.append(stream, expected_version=NO_STREAM, events=[stored])
        head = await store.head_position()
        fresh = new_event()
        for events in ([stored, fresh], [fresh, stored]):
            with pytest.raises(DuplicateEventId):
                await store.append(stream, expected_version=ANY, events=events)
        assert await store.get_event(fresh.id) is None
        assert await store.stream_version(stream) == 1
        assert await store.head_position() == head

    async def test_a_batch_mixing_a_replay_and_a_new_append_is_refused(
        self, store: EventStore
    ) -> None:
        a, b = new_stream("a"), new_stream("b")
        stored = new_events(2)
        await store.append(a, expected_version=NO_STREAM, events=stored)
        head = await store.head_position()
        fresh = new_events(1)
        with pytest.raises(DuplicateEventId):
            await store.append_batch([StreamAppend(a, 0, stored), StreamAppend(b, ANY, fresh)])
        await self.assert_nothing_written(store, head=head, streams=[b], ids=[fresh[0].id])

    # -- invalid appends -----------------------------------------------------------------

    async def test_an_append_without_events_is_invalid(self, store: EventStore) -> None:
        with pytest.raises(InvalidAppend):
            await store.append(new_stream(), expected_version=ANY, events=[])

    async def test_an_empty_batch_is_invalid(self, store: EventStore) -> None:
        with pytest.raises(InvalidAppend):
            await store.append_batch([])

    @pytest.mark.parametrize(
        "name",
        ["", "-starts-with-dash", "_underscore", "has space", "slash/inside", "x" * 129,
         "trailing-newline\n", "ünïcode", "semi;colon"],
    )  # fmt: skip
    async def test_invalid_stream_names_are_refused(self, store: EventStore, name: str) -> None:
        head = await store.head_position()
        event = new_event()
        with pytest.raises(InvalidAppend):
            await store.append(name, expected_version=ANY, events=[event])
        assert await store.head_position() == head
        assert await store.get_event(event.id) is None

    async def test_the_longest_valid_stream_name_is_accepted(self, store: EventStore) -> None:
        name = ("s" + uuid4().hex + "x" * 128)[:128]
        result = await store.append(name, expected_version=NO_STREAM, events=[new_event()])
        assert result.stream == name
        assert [e.stream for e in await store.read_stream(name)] == [name]

    @pytest.mark.parametrize(
        ("expected", "event_type", "schema_version"),
        [(-1, "Happened", 1), (True, "Happened", 1), ("any", "Happened", 1),
         (ANY, "", 1), (ANY, "1StartsWithDigit", 1), (ANY, "Has Space", 1), (ANY, "Happened", 0)],
        ids=["negative-version", "bool-version", "string-version", "empty-type",
             "type-starts-with-digit", "type-with-space", "schema-version-0"],
    )  # fmt: skip
    async def test_invalid_expected_versions_event_types_and_schema_versions_are_refused(
        self, store: EventStore, expected: Any, event_type: str, schema_version: int
    ) -> None:
        stream = new_stream()
        with pytest.raises(InvalidAppend):
            await store.append(
                stream,
                expected_version=expected,
                events=[new_event(event_type, schema_version=schema_version)],
            )
        assert await store.stream_version(stream) == 0

    @pytest.mark.parametrize(
        "shape",
        [{"id": "0f8c"}, {"type": 7}, {"schema_version": "1"}, {"schema_version": True},
         {"data": [1, 2]}, {"metadata": "correlation"}],
        ids=["id-not-uuid", "type-not-str", "schema-version-str", "schema-version-bool",
             "data-not-object", "metadata-not-object"],
    )  # fmt: skip
    async def test_events_of_the_wrong_shape_are_invalid(
        self, store: EventStore, shape: dict[str, Any]
    ) -> None:
        fields: dict[str, Any] = {"id": uuid4(), "type": "Happened", "data": {}} | shape
        stream = new_stream()
        with pytest.raises(InvalidAppend):
            await store.append(stream, expected_version=ANY, events=[NewEvent(**fields)])
        assert await store.stream_version(stream) == 0

    async def test_the_same_event_id_twice_in_one_request_is_invalid(
        self, store: EventStore
    ) -> None:
        a, b = new_stream("a"), new_stream("b")
        event = new_event()
        with pytest.raises(InvalidAppend):
            await store.append(a, expected_version=ANY, events=[event, event])
        with pytest.raises(InvalidAppend):
            await store.append_batch([StreamAppend(a, ANY, [event]), StreamAppend(b, ANY, [event])])
        assert await store.get_event(event.id) is None

    async def test_the_same_stream_twice_in_a_batch_is_invalid(self, store: EventStore) -> None:
        stream = new_stream()
        with pytest.raises(InvalidAppend):
            await store.append_batch(
                [
                    StreamAppend(stream, NO_STREAM, new_events(1)),
                    StreamAppend(stream, 1, new_events(1)),
                ]
            )
        assert await store.stream_version(stream) == 0

    @pytest.mark.parametrize(
        ("data", "metadata"),
        [({"text": "a\x00b"}, {}), ({"key\x00": 1}, {}), ({"deep": [{"x": ["\x00"]}]}, {}),
         ({}, {"correlation_id": "c\x00"}), ({}, {"\x00": "v"})],
        ids=["value", "key", "nested", "metadata-value", "metadata-key"],
    )  # fmt: skip
    async def test_nul_in_any_text_is_refused_by_every_backend(
        self, store: EventStore, data: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        stream = new_stream()
        event = new_event(data=data, metadata=metadata)
        with pytest.raises(InvalidAppend, match="NUL"):
            await store.append(stream, expected_version=ANY, events=[event])
        assert await store.stream_version(stream) == 0
        assert await store.get_event(event.id) is None

    async def test_a_backslash_u0000_that_is_text_not_nul_is_stored(
        self, store: EventStore
    ) -> None:
        event = new_event(data={"literal": "\\u0000 is text", "also": "\\\\u0000"})
        await store.append(new_stream(), expected_version=NO_STREAM, events=[event])
        stored = await store.get_event(event.id)
        assert stored is not None
        assert stored.data == {"literal": "\\u0000 is text", "also": "\\\\u0000"}

    # -- faults --------------------------------------------------------------------------

    async def test_an_append_whose_caller_gave_up_before_it_was_written_is_not_written(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        first, abandoned, later = new_event(), new_event(), new_event()
        async with self.writes_held(store) as all_taken:
            writing = asyncio.create_task(
                store.append(stream, expected_version=NO_STREAM, events=[first])
            )
            await all_taken()
            gave_up = asyncio.create_task(
                store.append(stream, expected_version=ANY, events=[abandoned])
            )
            await asyncio.sleep(0)  # submitted: it waits for its answer
            gave_up.cancel()
            following = asyncio.create_task(
                store.append(stream, expected_version=ANY, events=[later])
            )
            await asyncio.sleep(0)
        assert (await asyncio.wait_for(writing, 10)).first_version == 1
        assert (await asyncio.wait_for(following, 10)).first_version == 2
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        assert await store.get_event(abandoned.id) is None
        assert [e.id for e in await store.read_stream(stream)] == [first.id, later.id]

    async def test_an_append_the_database_refuses_fails_alone_in_its_group(
        self, store: EventStore
    ) -> None:
        marker = f"poison{uuid4().hex[:8]}"
        await self.refuse_marked_rows(store, marker)
        shared, other = new_stream("shared"), new_stream("other")
        bad = new_event(data={marker: True})
        async with self.writes_held(store) as all_taken:
            blocker = asyncio.create_task(
                store.append(new_stream(), expected_version=ANY, events=[new_event()])
            )
            await all_taken()
            # Queued behind the held lock: these share the next transaction.
            tasks = [
                asyncio.create_task(c)
                for c in (
                    store.append(other, expected_version=NO_STREAM, events=[new_event()]),
                    store.append(shared, expected_version=NO_STREAM, events=[bad]),
                    # Planned as if the refused one were written: decided again without it.
                    store.append(shared, expected_version=1, events=[new_event()]),
                    store.append(shared, expected_version=NO_STREAM, events=[new_event()]),
                    store.append(other, expected_version=1, events=new_events(2)),
                )
            ]
            await asyncio.sleep(0)
        await asyncio.wait_for(blocker, 10)
        first, refused, wrong, late, second = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), 10
        )
        assert isinstance(refused, InvalidAppend)
        assert isinstance(wrong, WrongExpectedVersion) and wrong.actual == 0
        assert isinstance(late, AppendResult) and late.first_version == 1
        assert isinstance(first, AppendResult) and isinstance(second, AppendResult)
        assert (first.first_version, second.first_version, second.last_version) == (1, 2, 3)
        assert await store.get_event(bad.id) is None
        assert [e.stream_version for e in await store.read_stream(other)] == [1, 2, 3]
        assert [e.stream_version for e in await store.read_stream(shared)] == [1]
        assert_strictly_increasing([*first.positions, *late.positions, *second.positions])
        usable = await store.append(shared, expected_version=1, events=[new_event()])
        assert usable.first_version == 2

    @pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
    async def test_a_failed_commit_is_an_unknown_outcome_that_a_retry_with_the_same_ids_settles(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch, applied: bool
    ) -> None:
        await store.append(new_stream(), expected_version=ANY, events=[new_event()])  # warm up
        stream = new_stream()
        events = new_events(2)
        with (
            self.failing_commit(store, monkeypatch, applied=applied),
            pytest.raises(StoreOutcomeUnknown),
        ):
            await store.append(stream, expected_version=NO_STREAM, events=events)
        retried = await store.append(stream, expected_version=NO_STREAM, events=events)
        assert retried.replayed is applied
        assert [e.id for e in await store.read_stream(stream)] == [e.id for e in events]
        more = await store.append(stream, expected_version=2, events=[new_event()])
        assert more.first_version == 3
        await store.ping()

    # -- reading a stream ----------------------------------------------------------------

    async def test_read_stream_from_a_version_with_a_limit(self, store: EventStore) -> None:
        stream = new_stream()
        events = new_events(5)
        await store.append(stream, expected_version=NO_STREAM, events=events)
        page = await store.read_stream(stream, from_version=2, limit=3)
        assert [e.stream_version for e in page] == [2, 3, 4]
        assert [e.id for e in page] == [e.id for e in events[1:4]]
        assert [e.stream_version for e in await store.read_stream(stream, from_version=4)] == [4, 5]
        assert [e.stream_version for e in await store.read_stream(stream, limit=2)] == [1, 2]
        assert [e.data for e in await store.read_stream(stream)] == [{"n": n} for n in range(1, 6)]

    async def test_read_stream_past_its_end_returns_nothing(self, store: EventStore) -> None:
        stream = new_stream()
        await store.append(stream, expected_version=NO_STREAM, events=new_events(2))
        assert await store.read_stream(stream, from_version=3) == []
        assert await store.read_stream(stream, limit=0) == []

    async def test_reading_an_unknown_stream_raises_stream_not_found(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        with pytest.raises(StreamNotFound) as raised:
            await store.read_stream(stream)
        assert raised.value.stream == stream

    # -- reading the global log ----------------------------------------------------------

    async def test_read_all_pages_after_a_position_with_a_limit(self, store: EventStore) -> None:
        prefix = f"page{uuid4().hex}-"
        head = await store.head_position()
        for n in range(5):
            await store.append(f"{prefix}{n % 2}", expected_version=ANY, events=new_events(1))
        first = await store.read_all(after=head, limit=2, stream_prefix=prefix)
        second = await store.read_all(after=first[-1].position, limit=2, stream_prefix=prefix)
        third = await store.read_all(after=second[-1].position, limit=2, stream_prefix=prefix)
        rest = await store.read_all(after=third[-1].position, limit=2, stream_prefix=prefix)
        assert [len(first), len(second), len(third), len(rest)] == [2, 2, 1, 0]
        positions = [e.position for e in first + second + third]
        assert positions[0] > head
        assert_strictly_increasing(positions)
        everything = await store.read_all(after=head, limit=10_000)
        assert [e.position for e in everything if e.stream.startswith(prefix)] == positions

    async def test_read_all_filters_by_type(self, store: EventStore) -> None:
        opened, closed, other = new_type(), new_type(), new_type()
        stream = new_stream()
        head = await store.head_position()
        events = [new_event(t) for t in (opened, other, closed, other, opened)]
        await store.append(stream, expected_version=NO_STREAM, events=events)
        page = await store.read_all(after=head, types=[opened, closed])
        assert [e.type for e in page] == [opened, closed, opened]
        assert [e.stream_version for e in page] == [1, 3, 5]
        assert [e.type for e in await store.read_all(after=head, types=[other], limit=1)] == [other]

    async def test_read_all_filters_by_stream_prefix_literally(self, store: EventStore) -> None:
        # '_' and '.' are legal in stream names: a prefix matches them literally, never as a
        # wildcard (SQL LIKE would treat '_' as one any character).
        tag = uuid4().hex
        head = await store.head_position()
        for stream in (f"acc_{tag}-1", f"accX{tag}-2", f"acc_{tag}-3", f"acc.{tag}-4"):
            await store.append(stream, expected_version=NO_STREAM, events=new_events(1))
        page = await store.read_all(after=head, stream_prefix=f"acc_{tag}-")
        assert [e.stream for e in page] == [f"acc_{tag}-1", f"acc_{tag}-3"]
        combined = await store.read_all(after=head, stream_prefix=f"acc.{tag}", types=["Happened"])
        assert [e.stream for e in combined] == [f"acc.{tag}-4"]
        assert await store.read_all(after=head, stream_prefix=f"acc.{tag}", types=["Other"]) == []

    async def test_positions_strictly_increase_in_the_global_log(self, store: EventStore) -> None:
        prefix = f"order{uuid4().hex}-"
        head = await store.head_position()
        results = []
        for n in range(6):
            stream = f"{prefix}{n % 3}"
            results.append(await store.append(stream, expected_version=ANY, events=new_events(2)))
        written = [p for r in results for p in r.positions]
        assert_strictly_increasing(written)
        logged = await read_everything(store, after=head, stream_prefix=prefix)
        assert [e.position for e in logged] == written
        assert_strictly_increasing([e.position for e in await read_everything(store, after=head)])

    async def test_get_event_returns_the_stored_event_or_none(self, store: EventStore) -> None:
        stream = new_stream()
        event = new_event("Deposited", {"amount": 5}, metadata={"correlation_id": "c-1"})
        result = await store.append(stream, expected_version=NO_STREAM, events=[event])
        stored = await store.get_event(event.id)
        assert stored is not None
        assert (stored.id, stored.stream, stored.type, stored.stream_version) == (
            event.id,
            stream,
            "Deposited",
            1,
        )
        assert stored.position == result.positions[0]
        assert stored.data == {"amount": 5}
        assert stored.metadata == {"correlation_id": "c-1"}
        assert await store.get_event(uuid4()) is None

    async def test_head_position_is_the_newest_position(self, store: EventStore) -> None:
        before = await store.head_position()
        assert before >= 0
        result = await store.append(new_stream(), expected_version=ANY, events=new_events(3))
        assert result.positions[0] > before
        assert await store.head_position() >= result.positions[-1]

    async def test_recorded_events_carry_their_whole_envelope(self, store: EventStore) -> None:
        stream = new_stream()
        event = new_event(
            "Opened", {"currency": "EUR"}, metadata={"causation_id": "x"}, schema_version=2
        )
        await store.append(stream, expected_version=NO_STREAM, events=[event])
        (recorded,) = await store.read_stream(stream)
        assert recorded.id == event.id
        assert recorded.schema_version == 2
        assert recorded.metadata == {"causation_id": "x"}
        offset = recorded.recorded_at.utcoffset()
        assert offset is not None and offset.total_seconds() == 0, "recorded_at is aware UTC"
        assert await store.get_event(event.id) == recorded

    async def test_big_integers_and_unicode_round_trip(self, store: EventStore) -> None:
        data = {
            "max": 2**63 - 1,
            "min": -(2**63),
            "safe": 2**53 - 1,
            "zero": 0,
            "text": '€ 100 — naïve café, 日本語, emoji 🚀, quote " and \\ backslash',
            "nested": {"list": [1, -2, 2**62, None, True, False, "ü"], "empty": {}},
            "ключ": "значение",
        }
        metadata = {"correlation_id": "korrelation-ß", "big": 2**63 - 1}
        stream = new_stream()
        event = new_event("Happened", data, metadata=metadata)
        result = await store.append(stream, expected_version=NO_STREAM, events=[event])
        for read in (
            (await store.read_stream(stream))[0],
            (await store.read_all(after=result.positions[0] - 1))[0],
            await store.get_event(event.id),
        ):
            assert read is not None
            assert read.data == data
            assert read.metadata == metadata
            assert type(read.data["max"]) is int
            assert type(read.data["nested"]["list"][2]) is int

    # -- the hash chain ------------------------------------------------------------------

    async def test_every_event_carries_a_hash_chained_to_the_event_before_it(
        self, store: EventStore
    ) -> None:
        head = await store.head_position()
        tricky = {
            "floats": [1e20, -0.0, 1.5e300, 1e-7, 0.1, 2.5, 1.0],
            "big": 2**70,
            "text": '€ naïve 日本語 🚀 " \\ \u2028',
            "nested": {"z": 1, "a": [True, None, {"y": "ü"}]},
        }
        await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
        await store.append_batch(
            [
                StreamAppend(new_stream(), NO_STREAM, [new_event(data=tricky)]),
                StreamAppend(new_stream(), NO_STREAM, new_events(2)),
            ]
        )
        previous = GENESIS
        if head:
            (before,) = await store.read_stored(after=head - 1, limit=1)
            previous = before.hash
        events = await store.read_stored(after=head, limit=100)
        assert len(events) == 5
        for event in events:
            assert event.hash == event_hash(previous, event), event.position
            previous = event.hash
        assert len({e.hash for e in events}) == 5

    async def test_batch_end_is_the_last_position_of_the_append_batch_that_wrote_the_event(
        self, store: EventStore
    ) -> None:
        single = await store.append(new_stream(), expected_version=NO_STREAM, events=new_events(2))
        batch = await store.append_batch(
            [
                StreamAppend(new_stream(), NO_STREAM, new_events(2)),
                StreamAppend(new_stream(), NO_STREAM, new_events(1)),
            ]
        )
        events = await store.read_all(after=single.positions[0] - 1)
        ends = {e.position: e.batch_end for e in events}
        assert [ends[p] for p in single.positions] == [single.positions[-1]] * 2
        batch_positions = [p for r in batch for p in r.positions]
        assert [ends[p] for p in batch_positions] == [batch_positions[-1]] * 3

    async def test_a_hash_changes_when_anything_in_the_event_changes(
        self, store: EventStore
    ) -> None:
        event = new_event(data={"amount": 100})
        result = await store.append(new_stream(), expected_version=NO_STREAM, events=[event])
        (stored,) = await store.read_stored(after=result.positions[0] - 1, limit=1)
        previous = GENESIS
        if stored.position > 1:
            previous = (await store.read_stored(after=stored.position - 2, limit=1))[0].hash
        assert event_hash(previous, stored) == stored.hash
        for edited in (
            dataclasses.replace(stored, data={"amount": 1000}),
            dataclasses.replace(stored, metadata={"x": 1}),
            dataclasses.replace(stored, stream="other"),
            dataclasses.replace(stored, position=stored.position + 1),
            dataclasses.replace(stored, batch_end=stored.batch_end + 1),
        ):
            assert event_hash(previous, edited) != stored.hash

    # -- waiting for events --------------------------------------------------------------

    async def test_wait_for_events_returns_true_at_once_when_events_are_there(
        self, store: EventStore
    ) -> None:
        result = await store.append(new_stream(), expected_version=ANY, events=new_events(1))
        assert await asyncio.wait_for(store.wait_for_events(result.positions[0] - 1, 10), 2)

    async def test_wait_for_events_returns_true_promptly_when_an_append_happens_while_waiting(
        self, store: EventStore
    ) -> None:
        loop = asyncio.get_running_loop()
        head = await store.head_position()
        waiter = asyncio.create_task(store.wait_for_events(head, 30))
        await asyncio.sleep(0.1)  # let the waiter settle into waiting
        assert not waiter.done()
        appended_at = loop.time()
        await store.append(new_stream(), expected_version=ANY, events=new_events(1))
        assert await asyncio.wait_for(waiter, 5)
        assert loop.time() - appended_at < 1.0

    async def test_wait_for_events_returns_false_after_the_timeout_when_nothing_happens(
        self, store: EventStore
    ) -> None:
        loop = asyncio.get_running_loop()
        after = await store.head_position()
        started = loop.time()
        assert await asyncio.wait_for(store.wait_for_events(after, 0.3), 5) is False
        assert 0.25 <= loop.time() - started < 3

    # -- upcasting -----------------------------------------------------------------------

    async def test_old_events_are_upcast_on_every_read(self, tmp_path: Path) -> None:
        event_type = new_type()
        registry = UpcasterRegistry()
        registry.register(event_type, 1, lambda d: {**d, "currency": "EUR"})
        registry.register(
            event_type, 2, lambda d: {"amount": d["cents"], "currency": d["currency"]}
        )
        store = await self.create_store(tmp_path, upcasters=registry)
        try:
            stream = new_stream()
            old = new_event(event_type, {"cents": 100}, schema_version=1)
            middle = new_event(event_type, {"cents": 200, "currency": "USD"}, schema_version=2)
            current = new_event(event_type, {"amount": 300, "currency": "GBP"}, schema_version=3)
            head = await store.head_position()
            await store.append(stream, expected_version=NO_STREAM, events=[old, middle, current])
            expected = [
                (3, {"amount": 100, "currency": "EUR"}),
                (3, {"amount": 200, "currency": "USD"}),
                (3, {"amount": 300, "currency": "GBP"}),
            ]
            by_stream = await store.read_stream(stream)
            by_log = await store.read_all(after=head, types=[event_type])
            by_id = [await store.get_event(e.id) for e in (old, middle, current)]
            for events in (by_stream, by_log, by_id):
                assert [(e.schema_version, e.data) for e in events if e] == expected
        finally:
            await store.close()

    # -- concurrency ---------------------------------------------------------------------

    async def test_fifty_appends_racing_for_one_version_have_exactly_one_winner(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        await store.append(stream, expected_version=NO_STREAM, events=new_events(1))
        events = new_events(50)

        async def attempt(event: NewEvent) -> AppendResult | WrongExpectedVersion:
            try:
                return await store.append(stream, expected_version=1, events=[event])
            except WrongExpectedVersion as exc:
                return exc

        outcomes = await asyncio.gather(*(attempt(e) for e in events))
        winners = [o for o in outcomes if isinstance(o, AppendResult)]
        losers = [o for o in outcomes if isinstance(o, WrongExpectedVersion)]
        assert len(winners) == 1 and len(losers) == 49
        assert winners[0].first_version == 2
        assert all(loser.actual == 2 for loser in losers)
        stored = await store.read_stream(stream)
        assert [e.stream_version for e in stored] == [1, 2]
        winner_index = outcomes.index(winners[0])
        assert stored[1].id == events[winner_index].id

    async def test_fifty_writers_retrying_on_conflict_get_one_winner_per_version(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        won: list[tuple[int, UUID]] = []

        async def writer() -> None:
            event = new_event()
            for _ in range(200):  # bounded retries: reload the version, try again
                version = await store.stream_version(stream)
                try:
                    result = await store.append(stream, expected_version=version, events=[event])
                except WrongExpectedVersion:
                    await asyncio.sleep(0)
                    continue
                won.append((result.first_version, event.id))
                return
            raise AssertionError("a writer never won a version")

        await asyncio.wait_for(asyncio.gather(*(writer() for _ in range(50))), 30)
        assert sorted(v for v, _ in won) == list(range(1, 51))
        stored = await store.read_stream(stream)
        assert [e.stream_version for e in stored] == list(range(1, 51))
        assert [e.id for e in stored] == [i for _, i in sorted(won)]

    async def test_concurrent_appends_to_different_streams_all_succeed_with_distinct_positions(
        self, store: EventStore
    ) -> None:
        prefix = f"many{uuid4().hex}-"
        head = await store.head_position()
        results = await asyncio.gather(
            *(
                store.append(
                    f"{prefix}{n}", expected_version=NO_STREAM, events=new_events(1 + n % 3)
                )
                for n in range(50)
            )
        )
        assert all(r.first_version == 1 for r in results)
        positions = [p for r in results for p in r.positions]
        assert len(set(positions)) == len(positions) == sum(1 + n % 3 for n in range(50))
        assert min(positions) > head
        logged = await read_everything(store, after=head, stream_prefix=prefix)
        assert [e.position for e in logged] == sorted(positions)

    async def test_a_live_follower_sees_every_event_once_in_order_while_32_writers_append(
        self, store: EventStore
    ) -> None:
        prefix = f"live{uuid4().hex}-"
        start = await store.head_position()
        written: set[UUID] = set()
        seen: list[RecordedEvent] = []
        writers_done = asyncio.Event()

        async def follower() -> None:
            last = start
            while True:
                done = writers_done.is_set()  # read before the page: nothing is missed
                await store.wait_for_events(last, 0.2)
                page = await store.read_all(after=last, limit=100)
                for event in page:
                    assert event.position > last, "a position went backwards"
                    last = event.position
                    if event.stream.startswith(prefix):
                        seen.append(event)
                if done and not page:
                    return

        async def writer(n: int) -> None:
            for i in range(8):
                events = new_events(1 + (n + i) % 3)
                await store.append(f"{prefix}{n}", expected_version=ANY, events=events)
                written.update(e.id for e in events)
                await asyncio.sleep(0)

        following = asyncio.create_task(follower())
        try:
            await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(32))), 30)
            writers_done.set()
            await asyncio.wait_for(following, 30)
        finally:
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
        ids = [e.id for e in seen]
        assert len(ids) == len(set(ids)), "an event was seen twice"
        assert set(ids) == written
        assert_strictly_increasing([e.position for e in seen])

    # -- big appends (the bulk path) -----------------------------------------------------

    @staticmethod
    def varied_events(count: int) -> list[NewEvent]:
        """Events of every shape the encoder treats apart: flat objects (stored in their
        canonical text), nested ones, floats, non-ASCII text, metadata or none."""
        shapes: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"n": 0, "ref": None, "ok": True, "who": "a-1"}, {}),
            ({"n": 0, "nested": {"z": [1, 2.5, {"y": "ü"}]}}, {"correlation_id": "c"}),
            ({"n": 0, "float": 1.0, "big": 2**70}, {}),
            ({"n": 0, "text": '€ 日本語 🚀 " \\ \u2028', "b": False}, {"x": {"y": 1}}),
        ]
        events = []
        for n in range(count):
            data, metadata = shapes[n % len(shapes)]
            events.append(new_event("Bulk", {**data, "n": n}, metadata=metadata))
        return events

    async def assert_chain_holds(self, store: EventStore, positions: Sequence[int]) -> None:
        """Each stored event at `positions` carries the hash of its content chained to the
        event before it (as `verify` recomputes it)."""
        first = positions[0]
        previous = GENESIS
        if first > 1:
            previous = (await store.read_stored(after=first - 2, limit=1))[0].hash
        stored = await store.read_stored(after=first - 1, limit=len(positions))
        assert [e.position for e in stored] == list(positions)
        for event in stored:
            assert event.hash == event_hash(previous, event), event.position
            previous = event.hash

    async def test_a_thousand_event_append_stores_what_a_thousand_single_appends_store(
        self, store: EventStore
    ) -> None:
        bulk_stream, single_stream = new_stream(), new_stream()
        bulk_events, single_events = self.varied_events(1000), self.varied_events(1000)
        result = await store.append(bulk_stream, expected_version=NO_STREAM, events=bulk_events)
        assert (result.first_version, result.last_version) == (1, 1000)
        assert_strictly_increasing(result.positions)
        assert len(result.positions) == 1000
        # A thousand appends of one event each, sent together (group commit writes them in a
        # few transactions; their order in the stream is not the point here).
        await asyncio.gather(
            *(store.append(single_stream, expected_version=ANY, events=[e]) for e in single_events)
        )
        bulk = await store.read_stream(bulk_stream)
        single = await store.read_stream(single_stream)
        assert [e.stream_version for e in single] == list(range(1, 1001))

        def content(e: RecordedEvent) -> tuple[object, ...]:
            return (e.type, e.schema_version, e.data, e.metadata)

        assert sorted(map(content, bulk), key=lambda c: c[2]["n"]) == sorted(  # type: ignore[index]
            map(content, single),
            key=lambda c: c[2]["n"],  # type: ignore[index]
        )
        assert [e.data for e in bulk] == [e.data for e in bulk_events]
        assert [e.id for e in bulk] == [e.id for e in bulk_events]
        assert {e.batch_end for e in bulk} == {result.positions[-1]}
        await self.assert_chain_holds(store, result.positions)
        await self.assert_chain_holds(store, sorted(e.position for e in single))

    async def test_a_thousand_event_append_with_one_stored_id_in_the_middle_writes_nothing(
        self, store: EventStore
    ) -> None:
        elsewhere = new_event()
        await store.append(new_stream(), expected_version=NO_STREAM, events=[elsewhere])
        head = await store.head_position()
        events = new_events(1000)
        events[500] = dataclasses.replace(events[500], id=elsewhere.id)
        stream = new_stream()
        with pytest.raises(DuplicateEventId) as raised:
            await store.append(stream, expected_version=NO_STREAM, events=events)
        assert raised.value.event_id == elsewhere.id
        await self.assert_nothing_written(
            store, head=head, streams=[stream], ids=[e.id for e in events[1::50]]
        )
        # The same events without the stored one go in whole.
        del events[500]
        result = await store.append(stream, expected_version=NO_STREAM, events=events)
        assert (result.first_version, result.last_version) == (1, 999)

    async def test_a_thousand_event_append_with_one_id_twice_is_refused_before_writing(
        self, store: EventStore
    ) -> None:
        head = await store.head_position()
        events = new_events(1000)
        events[700] = dataclasses.replace(events[700], id=events[300].id)
        stream = new_stream()
        with pytest.raises(InvalidAppend):
            await store.append(stream, expected_version=NO_STREAM, events=events)
        await self.assert_nothing_written(
            store, head=head, streams=[stream], ids=[e.id for e in events[::50]]
        )

    async def test_a_thousand_event_append_sent_again_is_a_replay(self, store: EventStore) -> None:
        stream = new_stream()
        events = self.varied_events(1000)
        first = await store.append(stream, expected_version=NO_STREAM, events=events)
        head = await store.head_position()
        again = await store.append(stream, expected_version=NO_STREAM, events=events)
        assert again.replayed
        assert (again.first_version, again.last_version, again.positions) == (
            1,
            1000,
            first.positions,
        )
        assert await store.head_position() == head

    async def test_big_appends_written_together_each_get_their_own_answer(
        self, store: EventStore
    ) -> None:
        """Concurrent 1,000-event appends share group commits; one with a wrong expected
        version fails alone, the others are written whole and in one order."""
        streams = [new_stream() for _ in range(4)]
        expected: list[ExpectedVersion] = [NO_STREAM, NO_STREAM, 5, NO_STREAM]
        outcomes = await asyncio.gather(
            *(
                store.append(s, expected_version=v, events=new_events(1000))
                for s, v in zip(streams, expected, strict=True)
            ),
            return_exceptions=True,
        )
        assert isinstance(outcomes[2], WrongExpectedVersion)
        written = [o for i, o in enumerate(outcomes) if i != 2]
        assert all(isinstance(o, AppendResult) and o.last_version == 1000 for o in written)
        positions = sorted(p for o in written if isinstance(o, AppendResult) for p in o.positions)
        assert len(set(positions)) == 3000
        with pytest.raises(StreamNotFound):
            await store.read_stream(streams[2])

    async def test_pages_of_several_types_come_in_position_order_each_event_once(
        self, store: EventStore
    ) -> None:
        head = await store.head_position()
        a, b, c = new_type(), new_type(), new_type()
        stream = new_stream()
        kinds = [a, b, c, a, a, b, c, c, b, a] * 3
        await store.append(
            stream, expected_version=NO_STREAM, events=[new_event(k, {"n": n}) for n, k in
                                                        enumerate(kinds)]
        )  # fmt: skip
        expected = [n for n, k in enumerate(kinds) if k in (a, b)]
        seen: list[int] = []
        after = head
        while page := await store.read_all(after=after, limit=4, types=[b, a, b]):
            assert len(page) <= 4
            seen.extend(e.data["n"] for e in page)
            after = page[-1].position
        assert seen == expected

    # -- the index of transaction ids (read_transaction) -----------------------------------

    async def test_read_transaction_finds_the_account_events_of_one_transaction_in_order(
        self, store: EventStore
    ) -> None:
        tx, other = str(uuid4()), str(uuid4())
        alice, bob = new_stream("account"), new_stream("account")
        marker = new_stream("reversal")
        await store.append(alice, expected_version=NO_STREAM, events=[new_event("Opened")])
        written = await store.append_batch(
            [
                StreamAppend(alice, 1, [new_event("Sent", {"transaction_id": tx, "amount": 5})]),
                StreamAppend(bob, NO_STREAM, [new_event("Got", {"transaction_id": tx})]),
                # Not an account stream: not in the answer, though its data says `tx`.
                StreamAppend(marker, NO_STREAM, [new_event("Marked", {"transaction_id": tx})]),
            ]
        )
        await store.append(alice, expected_version=2, events=[
            new_event("Deposited", {"transaction_id": other}),
            new_event("Noted", {"transaction_id": 7, "note": tx}),  # not a string id
        ])  # fmt: skip
        found = await store.read_transaction(tx)
        assert [(e.stream, e.type, e.data) for e in found] == [
            (alice, "Sent", {"transaction_id": tx, "amount": 5}),
            (bob, "Got", {"transaction_id": tx}),
        ]
        assert [e.position for e in found] == [written[0].positions[0], written[1].positions[0]]
        assert [e.type for e in await store.read_transaction(other)] == ["Deposited"]
        assert await store.read_transaction(str(uuid4())) == []
        assert len(await store.read_transaction(tx, limit=1)) == 1

    async def test_read_transaction_sees_nothing_of_an_append_that_failed(
        self, store: EventStore
    ) -> None:
        tx, stream = str(uuid4()), new_stream("account")
        await store.append(stream, expected_version=NO_STREAM, events=new_events(1))
        with pytest.raises(WrongExpectedVersion):
            await store.append(
                stream, expected_version=5, events=[new_event("X", {"transaction_id": tx})]
            )
        assert await store.read_transaction(tx) == []

    async def test_read_transaction_upcasts_what_it_reads(self, tmp_path: Path) -> None:
        upcasters = UpcasterRegistry()
        upcasters.register("Old", 1, lambda data: {**data, "upcast": True})
        store = await self.create_store(tmp_path, upcasters=upcasters)
        try:
            tx = str(uuid4())
            event = new_event("Old", {"transaction_id": tx}, schema_version=1)
            await store.append(new_stream("account"), expected_version=ANY, events=[event])
            (found,) = await store.read_transaction(tx)
            assert found.data == {"transaction_id": tx, "upcast": True}
        finally:
            await store.close()
