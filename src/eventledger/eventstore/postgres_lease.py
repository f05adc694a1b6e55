"""Which stream instance writes: a lease among the instances of one PostgreSQL store.

Every instance may append at any time: the global order is the `event_position` row lock's,
whoever takes it. But two instances that both commit take turns on that lock with half-size
group commits, and each reads back the other's rows for its subscribers: measured on 2 cores,
a second writing instance cost the system a third of its throughput (bench/scale.py). So the
instances that say where they can be reached (`advertise_url`) elect one writer, and the
others hand it their `POST /appends` (services/stream/forwarding.py) while it answers.

    lease:    a session advisory lock on one dedicated connection (`WRITER_LOCK` of the
              schema); whoever holds it writes its URL into `stream_writer`. The lock ends
              with the holder's session: a killed writer's lease is free at once, and the
              others try to take it every `interval`.
    writer:   the others read `stream_writer` every `interval`, and only while the lock is
              held (pg_locks): a URL is never older than one interval, nor a dead holder's.

The lease is a preference, never a guarantee anyone relies on: an instance that cannot reach
the writer appends itself, and two instances that both believe they hold it are as correct
as any two writers.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from eventledger.eventstore.postgres_schema import Connection, advisory_lock_key

logger = logging.getLogger(__name__)

WRITER_LOCK = "\0writer"  # the name of the lease's advisory lock (advisory_lock_key)
LEASE_INTERVAL = 1.0  # seconds between two looks at the lease

_CLAIM = """
INSERT INTO stream_writer (id, url, since) VALUES (1, %s, now())
ON CONFLICT (id) DO UPDATE SET url = excluded.url, since = excluded.since
"""
# The holder's URL, while the lock is held by a live session (of this database).
_WRITER = """
SELECT w.url FROM stream_writer w
WHERE w.id = 1 AND EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = %s AND l.objid::bigint = %s
)
"""


class WriterLease:
    """This instance's view of who writes: `writer` is the URL to hand appends to, None when
    this instance holds the lease or nobody is known to. Started by `run` (a task)."""

    def __init__(self, conninfo: str, schema: str, url: str, *, interval: float = LEASE_INTERVAL):
        if not 0 < interval <= 60:
            raise ValueError(f"interval must be in (0, 60] seconds, not {interval!r}")
        self.url = url
        self.interval = interval
        self.holder = False
        self.writer: str | None = None
        self._conninfo = conninfo
        key = advisory_lock_key(schema, WRITER_LOCK)
        self._key = key
        # pg_locks shows a bigint key as two oids: the high and the low 32 bits.
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        self._halves = (unsigned >> 32, unsigned & 0xFFFF_FFFF)

    async def run(self) -> None:
        """Hold or watch the lease until cancelled, reconnecting after failures."""
        delay = self.interval
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    delay = self.interval
                    while True:
                        await self._look(conn)
                        await asyncio.sleep(self.interval)
            except psycopg.Error as exc:
                logger.info("writer lease lost its connection, reconnecting: %s", exc)
            except Exception:
                logger.exception("writer lease failed, restarting")
            finally:
                # With the session went the lock, and what we knew may be old.
                if self.holder:
                    logger.info("this instance no longer holds the writer lease")
                self.holder = False
                self.writer = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10 * self.interval)

    async def _look(self, conn: Connection) -> None:
        if not self.holder:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", [self._key])
            row = await cursor.fetchone()
            if row is not None and row[0]:
                await conn.execute(_CLAIM, [self.url])
                self.holder = True
                self.writer = None
                logger.info("this instance holds the writer lease (%s)", self.url)
                return
        else:
            await conn.execute("SELECT 1")  # the session, and with it the lock, still here
            return
        cursor = await conn.execute(_WRITER, list(self._halves))
        row = await cursor.fetchone()
        url = row[0] if row is not None else None
        self.writer = url if isinstance(url, str) and url != self.url else None
