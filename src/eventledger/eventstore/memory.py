"""The in-memory event store: for tests and demos. Nothing survives the process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from uuid import UUID

from eventledger.eventstore.codec import format_time, parse_time
from eventledger.eventstore.errors import StreamNotFound
from eventledger.eventstore.hashing import GENESIS, chain, event_content
from eventledger.eventstore.keys import KEY_WORK, MemoryKeys
from eventledger.eventstore.pii import AccountKey
from eventledger.eventstore.planning import encode
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.store import (
    ACCOUNT_STREAMS,
    EventStore,
    check_expected_version,
    classify_batch_replay,
)
from eventledger.eventstore.upcasting import UpcasterRegistry

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryEventStore(EventStore):
    """Keeps the log in a list. Appends run under one lock, so visibility order is position
    order. Safe for one event loop."""

    def __init__(
        self, *, upcasters: UpcasterRegistry | None = None, clock: Clock = utc_now
    ) -> None:
        super().__init__(upcasters=upcasters)
        self._clock = clock
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._by_id: dict[UUID, RecordedEvent] = {}
        self._by_transaction: dict[str, list[RecordedEvent]] = {}  # the SQL stores' index
        self._changed = asyncio.Condition()
        self._keys = MemoryKeys()

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        # Stored as the SQL backends store it: through the same JSON encoding and text rules.
        stored = [[encode(e) for e in a.events] for a in appends]
        keys = KEY_WORK.get()
        async with self._changed:
            # Decide everything before writing anything: the batch is all or nothing.
            self._keys.check(keys)
            replayed = classify_batch_replay(appends, self._by_id)
            if replayed is not None:
                return replayed
            for append in appends:
                actual = len(self._streams.get(append.stream, ()))
                check_expected_version(append.stream, append.expected_version, actual)
            self._keys.apply(keys)
            now = self._clock()
            recorded_at = format_time(now if now.tzinfo else now.replace(tzinfo=UTC))
            batch_end = len(self._log) + sum(len(a.events) for a in appends)
            previous = self._log[-1].hash if self._log else GENESIS
            results = []
            for append, encoded in zip(appends, stored, strict=True):
                stream_events = self._streams.setdefault(append.stream, [])
                first = len(stream_events) + 1
                positions = []
                for event in encoded:
                    content = event_content(
                        id=event.id,
                        stream=append.stream,
                        type=event.type,
                        schema_version=event.schema_version,
                        data=event.canonical_data,
                        metadata=event.canonical_metadata,
                        stream_version=len(stream_events) + 1,
                        position=len(self._log) + 1,
                        recorded_at=recorded_at,
                        batch_end=batch_end,
                    )
                    previous = chain(previous, content)
                    recorded = RecordedEvent(
                        id=event.id,
                        stream=append.stream,
                        type=event.type,
                        schema_version=event.schema_version,
                        data=json.loads(event.data),
                        metadata=json.loads(event.metadata),
                        stream_version=len(stream_events) + 1,
                        position=len(self._log) + 1,
                        recorded_at=parse_time(recorded_at),
                        hash=previous,
                        batch_end=batch_end,
                    )
                    stream_events.append(recorded)
                    self._log.append(recorded)
                    self._by_id[event.id] = recorded
                    transaction_id = recorded.data.get("transaction_id")
                    if isinstance(transaction_id, str) and _is_account_stream(append.stream):
                        self._by_transaction.setdefault(transaction_id, []).append(recorded)
                    positions.append(recorded.position)
                results.append(
                    AppendResult(append.stream, first, len(stream_events), tuple(positions))
                )
            self._changed.notify_all()
            return results

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        events = self._streams.get(stream)
        if not events:
            raise StreamNotFound(stream)
        end = None if limit is None else from_version - 1 + limit
        return events[from_version - 1 : end]

    async def _read_all(
        self, after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None
    ) -> list[RecordedEvent]:
        page: list[RecordedEvent] = []
        for event in self._log[after:]:
            if types and event.type not in types:
                continue
            if stream_prefix and not event.stream.startswith(stream_prefix):
                continue
            page.append(event)
            if len(page) == limit:
                break
        return page

    async def _get_event(self, event_id: UUID) -> RecordedEvent | None:
        return self._by_id.get(event_id)

    async def _load_keys(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        return self._keys.load(accounts)

    async def _read_transaction(self, transaction_id: str, limit: int) -> list[RecordedEvent]:
        return self._by_transaction.get(transaction_id, [])[:limit]

    async def stream_version(self, stream: str) -> int:
        return len(self._streams.get(stream, ()))

    async def head_position(self) -> int:
        return len(self._log)

    def known_head(self) -> int:
        return len(self._log)

    async def wait_for_events(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._changed.wait_for(lambda: len(self._log) > after)
            return len(self._log) > after


def _is_account_stream(stream: str) -> bool:
    return ACCOUNT_STREAMS[0] <= stream < ACCOUNT_STREAMS[1]
