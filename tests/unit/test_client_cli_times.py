"""Times on the command line (cli/times.py): what `--at` accepts and what it means."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

import eventledger
from eventledger.cli.output import UsageProblem
from eventledger.cli.times import format_instant, format_time, parse_at


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-27T11:12:30Z", utc(2026, 11, 27, 11, 12, 30, 999999)),
        ("2026-11-27 11:12:30Z", utc(2026, 11, 27, 11, 12, 30, 999999)),
        ("2026-11-27t11:12:30z", utc(2026, 11, 27, 11, 12, 30, 999999)),
        ("2026-11-27T12:12:30+01:00", utc(2026, 11, 27, 11, 12, 30, 999999)),
        ("2026-11-27T11:12:29.5Z", utc(2026, 11, 27, 11, 12, 29, 500000)),
        ("2026-11-27T11:12:29.123456789Z", utc(2026, 11, 27, 11, 12, 29, 123456)),
        ("2026-11-27T11:12Z", utc(2026, 11, 27, 11, 12, 59, 999999)),
        ("2026-11-27", utc(2026, 11, 27, 23, 59, 59, 999999)),
        (" 2026-11-27 ", utc(2026, 11, 27, 23, 59, 59, 999999)),
        ("9999-12-31", utc(9999, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_at_reads_a_time_up_to_the_end_of_what_it_writes(text: str, instant: datetime) -> None:
    assert parse_at(text) == instant


def test_what_history_prints_is_read_back_as_including_that_second() -> None:
    recorded = utc(2026, 11, 27, 11, 12, 30, 388898)
    assert parse_at(format_time(recorded)) >= recorded
    assert format_time(recorded) == "2026-11-27T11:12:30Z"
    assert format_instant(recorded) == "2026-11-27T11:12:30.388898Z"
    assert format_instant(utc(2026, 11, 27, 11, 12, 29, 500000)) == "2026-11-27T11:12:29.5Z"
    assert format_instant(utc(2026, 11, 27)) == "2026-11-27T00:00:00Z"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "is not a time: give an RFC 3339 time with its zone"),
        ("2026-11-27T11:12:30", "has no zone: add Z for UTC"),
        ("2026-11-27 11:12", "has no zone"),
        ("2026-13-01", "is not a valid time"),
        ("2026-02-30T00:00:00Z", "is not a valid time"),
        ("2026-11-27T25:00:00Z", "is not a valid time"),
        ("0001-01-01T00:00:00+01:00", "is not a valid time"),
        ("1700000000", "is not a time"),
        ("", "is not a time"),
        ("2026-11-27T11:12:30Z tomorrow", "is not a time"),
    ],
)
def test_at_refuses_anything_else_saying_what_it_accepts(text: str, says: str) -> None:
    with pytest.raises(UsageProblem) as refused:
        parse_at(text)
    message = str(refused.value)
    assert says in message and "\n" not in message.replace(repr(text), "")
    assert refused.value.exit_code == 2


def test_the_version_is_the_packages() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    assert eventledger.__version__ == declared
