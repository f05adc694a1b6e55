"""The canonical content of the hash chain (eventstore/hashing.py): a value and what any
backend gives back for it hash the same, and the chain is exactly the documented formula."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from eventledger.eventstore.codec import format_time, json_text, to_envelope
from eventledger.eventstore.hashing import (
    GENESIS,
    HashChain,
    canonical_json,
    chain,
    event_content,
    event_hash,
    flat_json,
    is_flat,
    orjson_flat_json,
)
from eventledger.eventstore.records import RecordedEvent

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8).filter(lambda k: "\x00" not in k), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8).filter(lambda k: "\x00" not in k), json_values))
def test_data_and_the_json_stored_for_it_have_the_same_canonical_form(
    data: dict[str, Any],
) -> None:
    stored = json.loads(json_text(data, "data", UUID(int=1)))
    assert canonical_json(data) == canonical_json(stored)


def test_integral_floats_are_written_as_the_integers_postgresql_gives_back() -> None:
    assert canonical_json({"a": 1e20, "b": -0.0, "c": 1.0}) == (
        '{"a":100000000000000000000,"b":0,"c":1}'
    )
    assert canonical_json({"a": 100000000000000000000, "b": 0, "c": 1}) == canonical_json(
        {"a": 1e20, "b": -0.0, "c": 1.0}
    )
    assert canonical_json({"x": 0.1, "y": 1e-7}) == '{"x":0.1,"y":1e-07}'


def test_keys_are_sorted_and_text_is_utf8_not_escaped() -> None:
    assert canonical_json({"b": "€", "a": {"d": 1, "c": [2]}}) == '{"a":{"c":[2],"d":1},"b":"€"}'


def test_the_hash_is_sha256_of_the_previous_hash_bytes_and_the_envelope_without_hash() -> None:
    event = RecordedEvent(
        id=UUID("0f8c3a52-7a4e-4c3b-9a51-2a0d3c6e9b11"),
        stream="account-acc-42",
        type="MoneyDeposited",
        schema_version=1,
        data={"amount": 500, "account_id": "acc-42"},
        metadata={"correlation_id": "c-1"},
        stream_version=3,
        position=1234,
        recorded_at=datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC),
        batch_end=1235,
    )
    envelope = {k: v for k, v in to_envelope(event).items() if k != "hash"}
    content = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(bytes.fromhex(GENESIS) + content.encode()).hexdigest()
    assert event_hash(GENESIS, event) == expected
    assert envelope["recorded_at"] == format_time(event.recorded_at)
    assert chain(expected, b"x") != chain(GENESIS, b"x")


flat_values = (
    st.none() | st.booleans() | st.integers() | st.text(st.characters(blacklist_categories=["Cs"]))
)


@given(st.dictionaries(st.text(max_size=8), flat_values, max_size=6))
def test_a_flat_object_is_written_as_the_plain_sorted_json_encoder_writes_it(
    data: dict[str, Any],
) -> None:
    # The fast path (one C encoder built once) writes what the documented encoder writes.
    assert is_flat(data)
    expected = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert flat_json(data) == canonical_json(data) == expected


def _documented(data: dict[str, Any]) -> str:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def test_orjson_writes_every_code_point_as_the_documented_encoder_does() -> None:
    # flat_json's fast path (orjson) is only right if it escapes exactly what json escapes.
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        chunk = points[start : start + 4096]
        data = {f"k{i}{c}": c for i, c in enumerate(chunk)}
        assert orjson_flat_json(data) == flat_json(data) == _documented(data)


def test_what_orjson_refuses_is_written_by_the_standard_library() -> None:
    for data in ({"a": 2**64, "b": -(2**63) - 1}, {"a": "\ud800"}):
        assert orjson_flat_json(data) is None
        assert flat_json(data) == _documented(data)
    assert orjson_flat_json({1: "a"}) is None  # not a flat object: the caller's slow path
    assert orjson_flat_json({"a": 2**63 - 1, "b": -(2**63)}) == _documented(
        {"a": 2**63 - 1, "b": -(2**63)}
    )


def test_objects_with_floats_nested_values_or_other_keys_are_not_flat() -> None:
    for value in ({"a": 1.0}, {"a": [1]}, {"a": {}}, {1: "a"}, [("a", 1)], "a"):
        assert not is_flat(value)
    assert canonical_json({"a": 1.0, "b": {"c": 2.0}}) == '{"a":1,"b":{"c":2}}'


@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=5), flat_values, max_size=3),
            st.sampled_from(["account-a", 'we"ird\\stream', "ünïcode"]),
            st.sampled_from(["MoneyDeposited", "T"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_hash_chain_gives_each_event_the_hash_of_the_documented_formula(
    events: list[tuple[dict[str, Any], str, str]],
) -> None:
    at = format_time(datetime(2026, 12, 3, 8, 0, tzinfo=UTC))
    hashes = HashChain(GENESIS, at)
    previous = GENESIS
    for n, (data, stream, type_) in enumerate(events, start=7):
        event_id = UUID(int=n)
        got = hashes.add(
            99, canonical_json(data), str(event_id), "{}", n, 1,
            hashes.string(stream), n - 6, hashes.string(type_),
        )  # fmt: skip
        content = event_content(
            id=event_id, stream=stream, type=type_, schema_version=1,
            data=canonical_json(data), metadata="{}", stream_version=n - 6, position=n,
            recorded_at=at, batch_end=99,
        )  # fmt: skip
        previous = chain(previous, content)
        assert got == previous
