"""The accounting projection as a pure function: events in, rows out, no database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.projection import (
    Account,
    Change,
    HistoryItem,
    account_id_of,
    evolve,
)
from eventledger.services.readside.projection import EventRejected

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@dataclass
class Log:
    """Builds recorded events as the store would: positions and stream versions in order."""

    position: int = 0
    versions: dict[str, int] = field(default_factory=dict)

    def event(
        self,
        account: str,
        type: str,
        data: dict[str, Any],
        *,
        schema_version: int = 1,
        version: int | None = None,
        stream: str | None = None,
    ) -> RecordedEvent:
        stream = stream or f"account-{account}"
        self.position += 1
        self.versions[stream] = version or self.versions.get(stream, 0) + 1
        return RecordedEvent(
            id=uuid.uuid4(),
            stream=stream,
            type=type,
            schema_version=schema_version,
            data=data,
            metadata={},
            stream_version=self.versions[stream],
            position=self.position,
            recorded_at=T0 + timedelta(seconds=self.position),
        )

    def opened(self, account: str, currency: str = "EUR", overdraft: int = 0) -> RecordedEvent:
        data = {"account_id": account, "currency": currency, "overdraft_limit": overdraft}
        return self.event(account, "AccountOpened", {**data, "owner": "Ada"}, schema_version=2)

    def money(self, type: str, account: str, amount: int, **extra: Any) -> RecordedEvent:
        data = {
            "account_id": account,
            "transaction_id": str(uuid.uuid4()),
            "amount": amount,
            "reference": extra.pop("reference", None),
            **extra,
        }
        return self.event(account, type, data)

    def deposited(self, account: str, amount: int, **extra: Any) -> RecordedEvent:
        return self.money("MoneyDeposited", account, amount, **extra)

    def withdrawn(self, account: str, amount: int) -> RecordedEvent:
        return self.money("MoneyWithdrawn", account, amount)

    def sent(self, account: str, to: str, amount: int) -> RecordedEvent:
        return self.money("TransferSent", account, amount, to_account=to)

    def received(self, account: str, source: str, amount: int) -> RecordedEvent:
        return self.money("TransferReceived", account, amount, from_account=source)

    def closed(self, account: str) -> RecordedEvent:
        return self.event(account, "AccountClosed", {"account_id": account})


def fold(events: Sequence[RecordedEvent]) -> tuple[dict[str, Account], list[HistoryItem]]:
    accounts: dict[str, Account] = {}
    items: list[HistoryItem] = []
    for event in events:
        account_id = account_id_of(event.stream)
        assert account_id is not None
        change = evolve(accounts.get(account_id), event)
        accounts[account_id] = change.account
        if change.item is not None:
            items.append(change.item)
    return accounts, items


def test_an_opened_account_is_open_at_balance_zero_without_history() -> None:
    log = Log()
    change = evolve(None, log.opened("acc-1", "USD", overdraft=500))
    assert change == Change(
        Account(
            account_id="acc-1",
            currency="USD",
            balance=0,
            overdraft_limit=500,
            owner="Ada",
            status="open",
            version=1,
            opened_at="2026-11-27T10:00:01.000000Z",
            opened_position=1,
            updated_at="2026-11-27T10:00:01.000000Z",
            position=1,
        ),
        None,
    )


def test_a_deposit_raises_the_balance_and_adds_a_deposit_item() -> None:
    log = Log()
    opened = log.opened("a")
    deposit = log.deposited("a", 1250, reference="salary")
    accounts, items = fold([opened, deposit])
    assert accounts["a"].balance == 1250
    assert accounts["a"].version == 2
    assert accounts["a"].position == 2
    assert accounts["a"].updated_at == "2026-11-27T10:00:02.000000Z"
    assert items == [
        HistoryItem(
            account_id="a",
            position=2,
            transaction_id=deposit.data["transaction_id"],
            kind="deposit",
            amount=1250,
            balance_after=1250,
            counterparty=None,
            reference="salary",
            recorded_at="2026-11-27T10:00:02.000000Z",
        )
    ]


def test_a_withdrawal_has_a_negative_amount_and_may_use_the_overdraft() -> None:
    log = Log()
    accounts, items = fold([log.opened("a", overdraft=100), log.withdrawn("a", 80)])
    assert accounts["a"].balance == -80
    assert (items[0].kind, items[0].amount, items[0].balance_after) == ("withdrawal", -80, -80)


def test_a_transfer_moves_money_out_of_the_sender_and_into_the_receiver() -> None:
    log = Log()
    accounts, items = fold(
        [
            log.opened("a"),
            log.opened("b"),
            log.deposited("a", 1000),
            log.sent("a", "b", 300),
            log.received("b", "a", 300),
        ]
    )
    assert (accounts["a"].balance, accounts["b"].balance) == (700, 300)
    out, into = items[1], items[2]
    assert (out.kind, out.amount, out.balance_after, out.counterparty) == (
        "transfer_out",
        -300,
        700,
        "b",
    )
    assert (into.kind, into.amount, into.balance_after, into.counterparty) == (
        "transfer_in",
        300,
        300,
        "a",
    )


def test_closing_marks_the_account_closed_and_adds_no_history() -> None:
    log = Log()
    accounts, items = fold([log.opened("a"), log.closed("a")])
    assert accounts["a"].status == "closed"
    assert accounts["a"].version == 2
    assert items == []


@pytest.mark.parametrize(
    ("stream", "account"),
    [("account-acc-1", "acc-1"), ("account-", None), ("transfers-1", None), ("accounts", None)],
)
def test_only_account_streams_are_projected(stream: str, account: str | None) -> None:
    assert account_id_of(stream) == account


def rejected(account: Account | None, event: RecordedEvent) -> str:
    with pytest.raises(EventRejected) as caught:
        evolve(account, event)
    assert caught.value.event is event
    return caught.value.reason


def test_money_on_an_account_never_opened_is_rejected() -> None:
    assert "never opened" in rejected(None, Log().deposited("ghost", 10))


def test_opening_an_open_account_again_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    assert "opens once" in rejected(account, log.opened("a"))


def test_a_gap_in_the_stream_versions_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    assert "does not follow" in rejected(
        account, log.event("a", "AccountClosed", {"account_id": "a"}, version=3)
    )


def test_an_unknown_event_type_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    assert "unknown event type" in rejected(account, log.event("a", "MoneyTeleported", {}))


def test_an_old_schema_version_is_rejected_rather_than_misread() -> None:
    # The store upcasts AccountOpened v1 to v2 before serving it; a v1 here means it did not.
    log = Log()
    event = log.event("a", "AccountOpened", {"account_id": "a", "currency": "EUR", "owner": None})
    assert "schema version 1" in rejected(None, event)


def test_malformed_data_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    event = log.event(
        "a",
        "MoneyDeposited",
        {"account_id": "a", "transaction_id": str(uuid.uuid4()), "amount": "10", "reference": None},
    )
    assert "amount" in rejected(account, event)


def test_an_event_naming_another_account_than_its_stream_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    event = log.money("MoneyDeposited", "b", 10)
    stray = RecordedEvent(
        event.id, "account-a", event.type, 1, event.data, {}, 2, event.position, event.recorded_at
    )
    assert "not the stream's account" in rejected(account, stray)


@pytest.mark.parametrize("amount", [0, -5, 2**53])
def test_an_amount_outside_the_allowed_range_is_rejected(amount: int) -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    assert "from 1 to" in rejected(account, log.deposited("a", amount))


def test_a_balance_leaving_the_signed_64_bit_range_is_rejected() -> None:
    log = Log()
    events = [log.opened("a")] + [log.deposited("a", 2**53 - 1) for _ in range(1024)]
    accounts, _ = fold(events)
    assert "64-bit" in rejected(accounts["a"], log.deposited("a", 2**53 - 1))


def test_an_event_after_closing_is_rejected() -> None:
    log = Log()
    accounts, _ = fold([log.opened("a"), log.closed("a")])
    assert "closed" in rejected(accounts["a"], log.deposited("a", 5))


def test_closing_with_money_on_the_account_is_rejected() -> None:
    log = Log()
    accounts, _ = fold([log.opened("a"), log.deposited("a", 5)])
    assert "balance 0" in rejected(accounts["a"], log.closed("a"))


def test_text_with_a_bidi_override_is_rejected() -> None:
    log = Log()
    account = evolve(None, log.opened("a")).account
    assert "reference" in rejected(account, log.deposited("a", 5, reference="gpj\u202eexe"))


# -- properties ---------------------------------------------------------------------------

MOVES = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "withdrawal", "transfer_in", "transfer_out"]),
        st.integers(min_value=1, max_value=2**53 - 1),
    ),
    max_size=60,
)


@given(MOVES, st.booleans())
def test_the_balance_is_the_sum_of_the_signed_amounts(
    moves: list[tuple[str, int]], close: bool
) -> None:
    log = Log()
    events = [log.opened("a", overdraft=2**53 - 1)]
    expected = 0
    for kind, amount in moves:
        match kind:
            case "deposit":
                events.append(log.deposited("a", amount))
            case "withdrawal":
                events.append(log.withdrawn("a", amount))
            case "transfer_in":
                events.append(log.received("a", "b", amount))
            case _:
                events.append(log.sent("a", "b", amount))
        expected += amount if kind in ("deposit", "transfer_in") else -amount
    accounts, items = fold(events)
    if close and expected != 0:
        assert "balance 0" in rejected(accounts["a"], log.closed("a"))
    elif close:
        events.append(log.closed("a"))
        accounts, items = fold(events)
    account = accounts["a"]
    assert account.balance == expected == sum(i.amount for i in items)
    assert [i.kind for i in items] == [k for k, _ in moves]
    assert all(abs(i.amount) == a for i, (_, a) in zip(items, moves, strict=True))
    running = 0
    for item in items:
        running += item.amount
        assert item.balance_after == running
    assert account.version == len(events)
    assert account.status == ("closed" if close and expected == 0 else "open")
