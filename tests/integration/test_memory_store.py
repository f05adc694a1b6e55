"""The in-memory event store against the store contract."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry
from tests.integration.store_contract import EventStoreContract


class TestMemoryEventStore(EventStoreContract):
    async def create_store(
        self, tmp_path: Path, *, upcasters: UpcasterRegistry | None = None
    ) -> EventStore:
        return MemoryEventStore(upcasters=upcasters)

    @contextlib.asynccontextmanager
    async def writes_held(self, store: EventStore) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        assert isinstance(store, MemoryEventStore)

        async def all_taken() -> None:
            for _ in range(3):  # each append runs up to the lock within one turn of the loop
                await asyncio.sleep(0)

        async with store._changed:
            yield all_taken
