"""Events survive the trip to JSON and back, and unknown or malformed data is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain import events as ev
from eventledger.domain.events import (
    ACCOUNT_STREAM_PREFIX,
    EVENT_TYPES,
    AccountClosed,
    AccountOpened,
    Event,
    MalformedEvent,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferReceived,
    TransferSent,
    UnknownEvent,
    decode,
    stream_name,
)

texts = st.text(max_size=80)
optional_texts = st.none() | texts
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(AccountOpened, texts, texts, ints, optional_texts),
    st.builds(MoneyDeposited, texts, texts, ints, optional_texts),
    st.builds(MoneyWithdrawn, texts, texts, ints, optional_texts),
    st.builds(TransferSent, texts, texts, texts, ints, optional_texts),
    st.builds(TransferReceived, texts, texts, texts, ints, optional_texts),
    st.builds(AccountClosed, texts),
    st.builds(ev.PendingTransferSent, texts, texts, texts, ints, optional_texts, optional_texts),
    st.builds(
        ev.PendingTransferReceived, texts, texts, texts, ints, optional_texts, optional_texts
    ),
    st.builds(ev.PendingTransferPosted, texts, texts, texts, texts, ints),
    st.builds(ev.PendingTransferVoided, texts, texts, texts, texts, ints, texts),
    st.builds(ev.TransactionReversed, texts, texts, texts, ints, optional_texts),
    st.builds(ev.PersonalDataErased, texts),
)

SAMPLES: list[Event] = [
    AccountOpened("acc-1", "EUR", 500, "Ada"),
    MoneyDeposited("acc-1", "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", 100, None),
    MoneyWithdrawn("acc-1", "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", 100, "atm"),
    TransferSent("acc-1", "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "acc-2", 5, None),
    TransferReceived("acc-2", "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "acc-1", 5, None),
    AccountClosed("acc-1"),
    ev.TransactionReversed(
        "acc-1",
        "11111111-1111-4111-8111-111111111111",
        "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
        -100,
        "sent twice",
    ),
    ev.PersonalDataErased("acc-1"),
]


@settings(max_examples=100, deadline=None)
@given(events)
def test_every_event_reads_back_as_itself_after_a_trip_through_json(event: Event) -> None:
    data = json.loads(json.dumps(event.to_data()))

    assert decode(event.TYPE, data) == event
    assert decode(event.TYPE, data, schema_version=event.SCHEMA_VERSION) == event
    assert type(event).from_data(data) == event


@settings(max_examples=100, deadline=None)
@given(events)
def test_event_data_is_plain_json_with_integers_kept_as_integers(event: Event) -> None:
    data = event.to_data()
    assert all(type(value) in (str, int, type(None)) for value in data.values())
    assert json.loads(json.dumps(data)) == data
    for field in ("amount", "overdraft_limit"):
        if field in data:
            assert type(json.loads(json.dumps(data))[field]) is int


def test_the_event_types_and_their_schema_versions_are_fixed() -> None:
    assert {name: cls.SCHEMA_VERSION for name, cls in EVENT_TYPES.items()} == {
        "AccountOpened": 2,
        "MoneyDeposited": 1,
        "MoneyWithdrawn": 1,
        "TransferSent": 1,
        "TransferReceived": 1,
        "AccountClosed": 1,
        "PendingTransferSent": 1,
        "PendingTransferReceived": 1,
        "PendingTransferPosted": 1,
        "PendingTransferVoided": 1,
        "TransactionReversed": 1,
        "PersonalDataErased": 1,
    }
    assert all(name == cls.TYPE for name, cls in EVENT_TYPES.items())


def test_the_fields_of_stored_events_are_fixed() -> None:
    assert {type(event).TYPE: list(event.to_data()) for event in SAMPLES} == {
        "AccountOpened": ["account_id", "currency", "overdraft_limit", "owner"],
        "MoneyDeposited": ["account_id", "transaction_id", "amount", "reference"],
        "MoneyWithdrawn": ["account_id", "transaction_id", "amount", "reference"],
        "TransferSent": ["account_id", "transaction_id", "to_account", "amount", "reference"],
        "TransferReceived": ["account_id", "transaction_id", "from_account", "amount", "reference"],
        "AccountClosed": ["account_id"],
        "TransactionReversed": ["account_id", "transaction_id", "reverses", "amount", "reference"],
        "PersonalDataErased": ["account_id"],
    }


def test_events_are_immutable() -> None:
    event = MoneyDeposited("acc-1", "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", 100, None)
    with pytest.raises(AttributeError):
        event.amount = 5  # type: ignore[misc]


def test_decoding_an_unknown_event_type_raises_unknown_event() -> None:
    with pytest.raises(UnknownEvent, match="MoneyTeleported") as raised:
        decode("MoneyTeleported", {"account_id": "acc-1"})
    assert raised.value.type == "MoneyTeleported"


def test_decoding_data_of_another_schema_version_raises_unknown_event() -> None:
    data = {"account_id": "acc-1", "currency": "EUR", "owner": None}
    with pytest.raises(UnknownEvent) as raised:
        decode("AccountOpened", data, schema_version=1)
    assert raised.value.schema_version == 1


@pytest.mark.parametrize(
    "change",
    [
        {"amount": "100"},
        {"amount": 100.0},
        {"amount": True},
        {"amount": None},
        {"account_id": 1},
        {"reference": 5},
        {"transaction_id": None},
    ],
)
def test_malformed_event_data_is_refused_not_coerced(change: dict[str, Any]) -> None:
    data = {**SAMPLES[1].to_data(), **change}
    with pytest.raises(MalformedEvent):
        decode("MoneyDeposited", data)


def test_a_missing_field_is_malformed_but_an_extra_field_is_ignored() -> None:
    data = SAMPLES[0].to_data()
    with pytest.raises(MalformedEvent, match="overdraft_limit"):
        decode("AccountOpened", {k: v for k, v in data.items() if k != "overdraft_limit"})
    assert decode("AccountOpened", {**data, "later_field": 1}) == SAMPLES[0]


def test_the_events_of_an_account_live_in_its_own_stream() -> None:
    assert stream_name("acc-42") == "account-acc-42"
    assert stream_name("acc-42").startswith(ACCOUNT_STREAM_PREFIX)
