"""The account cache follows the log: what the live feed does to a cached entry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventledger.domain.account import Account, initial_state
from eventledger.eventstore.codec import to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.accounts import (
    AccountCache,
    InvalidAccountHistory,
    fold_recorded,
)
from eventledger.services.transaction.follower import LogFollower

TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def recorded(
    version: int, type: str, data: dict[str, Any], *, account: str = "a", schema: int = 1
) -> RecordedEvent:
    return RecordedEvent(
        uuid.uuid4(),
        f"account-{account}",
        type,
        schema,
        data,
        {},
        version,
        100 + version,
        datetime(2026, 12, 3, tzinfo=UTC),
    )


def opened(account: str = "a") -> RecordedEvent:
    data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    return recorded(1, "AccountOpened", data, account=account, schema=2)


def deposit(version: int, amount: int, account: str = "a") -> RecordedEvent:
    data = {"account_id": account, "transaction_id": TX, "amount": amount, "reference": None}
    return recorded(version, "MoneyDeposited", data, account=account)


def sse_data(event: RecordedEvent) -> str:
    return json.dumps(to_envelope(event))


def cached(*history: RecordedEvent) -> tuple[AccountCache, LogFollower, Account]:
    cache = AccountCache()
    state = fold_recorded(initial_state("a"), history)
    cache.put(state)
    outcomes: list[str] = []
    return cache, LogFollower("http://127.0.0.1:9", cache, on_outcome=outcomes.append), state


def test_an_event_at_the_next_version_advances_the_cached_state() -> None:
    cache, follower, _ = cached(opened(), deposit(2, 50))
    assert follower.apply_data(sse_data(deposit(3, 25))) == "applied"
    state = cache.peek("a")
    assert state is not None and (state.version, state.balance) == (3, 75)
    assert follower.last_position == 103


def test_an_event_already_in_the_cached_state_is_skipped() -> None:
    # This instance's own write: remembered when its append answered, then seen on the feed.
    cache, follower, before = cached(opened(), deposit(2, 50))
    assert follower.apply_data(sse_data(deposit(2, 50))) == "skipped"
    assert cache.peek("a") == before


def test_a_gap_drops_the_entry_instead_of_guessing() -> None:
    cache, follower, _ = cached(opened(), deposit(2, 50))
    assert follower.apply_data(sse_data(deposit(4, 10))) == "dropped"
    assert cache.peek("a") is None


def test_an_event_that_breaks_the_account_rules_drops_the_entry() -> None:
    cache, follower, _ = cached(opened(), deposit(2, 50))
    assert follower.apply_data(sse_data(deposit(3, 0))) == "dropped"  # amount must be > 0
    assert cache.peek("a") is None


def test_an_account_that_is_not_cached_is_not_loaded_by_the_feed() -> None:
    cache, follower, _ = cached(opened(), deposit(2, 50))
    assert follower.apply_data(sse_data(opened("b"))) == "skipped"
    assert cache.peek("b") is None and len(cache) == 1


def test_malformed_or_foreign_messages_change_nothing() -> None:
    cache, follower, before = cached(opened(), deposit(2, 50))
    other = RecordedEvent(
        uuid.uuid4(), "orders-a", "X", 1, {}, {}, 3, 200, datetime(2026, 12, 3, tzinfo=UTC)
    )
    for data in ("not json", "[]", '{"stream": "account-a"}', sse_data(other)):
        assert follower.apply_data(data) == "skipped"
    assert cache.peek("a") == before


def test_following_does_not_count_as_use_in_the_lru_order() -> None:
    cache = AccountCache(max_size=2)
    follower = LogFollower("http://127.0.0.1:9", cache)
    for account in ("a", "b"):
        cache.put(fold_recorded(initial_state(account), [opened(account)]))
    follower.apply_data(sse_data(deposit(2, 5, account="a")))
    cache.put(fold_recorded(initial_state("c"), [opened("c")]))
    # "a" was advanced by the feed, not used by a command: it is still the oldest.
    assert cache.peek("a") is None and cache.peek("b") is not None


def test_an_answer_arriving_after_the_feed_went_further_does_not_set_the_entry_back() -> None:
    # This instance wrote version 3; another wrote 4; the feed carried both before the answer
    # to this instance's append came back.
    cache, follower, _ = cached(opened(), deposit(2, 50))
    follower.apply_data(sse_data(deposit(3, 25)))
    follower.apply_data(sse_data(deposit(4, 5)))
    answered = fold_recorded(initial_state("a"), [opened(), deposit(2, 50), deposit(3, 25)])
    cache.offer(answered)
    state = cache.peek("a")
    assert state is not None and (state.version, state.balance) == (4, 80)
    cache.offer(fold_recorded(answered, [deposit(4, 5), deposit(5, 1)]))
    state = cache.peek("a")
    assert state is not None and state.version == 5


# -- the plain path (deposits, withdrawals, transfer halves without decoding) -----------------

HOLD = "7a1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
HISTORIES = {
    "open": [opened(), deposit(2, 50)],
    "with a hold": [
        opened(),
        deposit(2, 50),
        recorded(
            3,
            "PendingTransferSent",
            {
                "account_id": "a",
                "transaction_id": HOLD,
                "to_account": "b",
                "amount": 20,
                "reference": None,
                "expires_at": None,
            },
        ),
    ],
    "closed": [opened(), recorded(2, "AccountClosed", {"account_id": "a"})],
}


def _money(type: str, **change: Any) -> tuple[str, int, dict[str, Any]]:
    data: dict[str, Any] = {"account_id": "a", "transaction_id": TX, "amount": 30}
    data["reference"] = None
    if type == "TransferSent":
        data["to_account"] = "b"
    if type == "TransferReceived":
        data["from_account"] = "b"
    schema = change.pop("schema_version", 1)
    return (type, schema, {**data, **change})


NEXT_EVENTS = {
    "a deposit": _money("MoneyDeposited"),
    "a withdrawal past zero": _money("MoneyWithdrawn", amount=500),
    "a transfer sent": _money("TransferSent", reference="rent"),
    "a transfer received": _money("TransferReceived"),
    "another account's id": _money("MoneyDeposited", account_id="b"),
    "no amount": _money("MoneyDeposited", amount=None),
    "an amount of 0": _money("MoneyDeposited", amount=0),
    "an amount that is true": _money("MoneyDeposited", amount=True),
    "an amount that is a float": _money("MoneyDeposited", amount=30.0),
    "an amount past 2^53-1": _money("MoneyDeposited", amount=2**53),
    "a transaction id in upper case": _money("MoneyDeposited", transaction_id=TX.upper()),
    "a reference with a bidi override": _money("MoneyDeposited", reference="gpj\u202eexe"),
    "a transfer to itself": _money("TransferSent", to_account="a"),
    "a transfer from a bad account id": _money("TransferReceived", from_account="-x"),
    "an old schema version": _money("MoneyDeposited", schema_version=0),
    "a newer schema version": _money("MoneyDeposited", schema_version=2),
    "an unknown type": ("MoneyTeleported", 1, {"account_id": "a"}),
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
@pytest.mark.parametrize("event", NEXT_EVENTS.values(), ids=NEXT_EVENTS.keys())
def test_the_feed_gives_the_state_the_full_fold_gives_or_drops_what_it_refuses(
    history: list[RecordedEvent], event: tuple[str, int, dict[str, Any]]
) -> None:
    cache, follower, before = cached(*history)
    type, schema, data = event
    next_event = recorded(before.version + 1, type, data, schema=schema)
    try:
        expected: Account | None = fold_recorded(before, [next_event])
    except InvalidAccountHistory:
        expected = None
    outcome = follower.apply_data(sse_data(next_event))
    assert (outcome, cache.peek("a")) == (
        ("applied", expected) if expected is not None else ("dropped", None)
    )


def test_a_balance_past_the_signed_64_bit_range_is_left_to_the_full_fold() -> None:
    cache, follower, _ = cached(opened(), deposit(2, 2**53 - 1))
    for version in range(3, 1030):  # 2^63 / (2^53 - 1) is about 1024 deposits
        outcome = follower.apply_data(sse_data(deposit(version, 2**53 - 1)))
        if outcome != "applied":
            break
    assert outcome == "dropped" and cache.peek("a") is None
