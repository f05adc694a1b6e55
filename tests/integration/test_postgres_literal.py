"""The group commit sends a group's rows inside its message as SQL string constants
(`postgres_write._literal`): whatever text an event carries must come back from the server
exactly as written, never end the constant early, and never run as SQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventledger.eventstore.postgres_write import _array, _literal

# Any text PostgreSQL can hold (no NUL), biased towards what is special in SQL constants.
TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from(["'", "\\", "E", "$", ";", '"', "\n", "\r", "\t", "-", "/", "*", "%"]),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=60,
)


@pytest.fixture(scope="module", params=["on", "off"])
def conn(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[psycopg.Connection]:
    # E'' constants read a backslash as an escape whatever standard_conforming_strings says.
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"SET standard_conforming_strings = {request.param}")
        yield connection


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXTS)
def test_any_text_comes_back_exactly_as_written(conn: psycopg.Connection, text: str) -> None:
    # A simple-query message, as the group commit sends: a constant that ended early would
    # make the rest of the text SQL (a syntax error, or a second statement).
    cur = conn.execute(f"SELECT {_literal(text)}, 'end'".encode(), prepare=False)
    assert cur.fetchall() == [(text, "end")]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXTS, max_size=5))
def test_arrays_of_any_texts_come_back_exactly(conn: psycopg.Connection, texts: list[str]) -> None:
    cur = conn.execute(f"SELECT {_array(texts)}::text[]".encode(), prepare=False)
    assert cur.fetchall() == [(texts,)]
