"""What the PostgreSQL tests do to the server from the outside: an admin connection, killing a
store's connections, making an append hang inside its transaction, awaiting a condition."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql

AdminConnection = psycopg.AsyncConnection[tuple[Any, ...]]


@asynccontextmanager
async def admin(url: str) -> AsyncIterator[AdminConnection]:
    """An autocommit connection that is not part of any store."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="tests")
    async with conn:
        yield conn


async def fetch(url: str, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    async with admin(url) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def execute(url: str, query: Any, params: Any = None) -> None:
    async with admin(url) as conn:
        await conn.execute(query, params)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> None:
    """Await a condition (checked every 10 ms); fail the test if it does not hold in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def terminate(url: str, application_name: str) -> int:
    """pg_terminate_backend every connection whose application_name starts with the given one."""
    rows = await fetch(
        url,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
        [application_name.replace("_", "\\_") + "%"],
    )
    return int(rows[0][0])


async def waiting_on(url: str, application_name: str, wait_event: str | None = None) -> bool:
    """Whether a connection of that application is blocked on a lock (of that wait event)."""
    rows = await fetch(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND wait_event_type = 'Lock' AND (%s::text IS NULL OR wait_event = %s::text)",
        [application_name, wait_event, wait_event],
    )
    return bool(rows[0][0])


class InsertHold:
    """A BEFORE INSERT trigger on `schema.table` that makes the insert of a row whose stream
    starts with `held-` wait for an advisory lock that the test holds: that append hangs
    inside its transaction, after it has taken its position, until `release()`."""

    def __init__(self, url: str, schema: str, table: str = "events") -> None:
        self.url, self.schema, self.table = url, schema, table
        self.key = (random.randrange(1, 2**31), random.randrange(1, 2**31))
        self._holder: AdminConnection | None = None

    async def install(self) -> None:
        names = {
            "fn": sql.Identifier(self.schema, "hold_insert"),
            "table": sql.Identifier(self.schema, self.table),
            "k1": sql.Literal(self.key[0]),
            "k2": sql.Literal(self.key[1]),
        }
        async with admin(self.url) as conn:
            await conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN"
                    "   IF NEW.stream LIKE 'held-%' THEN PERFORM pg_advisory_xact_lock({k1}, {k2});"
                    "   END IF;"
                    "   RETURN NEW;"
                    " END $$"
                ).format(**names)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TRIGGER hold_insert BEFORE INSERT ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION {fn}()"
                ).format(**names)
            )

    async def hold(self) -> None:
        self._holder = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await self._holder.execute("SELECT pg_advisory_lock(%s, %s)", self.key)

    async def release(self) -> None:
        if self._holder is not None:
            holder, self._holder = self._holder, None
            await holder.close()  # ends the session: its advisory lock goes with it


class CommitHold(InsertHold):
    """A deferred constraint trigger on `schema.table`: the COMMIT of a transaction that
    inserted a row whose stream starts with `held-` waits, inside the COMMIT, for an advisory
    lock that the test holds, until `release()`."""

    async def install(self) -> None:
        names = {
            "fn": sql.Identifier(self.schema, "hold_commit"),
            "table": sql.Identifier(self.schema, self.table),
            "k1": sql.Literal(self.key[0]),
            "k2": sql.Literal(self.key[1]),
        }
        async with admin(self.url) as conn:
            await conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN"
                    "   IF NEW.stream LIKE 'held-%' THEN PERFORM pg_advisory_xact_lock({k1}, {k2});"
                    "   END IF;"
                    "   RETURN NULL;"
                    " END $$"
                ).format(**names)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON {table}"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}()"
                ).format(**names)
            )
