"""How `PostgresEventStore.wait_for_events` learns of new events: LISTEN/NOTIFY as a hint,
the `event_position` table as the truth.

    writer:   COMMIT; then `send_notify`: NOTIFY eventledger_events '<schema>:<head>'
    listen:   one LISTEN connection per store (not from the pool), reconnecting after
              failures; a payload for its schema advances the `HeadWatch`. After each
              (re)connect, and every RECHECK_INTERVAL while someone waits, it reads the head
              itself: NOTIFYs sent while it was disconnected are lost.
    waiters:  `HeadWatch.wait_for_events` reads the head from the table, and sleeps until the
              watch passes the mark (or the deadline).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import psycopg
from psycopg.conninfo import conninfo_to_dict

from eventledger.eventstore.postgres_schema import Connection

logger = logging.getLogger(__name__)

CHANNEL = "eventledger_events"  # NOTIFY payload: "<schema>:<head position>"
RECHECK_INTERVAL = 1.0  # seconds; re-read the head while someone waits, in case a NOTIFY was lost

# Sent right after COMMIT, in the same pipeline; the payload names the committed head. A NOTIFY
# gets a transaction id, so its own little transaction would wait for a second WAL flush; it
# carries no data, so it commits asynchronously (set_config(..., true): this transaction only).
_NOTIFY = (
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s || last)"
    " FROM event_position WHERE id = 1"
)


async def send_notify(conn: Connection, schema: str) -> None:
    """Tell listeners, after the COMMIT and outside the transaction: NOTIFY inside it would
    serialise the commits of the whole database on the notification queue lock. A hint
    only: listeners read the head from the table, and re-check it every second."""
    await conn.execute(_NOTIFY, [CHANNEL, f"{schema}:"])


class HeadWatch:
    """The newest head this process has heard of, and the tasks waiting for it to pass a mark."""

    def __init__(self) -> None:
        self.head = 0
        self.waiters = 0
        self.confirmed_at = -RECHECK_INTERVAL  # loop time the head was last read from the table
        self._advanced = asyncio.Event()

    def advance(self, head: int) -> None:
        if head > self.head:
            self.head = head
            self._advanced.set()
            self._advanced = asyncio.Event()

    def correct(self, head: int) -> None:
        """The table says `head`: forget a newer hint (e.g. the schema was recreated)."""
        self.head = min(self.head, head)

    async def wait_for_events(
        self,
        after: int,
        timeout: float,  # noqa: ASYNC109
        *,
        read_head: Callable[[], Awaitable[int]],
    ) -> bool:
        """True once the head read by `read_head` is above `after`; False after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            hint = self.head
            fresh = self.confirmed_at + RECHECK_INTERVAL - loop.time()
            remaining = deadline - loop.time()
            if hint <= after and fresh > 0 and remaining > 0:
                # Nothing new heard, and the table was read less than RECHECK_INTERVAL ago: a
                # query would only say so again (it cost the feed one per commit of another
                # instance). Wait for a NOTIFY, at most until that read is stale or the
                # deadline, then read: the answer is always the table's, and a lost NOTIFY or
                # a failing store is found as before, within a second.
                await self.wait_past(after, min(remaining, fresh))
                continue
            head = await read_head()  # the table is the truth; a wake-up is a hint
            self.confirmed_at = loop.time()
            if head > after:
                self.advance(head)
                return True
            if hint > after and self.head == hint:
                self.correct(head)  # a hint the table contradicts (schema recreated?)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.wait_past(after, remaining)

    async def wait_past(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiters += 1
        try:
            while self.head <= after:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await self._advanced.wait()
                except TimeoutError:
                    return False
            return True
        finally:
            self.waiters -= 1


async def listen(conninfo: str, schema: str, watch: HeadWatch) -> None:
    """Keep one LISTEN connection, reconnecting after failures, and advance `watch` with
    what it hears for `schema`. After each (re)connect, and every RECHECK_INTERVAL while
    someone waits, read the head: NOTIFYs sent while disconnected are lost. Runs until
    cancelled."""
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, application_name=_listener_name(conninfo)
            )
            async with conn:
                await conn.execute("LISTEN " + CHANNEL)
                watch.advance(await _head(conn))
                checked = watch.confirmed_at = loop.time()
                delay = 0.05
                while True:
                    notes = conn.notifies(timeout=RECHECK_INTERVAL, stop_after=1)
                    async with aclosing(notes):
                        async for note in notes:
                            _hear(note.payload, schema, watch)
                    if watch.waiters and loop.time() - checked >= RECHECK_INTERVAL:
                        watch.advance(await _head(conn))
                        checked = watch.confirmed_at = loop.time()
        except psycopg.Error as exc:
            logger.info("event listener lost its connection, reconnecting: %s", exc)
        except Exception:
            logger.exception("event listener failed, restarting")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _hear(payload: str, schema: str, watch: HeadWatch) -> None:
    payload_schema, _, head = payload.rpartition(":")
    if payload_schema == schema and head.isdigit():
        watch.advance(int(head))


def _listener_name(conninfo: str) -> str:
    name = conninfo_to_dict(conninfo).get("application_name") or "eventledger"
    return f"{name}:listener"


async def _head(conn: Connection) -> int:
    cur = await conn.execute("SELECT last FROM event_position WHERE id = 1")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
