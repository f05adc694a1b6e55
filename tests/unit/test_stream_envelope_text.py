"""The envelope text the stream service serves (`encoded_envelope`, orjson where it gives the
standard library's text) and RFC 3339 times (`format_time`, isoformat where it gives
strftime's text): the fast paths write exactly what the reference encoders write."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventledger.eventstore.codec import format_time, to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.stream.pages import encoded_envelope

REFERENCE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
NOW = datetime(2026, 12, 3, 7, 50, 32, 390738, tzinfo=UTC)


def event(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> RecordedEvent:
    return RecordedEvent(
        id=uuid.uuid4(),
        stream="account-acc-1",
        type="MoneyDeposited",
        schema_version=1,
        data=data,
        metadata=metadata or {},
        stream_version=7,
        position=2**40,
        recorded_at=NOW,
        hash="ab" * 32,
        batch_end=9,
    )


@pytest.mark.parametrize(
    ("data", "metadata"),
    [
        ({"account_id": "acc-1", "amount": 523, "reference": None, "ok": True}, {"c": "r-1"}),
        ({"nested": [1, {"k": [None, False, -(2**63)]}], "empty": {}, "list": []}, {}),
        ({"escapes": '"\\\n\t\x01\x7f</script>\u2028'}, {}),
        ({"non_ascii": "é€😀"}, {"who": "Zoë"}),
        ({"float": 1.5, "big": 1e16, "tiny": 1e-7, "neg_zero": -0.0}, {}),
        ({"deep_float": [{"x": [0.1]}]}, {}),
        ({}, {"float_in_metadata": 2.5}),
        ({"beyond_64_bits": 2**70, "negative": -(2**64)}, {}),
        ({"key with ünïcode": 1}, {}),
    ],
)
def test_an_envelope_is_the_standard_librarys_text(
    data: dict[str, Any], metadata: dict[str, Any]
) -> None:
    recorded = event(data, metadata)
    text = encoded_envelope(recorded)
    assert text == REFERENCE(to_envelope(recorded))
    assert text.isascii()
    assert json.loads(text)["data"] == data


@pytest.mark.parametrize(
    "moment",
    [
        NOW,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=2))),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # strftime does not pad such years
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_a_time_is_written_as_strftime_writes_it(moment: datetime) -> None:
    assert format_time(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
