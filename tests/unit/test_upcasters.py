"""AccountOpened schema v1 (no overdraft limit) reads as v2 with an overdraft limit of 0."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventledger.domain.account import decide, fold
from eventledger.domain.commands import Withdraw
from eventledger.domain.errors import InsufficientFunds
from eventledger.domain.events import AccountOpened, Event, UnknownEvent, decode
from eventledger.domain.upcasters import UPCASTERS, account_opened_v1_to_v2
from eventledger.eventstore.records import RecordedEvent
from eventledger.eventstore.upcasting import UpcasterRegistry

V1_DATA = {"account_id": "acc-1", "currency": "EUR", "owner": "Ada"}


def registry() -> UpcasterRegistry:
    upcasters = UpcasterRegistry()
    for event_type, from_version, upcaster in UPCASTERS:
        upcasters.register(event_type, from_version, upcaster)
    return upcasters


def recorded(
    type: str, schema_version: int, data: dict[str, Any], version: int = 1
) -> RecordedEvent:
    return RecordedEvent(
        id=uuid.UUID(int=version),
        stream="account-acc-1",
        type=type,
        schema_version=schema_version,
        data=data,
        metadata={},
        stream_version=version,
        position=version,
        recorded_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
    )


def to_domain(event: RecordedEvent) -> Event:
    return decode(event.type, event.data, schema_version=event.schema_version)


def test_a_v1_account_opened_reads_as_v2_without_overdraft() -> None:
    upcast = registry().upcast(recorded("AccountOpened", 1, V1_DATA))

    assert upcast.schema_version == 2
    assert dict(upcast.data) == {**V1_DATA, "overdraft_limit": 0}
    assert to_domain(upcast) == AccountOpened("acc-1", "EUR", 0, "Ada")


def test_a_v2_account_opened_is_read_unchanged() -> None:
    event = recorded("AccountOpened", 2, {**V1_DATA, "overdraft_limit": 500})
    assert registry().upcast(event) is event


def test_events_of_other_types_are_read_unchanged() -> None:
    event = recorded("MoneyDeposited", 1, {"account_id": "acc-1"})
    assert registry().upcast(event) is event


def test_upcasting_leaves_the_stored_data_untouched() -> None:
    data = dict(V1_DATA)
    account_opened_v1_to_v2(data)
    assert data == V1_DATA


def test_an_account_opened_at_v1_folds_into_an_account_with_no_overdraft() -> None:
    upcasters = registry()
    stored = [
        recorded("AccountOpened", 1, V1_DATA, version=1),
        recorded(
            "MoneyDeposited",
            1,
            {
                "account_id": "acc-1",
                "transaction_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
                "amount": 100,
                "reference": None,
            },
            version=2,
        ),
    ]

    account = fold("acc-1", [to_domain(upcasters.upcast(event)) for event in stored])

    assert (account.exists, account.overdraft_limit, account.balance, account.version) == (
        True,
        0,
        100,
        2,
    )
    with pytest.raises(InsufficientFunds):
        decide(account, Withdraw("acc-1", "0b1c2d3e-4a5b-4c6d-8e7f-0123456789ab", 101))


def test_a_v1_account_opened_is_not_misread_without_upcasting() -> None:
    with pytest.raises(UnknownEvent, match="schema version 1"):
        to_domain(recorded("AccountOpened", 1, V1_DATA))
