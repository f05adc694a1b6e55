"""The composition root: the one place that picks concrete adapters and wires services.

Nothing is connected at import time; `build_app` returns an app whose lifespan opens
what it needs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI

from eventledger.config import Settings
from eventledger.domain.upcasters import UPCASTERS
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry


def build_upcasters() -> UpcasterRegistry:
    registry = UpcasterRegistry()
    for event_type, from_version, upcaster in UPCASTERS:
        registry.register(event_type, from_version, upcaster)
    return registry


async def open_event_store(url: str, *, allow_unsafe_durability: bool = False) -> EventStore:
    """Open the event store named by `url` (sqlite:///…, postgresql://…, memory://)."""
    scheme = urlsplit(url).scheme
    upcasters = build_upcasters()
    if scheme == "memory":
        from eventledger.eventstore.memory import MemoryEventStore

        return MemoryEventStore(upcasters=upcasters)
    if scheme == "sqlite":
        from eventledger.eventstore.sqlite import SqliteEventStore

        return SqliteEventStore.from_url(url, upcasters=upcasters)
    from eventledger.eventstore.postgres import PostgresEventStore

    return await PostgresEventStore.open(
        url, upcasters=upcasters, allow_unsafe_durability=allow_unsafe_durability
    )


def build_app(service: str, settings: Settings) -> FastAPI:
    """The ASGI app of one service, wired to its adapters."""
    if service == "stream":
        from eventledger.services.stream.app import create_app as create_stream

        store_url = settings.store_url()
        unsafe = settings.allow_unsafe_durability

        async def open_store() -> EventStore:
            return await open_event_store(store_url, allow_unsafe_durability=unsafe)

        return create_stream(open_store=open_store)
    if service == "transaction":
        from eventledger.services.transaction.app import create_app as create_transaction

        return create_transaction(stream_url=settings.url("stream"))
    if service in ("accounting", "statistics"):
        from eventledger.services.readside.db import ReadModelDB, open_readmodel_db

        url = settings.readmodel_url(service)

        def open_db() -> ReadModelDB:
            return open_readmodel_db(url, namespace=service)

        if service == "accounting":
            from eventledger.services.accounting.app import create_app as create_accounting

            return create_accounting(stream_url=settings.url("stream"), open_db=open_db)
        from eventledger.services.statistics.app import create_app as create_statistics

        return create_statistics(stream_url=settings.url("stream"), open_db=open_db)
    raise ValueError(f"unknown service {service!r}")
