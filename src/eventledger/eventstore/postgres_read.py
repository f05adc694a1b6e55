"""The PostgreSQL store's reads as statements prepared once per connection, planned once.

Every read on the hot paths (a command loads its stream, a subscriber's page, a wake-up reads
the head) used to be parsed and planned by the server on each call: 0.3-0.9 ms of planning a
`read_all` page with the events table's indexes, more than running it. Here each read is a
named `PREPARE` in the session of the pooled connection that first runs it, sent in the same
message as its first `EXECUTE` (no extra round trip), and run by name after that:

    PREPARE eventledger_read_all(bigint, bigint) AS SELECT ...;   only on a connection's first
    SET LOCAL plan_cache_mode = force_generic_plan;               then each time, one message
    EXECUTE eventledger_read_all(41, 500)

Why not psycopg's own prepared statements: on a connection where psycopg has prepared, a
ROLLBACK makes it send DEALLOCATE ALL, which would drop the group-commit writer's statements
(postgres_write.py) on the same pooled connections; so the pool keeps `prepare_threshold=None`
and the reads, like the writer's statements, are prepared by name. `EXECUTE` takes no
protocol parameters ("there is no parameter $1"): the values travel as SQL constants
(`postgres_write._literal`, the writer's; integers clamped to bigint, see `_value`).

Plans
    PostgreSQL plans a prepared statement anew on each call (a custom plan) until it finds a
    generic plan no dearer by its estimates; for these statements the estimates of a generic
    plan (`LIMIT $n` unknown) always look dearer, so it never stops. `force_generic_plan`,
    set for the one transaction of the message, plans each statement once per connection.
    Checked with EXPLAIN on 240,000 events in 30,000 streams: each generic plan is the plan
    the planner picks for the values (the position index for `read_all`, the
    (stream, stream_version) index for a stream, the id index, the transaction index).
    Except for a filtered page (`types`, `stream_prefix`) far behind the head: for a rare
    type the value's plan is the (type, position) index and a sort, while the generic plan
    walks the position index and filters, reading every event up to the head to fill a page.
    Near the head that walk is short and the generic plan right (the live subscriber's
    pages); far behind, such a page is planned for its values, as before (`NEAR_HEAD`).

    A generic plan is made for the table as it is at the statement's first EXECUTE, and kept
    until the table's statistics change (ANALYZE). Made on an empty log, a filtered page's is
    a sequential scan and a sort (it costs nothing there), still used a few thousand events
    later, when autovacuum has not analyzed the table yet: a new database's first minutes,
    a bench. So a statement is prepared again (DEALLOCATE, PREPARE, in the same message) once
    the log has grown past twice its size when the statement was prepared (and 1,000 more
    events): a handful of times in a log's life, one plan each.

Lost statements
    A connection's statements are known from what it ran here. A session that lost them
    (server restart: a new connection; DISCARD ALL, DEALLOCATE) fails the EXECUTE with
    InvalidSqlStatementName: its statements are asked from the server, the missing prepared
    again, and the read runs once more. After any other failure, whether the message's PREPARE
    ran is not known: the server is asked before the connection's next read. A prepared
    statement survives its table being dropped and created again (the server parses it again).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors

from eventledger.eventstore.postgres_schema import Connection
from eventledger.eventstore.postgres_write import _array, _literal
from eventledger.eventstore.store import ACCOUNT_STREAMS

COLUMNS = (
    "id, stream, type, schema_version, data, metadata, stream_version, position, recorded_at,"
    " hash, batch_end"
)  # what reads select; the write statements are in postgres_write.py
# data and metadata as text, parsed by `postgres._json`: a catch-up reads every event once.
LOG_COLUMNS = (
    "id, stream, type, schema_version, data::text, metadata::text, stream_version, position,"
    " recorded_at, hash, batch_end"
)

# A filtered page whose `after` is at most this many positions behind the known head runs on
# the generic plan (the position index): it reads at most the events after `after`.
NEAR_HEAD = 2_000
# A statement is prepared again (so planned again) when the head passed 2 x (the head when it
# was prepared) + REPLAN_EVENTS.
REPLAN_EVENTS = 1_000

_GENERIC = "SET LOCAL plan_cache_mode = force_generic_plan"
_CUSTOM = "SET LOCAL plan_cache_mode = force_custom_plan"
_BIGINT = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Read:
    """One prepared read: its name, its parameters' types and its statement."""

    name: str
    types: tuple[str, ...]
    statement: str

    @property
    def prepare(self) -> str:
        types = f"({', '.join(self.types)})" if self.types else ""
        return f"PREPARE {self.name}{types} AS {self.statement}"

    def execute(self, args: Sequence[Any]) -> str:
        if len(args) != len(self.types):
            raise ValueError(f"{self.name} takes {len(self.types)} values, not {len(args)}")
        return (
            f"EXECUTE {self.name}({','.join(map(_value, args))})"
            if args
            else (f"EXECUTE {self.name}")
        )


def _read_all(types: bool, prefix: bool) -> Read:
    name, params, where = "eventledger_read_all", ["bigint"], ["position > $1"]
    if types:
        name += "_types"
        params.append("text[]")
        where.append(f"type = ANY(${len(params)})")
    if prefix:  # the pattern is escaped by the caller (postgres._like_prefix)
        name += "_prefix"
        params.append("text")
        where.append(f"stream LIKE ${len(params)}")
    params.append("bigint")
    statement = (
        f"SELECT {LOG_COLUMNS} FROM events WHERE {' AND '.join(where)}"
        f" ORDER BY position LIMIT ${len(params)}"
    )
    return Read(name, tuple(params), statement)


READ_ALL = {(t, p): _read_all(t, p) for t in (False, True) for p in (False, True)}

