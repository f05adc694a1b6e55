"""The read side's envelope decoder gives exactly what `json.loads` + `from_envelope` give."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from eventledger.eventstore.codec import from_envelope, to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.envelopes import EnvelopeDecoder
from eventledger.services.readside.subscription import SSEMessage, SSEParser


def envelope(**overrides: Any) -> dict[str, Any]:
    event = RecordedEvent(
        uuid4(),
        "account-a",
        "MoneyDeposited",
        1,
        {"account_id": "a", "transaction_id": "t", "amount": 10, "reference": None},
        {"correlation_id": "c"},
        2,
        7,
        datetime(2026, 12, 3, 6, 0, 0, 123456, tzinfo=UTC),
        "ab" * 32,
        8,
    )
    return {**to_envelope(event), **overrides}


def both(text: str) -> tuple[object, object]:
    def run(decode: Any) -> object:
        try:
            return decode(text)
        except Exception as exc:
            return type(exc)

    return run(EnvelopeDecoder().decode), run(lambda t: from_envelope(json.loads(t)))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(envelope()),
        json.dumps(envelope(metadata=None, hash=None, batch_end=None)),
        json.dumps({k: v for k, v in envelope().items() if k not in ("hash", "batch_end")}),
        # Where orjson and the stdlib differ, the stdlib's answer wins.
        json.dumps(envelope()).replace('"amount":10', '"amount":123456789012345678901234567890'),
        json.dumps(envelope()).replace('"amount": 10', '"amount": 123456789012345678901234567890'),
        json.dumps(envelope()).replace('"amount": 10', '"amount": NaN'),
        json.dumps(envelope()).replace('"amount": 10', '"amount": 1e400'),
        json.dumps(envelope()).replace('"amount": 10', '"amount": 10.0'),
        json.dumps(envelope(data={"deep": [[{"x": 2**70}]]})),
        json.dumps(envelope()).replace('"reference": null', '"reference": "\\ud800"'),
        # Types the direct path does not take: from_envelope decides.
        json.dumps(envelope(position="7")),
        json.dumps(envelope(position=True)),
        json.dumps(envelope(schema_version=1.0)),
        json.dumps(envelope(stream_version=2**70)),
        json.dumps(envelope(id="not a uuid")),
        json.dumps(envelope(recorded_at="2026-12-03T06:00:00")),
        json.dumps(envelope(data=[1])),
        json.dumps([1, 2]),
        "{not json",
        json.dumps({k: v for k, v in envelope().items() if k != "recorded_at"}),
    ],
)
def test_the_decoder_answers_as_the_standard_library_does(text: str) -> None:
    fast, exact = both(text)
    assert fast == exact


def test_a_repeated_time_is_parsed_once_and_a_new_one_again() -> None:
    decoder = EnvelopeDecoder()
    first = decoder.decode(json.dumps(envelope()))
    same = decoder.decode(json.dumps(envelope(position=8)))
    later = decoder.decode(json.dumps(envelope(recorded_at="2026-12-03T06:00:01.000000Z")))
    assert first.recorded_at is same.recorded_at
    assert later.recorded_at == datetime(2026, 12, 3, 6, 0, 1, tzinfo=UTC)


def test_the_usual_message_and_any_other_shape_parse_alike() -> None:
    usual = b'id: 3\nevent: T\ndata: {"a":1}\n\n'
    spelled_out = b'data: {"a":1}\nevent: T\nid: 3\n\n'
    assert (
        SSEParser().feed(usual)
        == SSEParser().feed(spelled_out)
        == [SSEMessage("3", "T", '{"a":1}')]
    )
    # An id with NUL is ignored, the usual shape or not; an empty event is "message".
    parser = SSEParser()
    assert parser.feed(b"id: 4\n\nid: 5\x00\nevent: \ndata: x\n\n") == [
        SSEMessage("4", "message", "x")
    ]


def test_a_message_with_more_fields_than_the_usual_three_is_read_line_by_line() -> None:
    parser = SSEParser()
    block = b"id: 6\nevent: T\ndata: one\ndata: two\nretry: 5\n\n"
    assert parser.feed(block) == [SSEMessage("6", "T", "one\ntwo")]
