"""The statistics projection as a pure function: events in, counters out, no database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import projection as accounting
from eventledger.services.readside.projection import EventRejected
from eventledger.services.statistics.projection import (
    StatsAccount,
    Tally,
    account_id_of,
    evolve,
    total,
)
from tests.unit.test_accounting_projection import Log


def totals(
    events: Sequence[RecordedEvent],
) -> tuple[dict[str, Tally], dict[tuple[str, str], Tally]]:
    """Fold events into per-currency and per-(day, currency) tallies, as the store does."""
    accounts: dict[str, StatsAccount] = {}
    currencies: dict[str, Tally] = {}
    days: dict[tuple[str, str], Tally] = {}
    for event in events:
        account_id = account_id_of(event.stream)
        assert account_id is not None
        change = evolve(accounts.get(account_id), event)
        accounts[account_id] = change.account
        currencies[change.currency] = currencies.get(change.currency, Tally()) + change.delta
        key = (change.day, change.currency)
        days[key] = days.get(key, Tally()) + change.delta
    return currencies, days


def test_opening_and_closing_count_accounts_per_currency() -> None:
    log = Log()
    currencies, _ = totals(
        [log.opened("a", "EUR"), log.opened("b", "EUR"), log.opened("c", "USD"), log.closed("b")]
    )
    eur, usd = currencies["EUR"], currencies["USD"]
    assert (eur.opened - eur.closed, eur.closed) == (1, 1)
    assert (usd.opened - usd.closed, usd.closed) == (1, 0)


def test_closing_twice_is_rejected() -> None:
    log = Log()
    account = evolve(evolve(None, log.opened("a")).account, log.closed("a")).account
    with pytest.raises(EventRejected, match="closed"):
        evolve(account, log.closed("a"))


def test_each_account_row_keeps_its_balance() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    account = evolve(account, log.deposited("a", 700)).account
    account = evolve(account, log.withdrawn("a", 200)).account
    assert (account.balance, account.version) == (500, 3)


def test_a_balance_leaving_the_signed_64_bit_range_is_rejected_as_accounting_does() -> None:
    log = Log()
    account = StatsAccount("a", "EUR", "open", 1, 2**63 - 1)
    with pytest.raises(EventRejected, match="64-bit"):
        evolve(account, log.event("a", "MoneyDeposited", _money("a", 1), version=2))


def test_closing_with_money_on_the_account_is_rejected() -> None:
    log = Log()
    account = StatsAccount("a", "EUR", "open", 1, 5)
    with pytest.raises(EventRejected, match="balance 0"):
        evolve(account, log.event("a", "AccountClosed", {"account_id": "a"}, version=2))


def _money(account: str, amount: int) -> dict[str, object]:
    tx = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
    return {"account_id": account, "transaction_id": tx, "amount": amount, "reference": None}


def test_deposits_and_withdrawals_are_counted_with_their_volume() -> None:
    log = Log()
    currencies, _ = totals(
        [
            log.opened("a"),
            log.deposited("a", 500),
            log.deposited("a", 250),
            log.withdrawn("a", 100),
        ]
    )
    assert currencies["EUR"] == Tally(
        opened=1,
        balance=650,
        deposits_count=2,
        deposits_volume=750,
        withdrawals_count=1,
        withdrawals_volume=100,
    )


def test_a_transfer_counts_once_and_leaves_the_total_balance_unchanged() -> None:
    log = Log()
    currencies, _ = totals(
        [
            log.opened("a"),
            log.opened("b"),
            log.deposited("a", 1000),
            log.sent("a", "b", 300),
            log.received("b", "a", 300),
        ]
    )
    eur = currencies["EUR"]
    assert (eur.transfers_count, eur.transfers_volume) == (1, 300)
    assert eur.balance == 1000


def test_each_currency_has_its_own_counters() -> None:
    log = Log()
    currencies, _ = totals([log.opened("e", "EUR"), log.opened("u", "USD"), log.deposited("u", 7)])
    assert currencies["EUR"].deposits_count == 0
    assert (currencies["USD"].deposits_count, currencies["USD"].balance) == (1, 7)


def test_days_are_the_utc_day_of_recorded_at() -> None:
    log = Log()
    opened = log.opened("a")
    late = log.deposited("a", 5)
    late = RecordedEvent(
        late.id,
        late.stream,
        late.type,
        late.schema_version,
        late.data,
        {},
        late.stream_version,
        late.position,
        datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=UTC),
    )
    _, days = totals([opened, late])
    assert set(days) == {("2026-11-27", "EUR"), ("2026-11-28", "EUR")}
    assert days[("2026-11-28", "EUR")] == Tally(balance=5, deposits_count=1, deposits_volume=5)


def test_volumes_are_never_capped_at_64_bits() -> None:
    log = Log()
    events = [log.opened("a", overdraft=2**53 - 1)]
    for _ in range(1100):
        events += [log.deposited("a", 2**53 - 1), log.withdrawn("a", 2**53 - 1)]
    currencies, _ = totals(events)
    assert currencies["EUR"].deposits_volume == 1100 * (2**53 - 1) > 2**63
    assert currencies["EUR"].balance == 0


@pytest.mark.parametrize("type", ["MoneyDeposited", "AccountClosed"])
def test_an_event_for_an_account_never_opened_is_rejected(type: str) -> None:
    log = Log()
    event = log.deposited("ghost", 1) if type == "MoneyDeposited" else log.closed("ghost")
    with pytest.raises(EventRejected, match="never opened"):
        evolve(None, event)


def test_an_unknown_event_type_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    with pytest.raises(EventRejected, match="unknown event type"):
        evolve(account, log.event("a", "Refunded", {"account_id": "a"}))


# -- properties ---------------------------------------------------------------------------

MOVES = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "withdrawal", "transfer"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=1, max_value=10**12),
    ),
    max_size=50,
)


@given(MOVES)
def test_the_total_balance_is_the_sum_of_the_accounting_balances(
    moves: list[tuple[str, str, str, int]],
) -> None:
    log = Log()
    events = [log.opened(a, overdraft=2**53 - 1) for a in ("a", "b", "c")]
    for kind, source, target, amount in moves:
        if kind == "deposit":
            events.append(log.deposited(source, amount))
        elif kind == "withdrawal":
            events.append(log.withdrawn(source, amount))
        elif source != target:
            events += [log.sent(source, target, amount), log.received(target, source, amount)]
    currencies, days = totals(events)
    balances: dict[str, int] = {}
    rows: dict[str, accounting.Account] = {}
    for event in events:
        account_id = accounting.account_id_of(event.stream)
        assert account_id is not None
        rows[account_id] = accounting.evolve(rows.get(account_id), event).account
        balances[account_id] = rows[account_id].balance
    eur = currencies["EUR"]
    assert eur.balance == sum(balances.values())
    assert eur.deposits_volume - eur.withdrawals_volume == eur.balance
    assert eur.transfers_count == sum(1 for k, s, t, _ in moves if k == "transfer" and s != t)
    assert sum(days.values(), Tally()) == eur


def test_the_total_of_a_page_is_the_sum_of_its_deltas() -> None:
    deltas = [
        Tally(opened=1),
        Tally(balance=5, deposits_count=1, deposits_volume=5),
        Tally(balance=-2, transfers_count=1, transfers_volume=2),
    ]
    assert total(deltas) == deltas[0] + deltas[1] + deltas[2]
    assert total([]) == Tally()
