"""What the stream service's lifespan opens and its routes use: the store, the subscriptions,
the account guard (with its snapshots) and the metrics, and the one append path every write
route goes through (erasure appends refused, the guard's check, the store, the metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.records import AppendResult, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.erasure import refuse_erasure_appends
from eventledger.services.stream.forwarding import Forwarder
from eventledger.services.stream.guard_snapshots import GuardSnapshots
from eventledger.services.stream.guards import AccountGuard
from eventledger.services.stream.metrics import StreamMetrics
from eventledger.services.stream.pages import SizeEstimate
from eventledger.services.stream.problems import store_unavailable
from eventledger.services.stream.sse import Subscriptions


class Runtime:
    """What the lifespan opens and the routes use."""

    def __init__(
        self,
        heartbeat: float,
        metrics: StreamMetrics,
        subscriptions: Subscriptions,
        snapshots: GuardSnapshots | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        # Hands POST /appends to the writing instance of a shared store (forwarding.py).
        self.forwarder = forwarder or Forwarder(metrics.registry)
        self.metrics = metrics
        self.subscriptions = subscriptions
        self.estimate = SizeEstimate()  # the encoded size of an event, to size store reads
        # The validity rule of account streams, on cached facts (and snapshots of them).
        self.guard = AccountGuard(snapshots=snapshots)
        self.snapshots = snapshots
        self._snapshot_writer: asyncio.Task[None] | None = None
        self._store: EventStore | None = None

    async def start(self, store: EventStore) -> None:
        self._store = store
        self.metrics.writer_lease.set_function(lambda: float(store.lease_holder))
        self.subscriptions.open(store)
        if self.snapshots is not None:
            self._snapshot_writer = asyncio.create_task(self.snapshots.run())

    async def stop(self) -> None:
        await self.subscriptions.aclose()
        await self.forwarder.close()
        writer, self._snapshot_writer = self._snapshot_writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self.snapshots is not None:
            try:
                await self.snapshots.flush()  # what was noted, not lost to the stop
            except Exception as exc:
                # The app's logger, as before this class moved here: operators filter on it.
                logging.getLogger("eventledger.services.stream.app").warning(
                    "guard snapshots not written: %s", exc
                )
            await self.snapshots.store.close()
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise store_unavailable("the stream service is not started")
        return self._store

    async def append(self, endpoint: str, appends: list[StreamAppend]) -> list[AppendResult]:
        store = self.store
        refuse_erasure_appends(appends)  # only a forget writes PersonalDataErased
        try:
            checked = await self.guard.check(store, appends)
            results = await store.append_batch(appends)
        except EventStoreError as exc:
            self.metrics.refused(endpoint, exc)
            raise  # the app's store error handler answers with the problem document
        self.guard.remember(checked, results)
        replayed = all(r.replayed for r in results)
        self.metrics.appended(
            endpoint, events=sum(len(a.events) for a in appends), replayed=replayed
        )
        return results