# LIMIT NULL: no limit. Versions as bigint: a `from_version` past int4 reads nothing, as before.
READ_STREAM = Read(
    "eventledger_read_stream",
    ("text", "bigint", "bigint"),
    f"SELECT {COLUMNS} FROM events WHERE stream = $1 AND stream_version >= $2"
    " ORDER BY stream_version LIMIT $3",
)
STREAM_VERSION = Read(
    "eventledger_stream_version",
    ("text",),
    "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = $1",
)
# The committed counter is the newest visible position (appends commit in its order).
HEAD_POSITION = Read("eventledger_head", (), "SELECT last FROM event_position WHERE id = 1")
# The rows after a position, as they are stored: what a fill of the recent log reads
# (postgres.PostgresEventStore.fill_recent, recent.RecentLog.fill), once per wake-up.
FILL = Read(
    "eventledger_fill",
    ("bigint", "bigint"),
    "SELECT position, id, stream, stream_version, type, schema_version, data::text,"
    " metadata::text, recorded_at, hash, batch_end FROM events WHERE position > $1"
    " ORDER BY position LIMIT $2",
)
GET_EVENT = Read("eventledger_get_event", ("uuid",), f"SELECT {COLUMNS} FROM events WHERE id = $1")
LOAD_KEYS = Read(
    "eventledger_load_keys",
    ("text[]",),
    "SELECT account_id, key_id, secret FROM personal_data_keys WHERE account_id = ANY($1)",
)
# The expression is the index's (migration 3). starts_with, not a range of names: a
# linguistic collation orders "account-x" and "account." by letters first. The prefix is a
# constant of the statement, not a parameter.
READ_TRANSACTION = Read(
    "eventledger_read_transaction",
    ("text", "bigint"),
    f"SELECT {COLUMNS} FROM events WHERE (data->>'transaction_id') = $1"
    f" AND starts_with(stream, {_literal(ACCOUNT_STREAMS[0])}) ORDER BY position LIMIT $2",
)

READS = (
    *READ_ALL.values(),
    READ_STREAM,
    STREAM_VERSION,
    HEAD_POSITION,
    GET_EVENT,
    LOAD_KEYS,
    READ_TRANSACTION,
)
NAMES = tuple(r.name for r in READS)


class PreparedReads:
    """Runs the reads on pooled connections, preparing each once per connection's session.
    Knows, weakly, which connections have which of them prepared, and at which head (None:
    ask the server)."""

    def __init__(self) -> None:
        self._have: weakref.WeakKeyDictionary[Connection, dict[str, int] | None]
        self._have = weakref.WeakKeyDictionary()
        self.prepares = 0  # PREPAREs sent (observable: the tests count them)

    async def fetch(
        self,
        conn: Connection,
        read: Read,
        args: Sequence[Any],
        *,
        head: int = 0,
        generic: bool = True,
    ) -> list[tuple[Any, ...]]:
        """The rows of `read` with `args`, on its generic plan (or planned for the values).
        `head`: a recent head of the log (a lower bound will do)."""
        execute = read.execute(args)
        for attempt in range(2):
            have = await self._prepared(conn)
            made = have.get(read.name)
            statements = []
            if made is None:
                statements.append(read.prepare)
            elif head >= 2 * made + REPLAN_EVENTS:  # planned for a much smaller log
                statements += [f"DEALLOCATE {read.name}", read.prepare]
            prepares = bool(statements)
            if read.types:  # a statement without parameters always has its generic plan
                statements.append(_GENERIC if generic else _CUSTOM)
            statements.append(execute)
            try:
                self.prepares += prepares
                cur = await _send(conn, statements)
                for _ in range(len(statements) - 1):
                    cur.nextset()
                rows = await cur.fetchall()
            except (pg_errors.InvalidSqlStatementName, pg_errors.DuplicatePreparedStatement):
                # The session lost its statements (DISCARD ALL, DEALLOCATE), or has one we did
                # not know of: nothing ran; ask the server, then once more.
                self._have[conn] = None
                if attempt:
                    raise
                continue
            except BaseException:
                self._have[conn] = None  # did its PREPARE run? the server is asked next time
                raise
            if prepares:
                have[read.name] = head
            return rows
        raise AssertionError("unreachable")

    async def _prepared(self, conn: Connection) -> dict[str, int]:
        if conn not in self._have:  # a connection we never read on: a new session
            have: dict[str, int] | None = {}
        else:
            have = self._have[conn]
        if have is None:  # when they were prepared is not known: as if on an empty log
            cur = await conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", [list(NAMES)]
            )
            have = {name: 0 for (name,) in await cur.fetchall()}
        self._have[conn] = have
        return have


async def _send(conn: Connection, statements: Sequence[str]) -> psycopg.AsyncCursor[Any]:
    """The statements as one simple-query message (one implicit transaction: SET LOCAL holds
    for the EXECUTE after it); the cursor is on the first result."""
    return await conn.execute(";".join(statements).encode(), prepare=False)


def _value(value: Any) -> str:
    """A value as an SQL constant for EXECUTE. Integers are clamped to bigint: the reads
    compare them with bigint and integer columns (`position > x`, `stream_version >= x`) or
    use them as a LIMIT, where a value past the range means the same as its end."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        raise TypeError("a read takes no booleans")
    if isinstance(value, int):
        return str(min(max(value, _BIGINT[0]), _BIGINT[1]))
    if isinstance(value, str):
        return _literal(value)
    if isinstance(value, UUID):
        return _literal(str(value))
    if isinstance(value, list | tuple):
        return _array([str(v) for v in value])
    raise TypeError(f"a read takes no {type(value).__name__}")
