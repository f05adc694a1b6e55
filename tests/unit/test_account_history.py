"""The command side folds a stored account history only when the validity rule accepts every
event of it; otherwise it refuses to decide (500 `invalid-account-history`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventledger.domain.account import initial_state
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.accounts import InvalidAccountHistory, fold_recorded
from eventledger.services.transaction.problems import problem_for

TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def recorded(version: int, type: str, data: dict[str, Any], schema: int = 1) -> RecordedEvent:
    return RecordedEvent(
        uuid.uuid4(),
        "account-a",
        type,
        schema,
        data,
        {},
        version,
        100 + version,
        datetime(2026, 11, 27, tzinfo=UTC),
    )


OPENED = recorded(
    1,
    "AccountOpened",
    {"account_id": "a", "currency": "EUR", "overdraft_limit": 0, "owner": None},
    schema=2,
)


def deposit(version: int, amount: int, reference: str | None = None) -> RecordedEvent:
    data = {"account_id": "a", "transaction_id": TX, "amount": amount, "reference": reference}
    return recorded(version, "MoneyDeposited", data)


def test_a_valid_history_folds_into_the_account() -> None:
    state = fold_recorded(initial_state("a"), [OPENED, deposit(2, 50), deposit(3, 25)])
    assert (state.exists, state.balance, state.version, state.currency) == (True, 75, 3, "EUR")


@pytest.mark.parametrize(
    ("history", "version"),
    [
        ([deposit(1, 50)], 1),
        ([OPENED, deposit(2, 0)], 2),
        ([OPENED, deposit(2, 5, reference="\u202eevil")], 2),
        ([OPENED, recorded(2, "MoneyTeleported", {"account_id": "a"})], 2),
        ([OPENED, deposit(3, 5)], 3),
    ],
    ids=["before opening", "amount 0", "bidi text", "unknown type", "a version gap"],
)
def test_a_history_that_breaks_the_rule_is_not_decided_on(
    history: list[RecordedEvent], version: int
) -> None:
    with pytest.raises(InvalidAccountHistory) as caught:
        fold_recorded(initial_state("a"), history)
    assert (caught.value.stream, caught.value.version) == ("account-a", version)


def test_an_invalid_history_is_answered_500_naming_the_event() -> None:
    with pytest.raises(InvalidAccountHistory) as caught:
        fold_recorded(initial_state("a"), [OPENED, deposit(2, 0)])
    problem = problem_for(caught.value)
    assert problem is not None
    assert (problem.status, problem.type) == (500, "invalid-account-history")
    assert problem.extra == {"stream": "account-a", "version": 2, "position": 102}
