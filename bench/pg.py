"""PostgreSQL for the benchmark: which server, fresh schemas, and what the server promises.

Every measurement gets its own schema, `bench_<contender>_<random>`, dropped when the
measurement ends (also when it fails). Nothing else on the server is touched.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

URL_VARIABLES = ("EVENTLEDGER_BENCH_POSTGRES_URL", "EVENTLEDGER_TEST_POSTGRES_URL")
APPLICATION_NAME = "eventledger-bench"


def configured_url() -> str | None:
    """The server to benchmark on, from the first of URL_VARIABLES that is set."""
    for name in URL_VARIABLES:
        if url := os.environ.get(name, "").strip():
            return url
    return None


def fresh_schema(contender: str) -> str:
    return f"bench_{contender}_{secrets.token_hex(4)}"


def create_schema(url: str, schema: str) -> None:
    """The peer does not create its schema; we make it as it finds it in production."""
    with _admin(url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    if not schema.startswith("bench_"):  # never drop a schema this suite did not make
        raise ValueError(f"refusing to drop schema {schema!r}")
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass(frozen=True, slots=True)
class ServerFacts:
    version: str
    fsync: str
    synchronous_commit: str

    def describe(self) -> str:
        return (
            f"PostgreSQL {self.version}, fsync={self.fsync}, "
            f"synchronous_commit={self.synchronous_commit}"
        )


def server_facts(url: str) -> ServerFacts:
    """Raises psycopg.Error when the server cannot be reached."""
    with _admin(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'),"
            " current_setting('synchronous_commit')"
        ).fetchone()
    assert row is not None
    return ServerFacts(version=str(row[0]), fsync=str(row[1]), synchronous_commit=str(row[2]))


@dataclass(frozen=True, slots=True)
class ConnectionParts:
    """The URL split into the keyword arguments the peer's datastore takes."""

    dbname: str
    host: str
    port: int
    user: str
    password: str


def connection_parts(url: str) -> ConnectionParts:
    params = conninfo_to_dict(url)
    return ConnectionParts(
        dbname=str(params.get("dbname") or "postgres"),
        host=str(params.get("host") or "127.0.0.1"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
    )


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=5
    )
