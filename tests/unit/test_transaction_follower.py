"""The account cache follows the log: what the live feed does to a cached entry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from eventledger.domain.account import Account, initial_state
from eventledger.eventstore.codec import to_envelope
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.accounts import AccountCache, fold_recorded
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
