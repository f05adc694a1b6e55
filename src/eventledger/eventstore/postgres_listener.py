"""How `PostgresEventStore.wait_for_events` learns of new events: LISTEN/NOTIFY as a hint,
the `event_position` table as the truth.

    writer:   COMMIT; then, in the same message, `notify_statement`: NOTIFY
              eventledger_events '<schema>:<head>'
    listen:   one LISTEN connection per store (not from the pool), reconnecting after
              failures; a payload for its schema advances the `HeadWatch`. After each
              (re)connect, and every RECHECK_INTERVAL while someone waits, it reads the head
              itself: NOTIFYs sent while it was disconnected are lost.
    waiters:  `HeadWatch.wait_for_events` reads the head from the table, and sleeps until the
              watch passes the mark (or the deadline).

Forgets (pii.py) reach every instance on the same channel, so that none serves from memory
the personal data another one erased (recent.py):

    forget:   in the forget's own transaction: NOTIFY eventledger_events
              '<schema>:forget:<event id>:<account>' (delivered once it commits, in order)
    listen:   calls `HeadWatch.on_forget(event id, account)`; after each (re)connect, `on_connect()`
              (forgets sent while disconnected are lost: the recent pages forget everything)
    barrier:  `HeadWatch.barrier` sends '<schema>:sync:<instance>:<n>' from another session
              and waits until this listener hears it. PostgreSQL delivers the notifications
              of different transactions in commit order, so every forget committed before
              the barrier began has been heard (and applied) by then. Callers that arrive
              before a barrier's NOTIFY is sent share it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import psycopg
from psycopg.conninfo import conninfo_to_dict

from eventledger.eventstore.postgres_schema import Connection

logger = logging.getLogger(__name__)

CHANNEL = "eventledger_events"  # NOTIFY payload: "<schema>:<head position>"
RECHECK_INTERVAL = 1.0  # seconds; re-read the head while someone waits, in case a NOTIFY was lost

# Sent right after COMMIT, in the same message; the payload names the committed head. A NOTIFY
# gets a transaction id, so its own little transaction would wait for a second WAL flush; it
# carries no data, so it commits asynchronously (set_config(..., true): this transaction only).
_NOTIFY = (
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify('{channel}', '{schema}:'"
    " || last) FROM event_position WHERE id = 1"
)


def notify_statement(schema: str) -> str:
    """The statement that tells listeners, sent after the COMMIT and outside the transaction:
    NOTIFY inside it would serialise the commits of the whole database on the notification
    queue lock. A hint only: listeners read the head from the table, and re-check it every
    second. `schema` is a checked name (check_schema_name: no quote)."""
    return _NOTIFY.format(channel=CHANNEL, schema=schema)


def forget_notice(schema: str, event_id: str, account: str) -> str:
    """The payload announcing a forget of `account` by its event `event_id` (sent in the
    forget's transaction)."""
    return f"{schema}:forget:{event_id}:{account}"


def _ignore_forget(event_id: str, account: str) -> None:
    return None


def _nothing() -> None:
    return None


class HeadWatch:
    """The newest head this process has heard of, and the tasks waiting for it to pass a mark;
    what it hears of forgets, and the barriers that wait for them."""

    def __init__(
        self,
        *,
        on_forget: Callable[[str, str], None] = _ignore_forget,
        on_connect: Callable[[], None] = _nothing,
    ) -> None:
        self.head = 0
        self.waiters = 0
        self.confirmed_at = -RECHECK_INTERVAL  # loop time the head was last read from the table
        self._advanced = asyncio.Event()
        self.on_forget = on_forget
        self.on_connect = on_connect
        self.connected = False  # listening now: forgets are heard
        self.instance = secrets.token_hex(8)
        self._syncs: dict[str, asyncio.Future[bool]] = {}
        self._unsent: asyncio.Future[bool] | None = None  # a barrier callers may still join
        self._sequence = 0

    async def barrier(
        self,
        send: Callable[[str], Awaitable[None]],
        timeout: float,  # noqa: ASYNC109
    ) -> bool:
        """True once every notification committed before this call was heard (`send`
        NOTIFYs the payload it is given, from another session); False when not listening,
        on the send's failure, or after `timeout`."""
        if not self.connected:
            return False
        future = self._unsent
        if future is None:
            self._sequence += 1
            token = f"{self.instance}:{self._sequence}"
            future = self._unsent = asyncio.get_running_loop().create_future()
            self._syncs[token] = future
            task = asyncio.create_task(self._send(token, future, send))
            task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            return False

    async def _send(
        self, token: str, future: asyncio.Future[bool], send: Callable[[str], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(0)  # the callers of this turn of the loop share it
        # From here on the NOTIFY may be on its way: a later caller waits for the next one.
        self._unsent = None
        try:
            await send(token)
        except Exception as exc:
            logger.info("barrier NOTIFY failed: %s", exc)
            self._syncs.pop(token, None)
            if not future.done():
                future.set_result(False)
        else:
            # Heard, or not within RECHECK_INTERVAL (lost with the connection): never waited
            # for forever, and the dict stays bounded.
            asyncio.get_running_loop().call_later(RECHECK_INTERVAL * 5, self._expire, token)

    def _expire(self, token: str) -> None:
        future = self._syncs.pop(token, None)
        if future is not None and not future.done():
            future.set_result(False)

    def heard_sync(self, token: str) -> None:
        future = self._syncs.pop(token, None)
        if future is not None and not future.done():
            future.set_result(True)

    def disconnected(self) -> None:
        """The listener lost its connection: forgets go unheard until it is back."""
        self.connected = False
        for future in self._syncs.values():
            if not future.done():
                future.set_result(False)
        self._syncs.clear()

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
        known: Callable[[], int] = lambda: 0,
    ) -> bool:
        """True once the head read by `read_head` is above `after`; False after `timeout`.
        `known` is a head known committed and visible without a read (this process's own
        commits, answered by PostgreSQL): above `after`, it is the answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            if known() > after:
                # Woken by our own commit (`advance` after COMMIT returned): a read of the
                # table would say what its answer said (it cost the feed a query a commit).
                return True
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
                # Forgets committed while nobody listened are unknown: forget everything.
                watch.on_connect()
                watch.connected = True
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
        finally:
            watch.disconnected()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _hear(payload: str, schema: str, watch: HeadWatch) -> None:
    payload_schema, _, head = payload.rpartition(":")
    if payload_schema == schema and head.isdigit():
        watch.advance(int(head))
        return
    # Schema names have no colon (check_schema_name); account ids may.
    payload_schema, _, rest = payload.partition(":")
    if payload_schema != schema:
        return
    kind, _, value = rest.partition(":")
    if kind == "forget":
        event_id, _, account = value.partition(":")
        watch.on_forget(event_id, account)
    elif kind == "sync":
        watch.heard_sync(value)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _listener_name(conninfo: str) -> str:
    name = conninfo_to_dict(conninfo).get("application_name") or "eventledger"
    return f"{name}:listener"


async def _head(conn: Connection) -> int:
    cur = await conn.execute("SELECT last FROM event_position WHERE id = 1")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
