"""Schema evolution: events stored in an older shape are read in the current shape.

An upcaster turns the `data` of one event type from schema version N into version N+1.
The registry chains them, so an event stored at version 1 is read at the newest version
on every read path (stream reads, the global log, subscriptions), whichever backend stored it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from eventledger.eventstore.records import RecordedEvent

Upcaster = Callable[[Mapping[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    """Upcasters keyed by (event type, the schema version they upgrade from)."""

    def __init__(self) -> None:
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        key = (event_type, from_version)
        if key in self._upcasters:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
        self._upcasters[key] = upcaster

    def applies(self, event_type: str, schema_version: int) -> bool:
        """Whether an event of this type and schema version is changed by `upcast`."""
        return (event_type, schema_version) in self._upcasters

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """Return the event in its newest known shape (the same object when nothing applies)."""
        version = event.schema_version
        upcaster = self._upcasters.get((event.type, version))
        if upcaster is None:
            return event
        data: Mapping[str, Any] = event.data
        while upcaster is not None:
            data = upcaster(data)
            version += 1
            upcaster = self._upcasters.get((event.type, version))
        return dataclasses.replace(event, data=data, schema_version=version)
