"""What `PostgresEventStore.open` checks and prepares before it uses a server: the schema
name, the server's durability settings, and the tables (versioned migrations).

Durability
    A server with `fsync` off or `synchronous_commit` off may lose a commit it acknowledged
    (`off` answers before the WAL is flushed), so `open` refuses it with `UnsafeDurability`
    unless `allow_unsafe_durability=True`. `local`, `remote_write`, `remote_apply` and `on`
    all flush the WAL on the primary before the commit returns; whether a synchronous standby
    must have it too (`synchronous_standby_names`) is the operator's fail-over policy.

Migrations
    `schema_migrations` records the versions applied. `migrate` runs the missing ones in one
    transaction under an advisory lock, so that instances starting together do not race, and
    refuses a schema migrated by a newer eventledger (`IncompatibleSchema`). Only creating the
    schema needs CREATE rights: a least-privileged role opens a migrated one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from eventledger.eventstore.errors import IncompatibleSchema, UnsafeDurability
from eventledger.eventstore.hashing import GENESIS, event_hash
from eventledger.eventstore.keys import POSTGRES_KEYS_TABLE
from eventledger.eventstore.records import RecordedEvent

logger = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]
Migration = tuple[int, LiteralString]

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> None:
    """Raise ValueError unless `schema` is a plain lowercase identifier."""
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r} (lowercase letters, digits, _)")


# -- durability ----------------------------------------------------------------------------


def durability_problems(*, fsync: str, synchronous_commit: str) -> list[str]:
    """What, in these server settings, could lose an acknowledged append."""
    problems = []
    if fsync.lower() != "on":
        problems.append("fsync is off: a crash can lose or corrupt committed events")
    if synchronous_commit.lower() == "off":
        problems.append(
            f"synchronous_commit is {synchronous_commit}: a commit is acknowledged before it is"
            " durable"
        )
    return problems


async def check_durability(conn: Connection, *, allow_unsafe: bool) -> None:
    """Raise UnsafeDurability when the server may lose acknowledged appends (only log it with
    `allow_unsafe`)."""
    cur = await conn.execute(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
    )
    row = await cur.fetchone()
    assert row is not None
    problems = durability_problems(fsync=row[0], synchronous_commit=row[1])
    if problems and allow_unsafe:
        logger.warning("PostgreSQL may lose acknowledged appends: %s", "; ".join(problems))
    elif problems:
        raise UnsafeDurability(
            "refusing to use this PostgreSQL server: "
            + "; ".join(problems)
            + " (fix the server settings, or pass allow_unsafe_durability=True for tests)"
        )


# -- migrations ----------------------------------------------------------------------------

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        """
        CREATE TABLE events (
            position       bigint      NOT NULL,
            id             uuid        NOT NULL,
            stream         text        NOT NULL,
            stream_version integer     NOT NULL CHECK (stream_version >= 1),
            type           text        NOT NULL,
            schema_version integer     NOT NULL,
            data           jsonb       NOT NULL,
            metadata       jsonb       NOT NULL,
            recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT events_position_pkey PRIMARY KEY (position),
            CONSTRAINT events_id_unique UNIQUE (id),
            CONSTRAINT events_stream_version_unique UNIQUE (stream, stream_version)
        );
        -- `stream_prefix` filters (LIKE 'prefix%') and `types` filters of the global log.
        CREATE INDEX events_stream_prefix ON events (stream text_pattern_ops);
        CREATE INDEX events_type_position ON events (type, position);
        CREATE TABLE event_position (
            id   integer NOT NULL PRIMARY KEY CHECK (id = 1),
            last bigint  NOT NULL
        );
        INSERT INTO event_position (id, last) VALUES (1, 0);
        """,
    ),
    (
        2,
        # Tamper evidence (hashing.py), and where the atomic append that wrote an event ends.
        # The head's hash sits beside the head position, read with it under the row lock.
        # The events of version 1 get their chain once, right after (`_chain_old_events`).
        """
        ALTER TABLE events ADD COLUMN hash text, ADD COLUMN batch_end bigint;
        ALTER TABLE event_position
            ADD COLUMN hash text NOT NULL
            DEFAULT '0000000000000000000000000000000000000000000000000000000000000000';
        """,
    ),
    (
        3,
        # The events of a transaction by their `data.transaction_id` (read_transaction), kept
        # by PostgreSQL in every append's transaction: an index on the expression rather than
        # a table the writer fills, so no write path changes, and creating it here indexes an
        # existing log once (it holds the table's write lock while it builds: a one-time pause
        # of appends on a large log). Partial: events without a transaction id take no entry.
        """
        CREATE INDEX events_by_transaction ON events ((data->>'transaction_id'), position)
            WHERE (data->>'transaction_id') IS NOT NULL;
        """,
    ),
    # The keys personal data is sealed under (keys.py, pii.py): beside the log, never in it.
    (4, POSTGRES_KEYS_TABLE),
    (
        5,
        # Which stream instance writes (postgres_lease.py): the URL of the instance holding
        # the writer lease, written by it when it takes the lease.
        """
        CREATE TABLE stream_writer (
            id    integer     NOT NULL PRIMARY KEY CHECK (id = 1),
            url   text        NOT NULL,
            since timestamptz NOT NULL
        );
        """,
    ),
)


async def migrate(conn: Connection, schema: str, migrations: Sequence[Migration]) -> None:
    """Bring the schema to the newest of `migrations`. Safe when several instances start
    together."""
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '1min'")
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s)", [advisory_lock_key(schema, "\0migrations")]
        )
        cur = await conn.execute(
            "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL", [schema]
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            # Only here are CREATE rights needed: a least-privileged role opens a migrated schema.
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.schema_migrations (version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        cur = await conn.execute("SELECT version FROM schema_migrations")
        applied = {version for (version,) in await cur.fetchall()}
        known = max(version for version, _ in migrations)
        if applied and max(applied) > known:
            raise IncompatibleSchema(
                f"schema {schema!r} is at version {max(applied)}; this eventledger knows {known}"
            )
        for version, ddl in migrations:
            if version not in applied:
                logger.info("migrating schema %s to version %d", schema, version)
                await conn.execute(ddl)
                if version == 2:
                    await _chain_old_events(conn)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, now())",
                    [version],
                )


def advisory_lock_key(schema: str, name: str) -> int:
    """A 64-bit advisory lock key for a stream (or `\\0migrations`) of one schema."""
    digest = hashlib.blake2b(f"{schema}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_CHAIN_PAGE = 5_000


async def _chain_old_events(conn: Connection) -> None:
    """Give the events written before version 2 their hash chain, in position order, then
    make the columns required. They were written before batches were recorded: each counts
    as a batch of its own."""
    previous, after = GENESIS, 0
    while True:
        cur = await conn.execute(
            "SELECT id, stream, type, schema_version, data, metadata, stream_version, position,"
            " recorded_at FROM events WHERE position > %s ORDER BY position LIMIT %s",
            [after, _CHAIN_PAGE],
        )
        rows = await cur.fetchall()
        if not rows:
            break
        positions, hashes = [], []
        for event_id, stream, type_, schema_version, data, metadata, version, position, at in rows:
            event = RecordedEvent(
                id=event_id,
                stream=stream,
                type=type_,
                schema_version=schema_version,
                data=data,
                metadata=metadata,
                stream_version=version,
                position=position,
                recorded_at=at,
                batch_end=position,
            )
            previous = event_hash(previous, event)
            positions.append(position)
            hashes.append(previous)
        await conn.execute(
            "UPDATE events AS e SET hash = u.hash, batch_end = u.position"
            " FROM unnest(%s::bigint[], %s::text[]) AS u(position, hash)"
            " WHERE e.position = u.position",
            [positions, hashes],
        )
        after = positions[-1]
    await conn.execute("UPDATE event_position SET hash = %s WHERE id = 1", [previous])
    await conn.execute(
        "ALTER TABLE events ALTER COLUMN hash SET NOT NULL, ALTER COLUMN batch_end SET NOT NULL"
    )
