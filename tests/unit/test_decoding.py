"""The fast append decoder against its referee, the pydantic request models: whatever it
accepts, the model accepts with the same meaning; whatever the model refuses, it leaves to the
model (answers None)."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from eventledger.eventstore.records import StreamAppend
from eventledger.services.stream import schemas as s
from eventledger.services.stream.decoding import (
    appends_items,
    batch_appends,
    expected_of,
    model_appends,
    new_events,
    stream_append,
)

EVENT_ID = "0b7e4c3e-7a42-4c55-9d1e-6f3f1b7b2a10"


def good_event() -> dict[str, Any]:
    return {
        "id": EVENT_ID,
        "type": "MoneyDeposited",
        "schema_version": 2,
        "data": {"amount": 5, "nested": [1, 2.5, None, {"x": "é"}]},
        "metadata": {"correlation_id": "c-1"},
    }


# Each mutation of a good body: (name, function of the event dict or the append dict).
EVENT_MUTATIONS: list[tuple[str, Any]] = [
    ("nothing", lambda e: None),
    ("no id", lambda e: e.pop("id")),
    ("null id", lambda e: e.update(id=None)),
    ("uppercase id", lambda e: e.update(id=EVENT_ID.upper())),
    ("id not a uuid", lambda e: e.update(id="not-a-uuid")),
    ("id with newline", lambda e: e.update(id=EVENT_ID + "\n")),
    ("id a number", lambda e: e.update(id=5)),
    ("no type", lambda e: e.pop("type")),
    ("type with space", lambda e: e.update(type="Money Deposited")),
    ("type with newline", lambda e: e.update(type="Money\n")),
    ("type starts with digit", lambda e: e.update(type="1Money")),
    ("type 129 chars", lambda e: e.update(type="M" * 129)),
    ("type 128 chars", lambda e: e.update(type="M" * 128)),
    ("type a list", lambda e: e.update(type=["M"])),
    ("no schema_version", lambda e: e.pop("schema_version")),
    ("schema_version 0", lambda e: e.update(schema_version=0)),
    ("schema_version max", lambda e: e.update(schema_version=2**31 - 1)),
    ("schema_version over max", lambda e: e.update(schema_version=2**31)),
    ("schema_version true", lambda e: e.update(schema_version=True)),
    ("schema_version 1.0", lambda e: e.update(schema_version=1.0)),
    ("schema_version '1'", lambda e: e.update(schema_version="1")),
    ("no data", lambda e: e.pop("data")),
    ("data a list", lambda e: e.update(data=[1])),
    ("data null", lambda e: e.update(data=None)),
    ("data empty", lambda e: e.update(data={})),
    ("no metadata", lambda e: e.pop("metadata")),
    ("metadata null", lambda e: e.update(metadata=None)),
    ("metadata a string", lambda e: e.update(metadata="x")),
    ("an unknown field", lambda e: e.update(extra=1)),
    ("data at the size limit", lambda e: e.update(data={"b": "x" * (s.MAX_EVENT_BYTES - 40)})),
    ("data over the size limit", lambda e: e.update(data={"b": "x" * s.MAX_EVENT_BYTES})),
    (
        "data over the limit once escaped",
        lambda e: e.update(data={"b": "é" * (s.MAX_EVENT_BYTES // 5)}),
    ),
]
APPEND_MUTATIONS: list[tuple[str, Any]] = [
    ("nothing", lambda a: None),
    ("expected 0", lambda a: a.update(expected_version=0)),
    ("expected max", lambda a: a.update(expected_version=2**63 - 1)),
    ("expected over max", lambda a: a.update(expected_version=2**63)),
    ("expected -1", lambda a: a.update(expected_version=-1)),
    ("expected no_stream", lambda a: a.update(expected_version="no_stream")),
    ("expected exists", lambda a: a.update(expected_version="exists")),
    ("expected 'ANY'", lambda a: a.update(expected_version="ANY")),
    ("expected '3'", lambda a: a.update(expected_version="3")),
    ("expected 3.0", lambda a: a.update(expected_version=3.0)),
    ("expected false", lambda a: a.update(expected_version=False)),
    ("expected null", lambda a: a.update(expected_version=None)),
    ("no expected", lambda a: a.pop("expected_version")),
    ("no events", lambda a: a.pop("events")),
    ("events empty", lambda a: a.update(events=[])),
    ("events 1000", lambda a: a.update(events=[good_event() for _ in range(1000)])),
    ("events 1001", lambda a: a.update(events=[good_event() for _ in range(1001)])),
    ("events an object", lambda a: a.update(events={})),
    ("event a string", lambda a: a.update(events=["x"])),
    ("an unknown field", lambda a: a.update(more=1)),
]


def model_stream_append(stream: str, payload: Any) -> StreamAppend | None:
    try:
        body = s.AppendIn.model_validate(payload, strict=True)
    except ValidationError:
        return None
    return StreamAppend(stream, expected_of(body.expected_version), new_events(body.events))


def model_batch(payload: Any) -> list[StreamAppend] | None:
    try:
        return model_appends(s.BatchIn.model_validate(payload, strict=True).appends)
    except ValidationError:
        return None


def same(fast: StreamAppend, model: StreamAppend, *, ids_given: bool) -> None:
    assert (fast.stream, fast.expected_version) == (model.stream, model.expected_version)
    assert len(fast.events) == len(model.events)
    for a, b in zip(fast.events, model.events, strict=True):
        assert (a.type, a.schema_version) == (b.type, b.schema_version)
        assert (dict(a.data), dict(a.metadata)) == (dict(b.data), dict(b.metadata))
        assert type(a.id) is uuid.UUID
        if ids_given:
            assert a.id == b.id


def check(stream: str, payload: Any, *, both_ways: bool = True) -> None:
    """Fast accepts => the model accepts alike; with `both_ways`, also the converse (the fast
    path is not merely safe but takes every valid body of these shapes)."""
    size = len(json.dumps(payload).encode())
    fast = stream_append(stream, copy.deepcopy(payload), size)
    model = model_stream_append(stream, copy.deepcopy(payload))
    if both_ways:
        assert (fast is None) == (model is None)
    if fast is not None:
        assert model is not None, "the fast path accepted what the model refuses"
        ids_given = all(isinstance(e, dict) and e.get("id") for e in payload["events"])
        same(fast, model, ids_given=ids_given)


@pytest.mark.parametrize(("name", "mutate"), EVENT_MUTATIONS, ids=[m[0] for m in EVENT_MUTATIONS])
def test_an_event_the_fast_path_accepts_the_model_accepts_alike(name: str, mutate: Any) -> None:
    event = good_event()
    mutate(event)
    check("orders-1", {"expected_version": 3, "events": [good_event(), event]})


@pytest.mark.parametrize(("name", "mutate"), APPEND_MUTATIONS, ids=[m[0] for m in APPEND_MUTATIONS])
def test_an_append_the_fast_path_accepts_the_model_accepts_alike(name: str, mutate: Any) -> None:
    append: dict[str, Any] = {"expected_version": "any", "events": [good_event()]}
    mutate(append)
    check("orders-1", append)


def test_plain_bodies_take_the_fast_path() -> None:
    body = {"expected_version": 0, "events": [good_event(), {"type": "A", "data": {}}]}
    assert stream_append("s", body, 300) is not None
    batch = {"appends": [{"stream": "s-1", **body}, {"stream": "s-2", **body}]}
    appends = batch_appends(batch, 600)
    assert appends is not None and [a.stream for a in appends] == ["s-1", "s-2"]
    assert appends_items({"items": [batch]}) == [batch]


def test_an_event_over_the_size_limit_in_a_large_body_is_left_to_the_model() -> None:
    small = [{"type": "A", "data": {"n": i}} for i in range(300)]
    big = {"type": "A", "data": {"b": "x" * s.MAX_EVENT_BYTES}}
    body = {"expected_version": "any", "events": [*small, big, *small]}
    assert stream_append("s", body, len(json.dumps(body))) is None
    assert model_stream_append("s", body) is None


_LIMIT = s.MAX_EVENT_BYTES


@pytest.mark.parametrize(
    "data",
    [
        {"b": "é" * (_LIMIT // 6 - 10)},  # within once escaped (6 characters each)
        {"b": "é" * (_LIMIT // 6 + 10)},  # over once escaped, a third of it in UTF-8
        {"b": "😀" * (_LIMIT // 12 - 10)},  # a surrogate pair: 12 characters, 4 bytes
        {"b": "😀" * (_LIMIT // 12 + 10)},
        {"b": "\u0001" * (_LIMIT // 6 + 10)},  # control characters: \\u0001 either way
        {"b": "x" * (_LIMIT - 40)},
        {"b": "x" * (_LIMIT - 20)},
        {"f": [1e-07] * (_LIMIT // 6 - 20)},  # "1e-07" in the model's text, "1e-7" in orjson's
        {"f": [1e-07] * (_LIMIT // 6 + 20)},
        {"n": 2**70, "b": "x" * (_LIMIT - 60)},  # past orjson's ints: measured exactly
        {"n": 2**70, "b": "x" * _LIMIT},
    ],
    ids=lambda data: f"{sorted(data)}-{len(json.dumps(data))}",
)
def test_an_event_near_the_size_limit_in_a_large_body_is_decided_as_the_model_does(
    data: dict[str, Any],
) -> None:
    padding = [{"type": "A", "data": {"n": i}} for i in range(300)]  # the body gets measured
    check("s", {"expected_version": "any", "events": [*padding, {"type": "A", "data": data}]})


@pytest.mark.parametrize(
    "payload",
    [
        {"appends": []},
        {"appends": [{"stream": "bad name", "expected_version": 0, "events": [good_event()]}]},
        {"appends": [{"stream": "s" * 129, "expected_version": 0, "events": [good_event()]}]},
        {"appends": [{"stream": "ok", "expected_version": 0, "events": [good_event()]}], "x": 1},
        {"appends": [{"stream": "ok", "expected_version": 0}]},
        {"appends": [{"stream": "ok", "expected_version": 0, "events": [good_event()]}] * 101},
        {"appends": [{"stream": "ok", "expected_version": 0, "events": [good_event()]}] * 100},
        {"appends": "x"},
        [],
    ],
)
def test_a_batch_the_fast_path_accepts_the_model_accepts_alike(payload: Any) -> None:
    fast = batch_appends(copy.deepcopy(payload), 10_000)
    model = model_batch(copy.deepcopy(payload))
    assert (fast is None) == (model is None)
    if fast is not None:
        assert model is not None
        for a, b in zip(fast, model, strict=True):
            same(a, b, ids_given=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    event=st.dictionaries(
        st.sampled_from(["id", "type", "schema_version", "data", "metadata", "other"]),
        json_values,
    ),
    expected=json_values,
)
def test_any_json_the_fast_path_accepts_the_model_accepts_alike(
    event: dict[str, Any], expected: Any
) -> None:
    check("orders-1", {"expected_version": expected, "events": [event]}, both_ways=False)
