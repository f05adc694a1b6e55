"""The stream service's own Prometheus metrics, on the app's registry (next to the HTTP ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from eventledger.eventstore.errors import (
    DuplicateEventId,
    EventStoreError,
    InvalidAppend,
    StoreUnavailable,
    WrongExpectedVersion,
)

OUTCOMES = (
    "created",
    "replayed",
    "wrong_expected_version",
    "duplicate_event_id",
    "invalid",
    "unavailable",
    "error",
)


def outcome_of(exc: EventStoreError) -> str:
    if isinstance(exc, WrongExpectedVersion):
        return "wrong_expected_version"
    if isinstance(exc, DuplicateEventId):
        return "duplicate_event_id"
    if isinstance(exc, InvalidAppend):
        return "invalid"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    return "error"


class StreamMetrics:
    """Events appended, append requests by endpoint and outcome, live and refused subscribers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_appended = Counter(
            "eventledger_stream_events_appended",
            "Events newly written to the store (idempotent replays not counted)",
            registry=registry,
        )
        self._appends = Counter(
            "eventledger_stream_appends",
            "Append requests that reached the store, by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.subscribers = Gauge(
            "eventledger_stream_subscribers",
            "Server-Sent Events subscriptions currently open",
            registry=registry,
        )
        self.writer_lease = Gauge(
            "eventledger_stream_writer_lease_held",
            "1 while this instance holds the writer lease of a shared PostgreSQL store (the "
            "others hand it their POST /appends), 0 otherwise",
            registry=registry,
        )
        self.subscriptions_refused = Counter(
            "eventledger_stream_subscriptions_refused",
            "Subscriptions refused because a subscriber cap was reached (503)",
            registry=registry,
        )
        # Bind the label children once: this is on the append hot path.
        self._children = {
            (endpoint, outcome): self._appends.labels(endpoint, outcome)
            for endpoint in ("stream", "batch", "appends")
            for outcome in OUTCOMES
        }

    def appended(self, endpoint: str, *, events: int, replayed: bool) -> None:
        self._children[endpoint, "replayed" if replayed else "created"].inc()
        if not replayed:
            self.events_appended.inc(events)

    def refused(self, endpoint: str, exc: EventStoreError) -> None:
        self._children[endpoint, outcome_of(exc)].inc()
