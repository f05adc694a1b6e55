"""The guard's fast path (services/stream/guard_plain.py) accepts only what the full rule
(`domain.validity`) accepts, with the same facts after it: checked on many appends, most of
them plain, many broken in one place."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.money import INT64_MAX, MAX_AMOUNT
from eventledger.domain.validity import AccountFacts, check_batch, decode_event
from eventledger.eventstore.records import NewEvent
from eventledger.services.stream.guard_plain import plain_events, plain_facts

ACCOUNT = "acc-1"
TX = "0b8f5ae4-5c2f-4c55-9e61-2f0a7b0f2a11"
_ids = iter(range(1, 10**9))


def _event(type: str, data: dict[str, Any], schema_version: int = 1) -> NewEvent:
    return NewEvent(UUID(int=next(_ids)), type, data, {}, schema_version)


def opened(**change: Any) -> NewEvent:
    data = {"account_id": ACCOUNT, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    return _event("AccountOpened", {**data, **change}, 2)


def money(type: str = "MoneyDeposited", **change: Any) -> NewEvent:
    data = {"account_id": ACCOUNT, "transaction_id": TX, "amount": 100, "reference": None}
    return _event(type, {**data, **change})


def full_rule(facts: AccountFacts, events: list[NewEvent]) -> AccountFacts | None:
    try:
        decoded = [decode_event(e.type, e.data, schema_version=e.schema_version) for e in events]
        return check_batch({ACCOUNT: facts}, [(ACCOUNT, decoded)])[ACCOUNT]
    except InvalidAccountEvent:
        return None


def fast_path(facts: AccountFacts, events: list[NewEvent]) -> AccountFacts | None:
    moves = plain_events(events)
    return None if moves is None else plain_facts(facts, moves)


BREAKS: list[dict[str, Any]] = [
    {"account_id": "acc-2"},
    {"account_id": 7},
    {"transaction_id": TX.upper()},
    {"transaction_id": "not-a-uuid"},
    {"amount": 0},
    {"amount": True},
    {"amount": 1.5},
    {"amount": MAX_AMOUNT + 1},
    {"amount": -5},
    {"reference": "a\u202eb"},
    {"reference": 3},
    {"reference": "x" * 300},
    {"currency": "EURO"},
    {"currency": None},
    {"overdraft_limit": -1},
    {"overdraft_limit": False},
    {"owner": "\x00"},
    {"owner": ["x"]},
]


@st.composite
def appends(draw: st.DrawFn) -> tuple[AccountFacts, list[NewEvent]]:
    exists = draw(st.booleans())
    facts = AccountFacts(ACCOUNT)
    if exists:
        facts = AccountFacts(
            ACCOUNT,
            True,
            draw(st.booleans()),
            draw(st.integers(1, 5)),
            "EUR",
            draw(st.sampled_from([0, 100, -50, INT64_MAX - 150, -(2**63) + 120])),
            {},
            draw(st.sampled_from([0, 0, 30])),
            draw(st.sampled_from([0, 0, 40])),
        )
    events: list[NewEvent] = []
    if not exists or draw(st.booleans()):
        events.append(opened())
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["MoneyDeposited", "MoneyWithdrawn"]))
        amount = draw(st.sampled_from([1, 100, MAX_AMOUNT]))
        events.append(money(kind, amount=amount))
    if events and draw(st.booleans()):  # break one event in one place
        index = draw(st.integers(0, len(events) - 1))
        event = events[index]
        change = draw(st.sampled_from(BREAKS))
        other = draw(
            st.sampled_from(["same", "TransferSent", "AccountClosed", "schema", "data", "x"])
        )
        data: Any = {**event.data, **change}
        type, version = event.type, event.schema_version
        if other == "schema":
            version += 1
        elif other == "data":
            data = [data]
        elif other != "same":
            type = other
        events[index] = NewEvent(event.id, type, data, {}, version)
    return facts, events


@settings(max_examples=600)
@given(appends())
def test_the_fast_path_accepts_only_what_the_rule_accepts_with_the_same_facts(
    case: tuple[AccountFacts, list[NewEvent]],
) -> None:
    facts, events = case
    fast = fast_path(facts, events)
    if fast is not None:
        assert full_rule(facts, events) == fast


def test_a_bulk_append_and_a_command_take_the_fast_path() -> None:
    bulk = [opened(), *(money() for _ in range(999))]
    after = fast_path(AccountFacts(ACCOUNT), bulk)
    assert after is not None and after == full_rule(AccountFacts(ACCOUNT), bulk)
    assert after.version == 1000 and after.balance == 99_900
    withdrawal = [money("MoneyWithdrawn", amount=150_000, reference="rent")]
    assert fast_path(after, withdrawal) == full_rule(after, withdrawal)


def test_what_the_fast_path_leaves_to_the_rule() -> None:
    opened_facts = AccountFacts(ACCOUNT, True, False, 1, "EUR", 0)
    for facts, events in [
        (opened_facts, [money("TransferSent", to_account="acc-2")]),  # pairs across an append
        (opened_facts, [_event("AccountClosed", {"account_id": ACCOUNT})]),
        (AccountFacts(ACCOUNT, True, True, 2, "EUR", 0), [money()]),  # closed
        (AccountFacts(ACCOUNT), [money()]),  # never opened
        (opened_facts, [opened()]),  # opened twice
        (AccountFacts(ACCOUNT, True, False, 1, "EUR", INT64_MAX), [money()]),  # out of range
    ]:
        assert fast_path(facts, events) is None
