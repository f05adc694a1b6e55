"""PersonalDataErased in the account rule (domain/validity.py): valid on any opened account,
open or closed, and what a reader sees after an erasure still passes the rule."""

from __future__ import annotations

import pytest

from eventledger.domain.account import evolve, initial_state
from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    MoneyDeposited,
    PersonalDataErased,
    decode,
    references_agree,
)
from eventledger.domain.validity import AccountFacts, check_event

A = "acc-a"
OPEN = AccountFacts(A, exists=True, version=1, currency="EUR")


def test_personal_data_erased_is_valid_on_an_open_account_and_changes_no_money() -> None:
    facts = check_event(OPEN, PersonalDataErased(A), stream_version=2)
    assert facts.version == 2 and facts.balance == 0 and not facts.closed


def test_personal_data_erased_is_valid_on_a_closed_account() -> None:
    closed = check_event(OPEN, AccountClosed(A), stream_version=2)
    assert check_event(closed, PersonalDataErased(A), stream_version=3).closed


def test_personal_data_erased_needs_an_opened_account_of_its_stream() -> None:
    with pytest.raises(InvalidAccountEvent) as never_opened:
        check_event(AccountFacts(A), PersonalDataErased(A), stream_version=1)
    assert never_opened.value.rule == "not-opened"
    with pytest.raises(InvalidAccountEvent) as other:
        check_event(OPEN, PersonalDataErased("acc-b"), stream_version=2)
    assert other.value.rule == "wrong-account"


def test_an_erased_owner_is_a_valid_account_opened() -> None:
    erased = decode(
        "AccountOpened", {"account_id": A, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    )
    assert isinstance(erased, AccountOpened)
    assert check_event(AccountFacts(A), erased, stream_version=1).exists


def test_references_agree_when_equal_or_when_one_side_is_erased() -> None:
    assert references_agree("rent", "rent") and references_agree(None, None)
    assert references_agree(None, "rent") and references_agree("rent", None)
    assert not references_agree("rent", "rent!")


def test_the_command_side_state_forgets_the_owner_and_keeps_the_money() -> None:
    state = initial_state(A)
    for event in (
        AccountOpened(A, "EUR", 0, "Ada"),
        MoneyDeposited(A, "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", 300, "rent"),
        PersonalDataErased(A),
    ):
        state = evolve(state, event)
    assert state.owner is None and state.balance == 300 and state.version == 3
