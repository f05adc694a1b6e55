"""The nesting depth of a strict JSON body is measured on its bytes, as a walk of the parsed
value would measure it, strings (with brackets, quotes and escapes) not counted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventledger.services.http import MAX_JSON_DEPTH, ProblemError, _nesting, parse_json


def walked_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((walked_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((walked_depth(v) for v in value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\/\n é\u2028\U0001f600ab', max_size=8)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=30,
)


@given(value=values, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_the_depth_on_bytes_is_the_depth_of_the_value(
    value: Any, ensure_ascii: bool, indent: int | None
) -> None:
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    assert _nesting(raw) == walked_depth(value)


def test_a_body_nested_one_level_too_deep_is_refused_and_one_less_is_not() -> None:
    inside = '"[[[{{\\\\\\"]]"'  # brackets, escaped quotes and backslashes in a string
    fine = "[" * MAX_JSON_DEPTH + inside + "]" * MAX_JSON_DEPTH
    assert walked_depth(parse_json(fine.encode())) == MAX_JSON_DEPTH
    deep = "[" * (MAX_JSON_DEPTH + 1) + inside + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(ProblemError, match="nested deeper"):
        parse_json(deep.encode())


def test_many_shallow_containers_are_fine() -> None:
    body = json.dumps({"events": [{"data": {"a": [1]}} for _ in range(1000)]}).encode()
    assert _nesting(body) == 5
    parse_json(body)
