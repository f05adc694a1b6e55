"""Fixtures shared by every test folder: the PostgreSQL server of the PostgreSQL suites.

The suites run when EVENTLEDGER_TEST_POSTGRES_URL names a server, e.g.

    EVENTLEDGER_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test pytest

Without it they are skipped, unless EVENTLEDGER_REQUIRE_POSTGRES=1 (CI), which turns the skip
into a failure. Each test gets its own schema (`pg_schema`), dropped afterwards, so runs and
tests never see each other's events.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = "EVENTLEDGER_TEST_POSTGRES_URL"
REQUIRE_POSTGRES = "EVENTLEDGER_REQUIRE_POSTGRES"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the server carries the `postgres` marker (`-m "not postgres"`)."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_URL, "").strip()
    if not url:
        reason = (
            f"PostgreSQL tests need {POSTGRES_URL} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{reason}; {REQUIRE_POSTGRES}=1 forbids skipping them", pytrace=False)
        pytest.skip(reason)
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_URL}={url} is set, but PostgreSQL does not answer: {exc}")
    return url


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name for one test; the schema is dropped after the test."""
    schema = f"t_{uuid4().hex}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
