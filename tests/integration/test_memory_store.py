"""The in-memory event store against the store contract."""

from __future__ import annotations

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
