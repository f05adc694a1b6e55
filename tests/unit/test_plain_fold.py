"""The plain fold of the read side (readside/plain.py) against the rule it shortcuts: what it
accepts, the rule accepts with the same balances and versions; what the rule refuses, it
never accepts (it hands the append to the full rule, which refuses it)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain.money import INT64_MAX, MAX_AMOUNT
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import projection as accounting
from eventledger.services.readside.plain import Live, fold_plain
from eventledger.services.statistics import projection as statistics
from tests.unit.test_validity import ACCOUNTS, T0, Raw, batches, raw_money, raw_opened

TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


class Ledger:
    """Both projections' rows fed by the full rule, and the fold's `live` state beside them."""

    def __init__(self) -> None:
        self.accounting: dict[str, accounting.Account] = {}
        self.statistics: dict[str, statistics.StatsAccount] = {}
        self.position = 0

    def events(self, batch: list[tuple[str, list[Raw]]]) -> list[RecordedEvent]:
        """One atomic append as the store records it (`batch_end` set)."""
        out: list[tuple[str, str, int, dict[str, Any], int]] = []
        bumped: dict[str, int] = {}
        for account, raws in batch:
            for type_, schema_version, data in raws:
                bumped[account] = bumped.get(account, self.version(account)) + 1
                out.append((account, type_, schema_version, data, bumped[account]))
        first = self.position + 1
        self.position += len(out)
        return [
            RecordedEvent(
                uuid.uuid4(),
                f"account-{account}",
                type_,
                schema_version,
                data,
                {},
                version,
                first + index,
                T0,
                batch_end=self.position,
            )
            for index, (account, type_, schema_version, data, version) in enumerate(out)
        ]

    def version(self, account: str) -> int:
        row = self.accounting.get(account)
        return 0 if row is None else row.version

    def live(self) -> dict[str, Live]:
        return {
            a: Live(
                r.version,
                r.balance,
                r.pending_debits,
                r.pending_credits,
                r.currency,
                r.status == "closed",
            )
            for a, r in self.accounting.items()
        }

    def rule(self, events: list[RecordedEvent]) -> bool:
        """Apply by the full rule (both projections); whether it accepted the append."""
        a_changes, a_rejected = accounting.evolve_commit(self.accounting, events)
        s_changes, s_rejected = statistics.evolve_commit(self.statistics, events)
        assert (a_rejected is None) == (s_rejected is None)
        if a_rejected is not None:
            return False
        for a_change in a_changes:
            self.accounting[a_change.account.account_id] = a_change.account
        for s_change in s_changes:
            self.statistics[s_change.account.account_id] = s_change.account
        return True


@settings(max_examples=300, deadline=None)
@given(st.sets(st.sampled_from(ACCOUNTS), min_size=2), st.lists(batches(), min_size=1, max_size=30))
def test_what_the_fold_accepts_the_rule_accepts_with_the_same_balances(
    opened: set[str], appends: list[list[tuple[str, list[Raw]]]]
) -> None:
    ledger = Ledger()
    openings = [[(a, [raw_opened(a, currency="USD" if a == "r" else "EUR")])] for a in opened]
    for batch in openings + appends:
        events = ledger.events(batch)
        live = ledger.live()
        before = {a: (s.version, s.balance) for a, s in live.items()}
        moves = fold_plain(events, live)
        accepted = ledger.rule(events)
        if moves is None:
            assert {a: (s.version, s.balance) for a, s in live.items()} == before
            continue
        assert accepted, batch
        assert [m[1] for m in moves] == events
        for account, state in live.items():
            row = ledger.accounting[account]
            assert (state.version, state.balance, state.currency) == (
                row.version,
                row.balance,
                row.currency,
            )


def _open(ledger: Ledger, *accounts: str, currency: str = "EUR") -> None:
    for account in accounts:
        assert ledger.rule(ledger.events([(account, [raw_opened(account, currency=currency)])]))


def _deposit(**change: Any) -> Raw:
    raw = raw_money("MoneyDeposited", "p", 100, None, tx=TX)
    return (raw[0], change.pop("schema_version", 1), {**raw[2], **change})


HOSTILE_SINGLE = {
    "another account's id": _deposit(account_id="q"),
    "no account id": _deposit(account_id=None),
    "a transaction id in upper case": _deposit(transaction_id=TX.upper()),
    "a transaction id that is a number": _deposit(transaction_id=7),
    "an amount of 0": _deposit(amount=0),
    "a negative amount": _deposit(amount=-5),
    "an amount past 2^53-1": _deposit(amount=MAX_AMOUNT + 1),
    "an amount that is true": _deposit(amount=True),
    "an amount that is a float": _deposit(amount=100.0),
    "an amount that is text": _deposit(amount="100"),
    "a reference with a bidi override": _deposit(reference="gpj\u202eexe"),
    "a reference of 257 characters": _deposit(reference="x" * 257),
    "a reference that is a number": _deposit(reference=5),
    "an old schema version": _deposit(schema_version=0),
    "a transfer to itself": raw_money("TransferSent", "p", 5, None, to_account="p"),
    "a transfer half alone": raw_money("TransferSent", "p", 5, None, to_account="q"),
    "a transfer to a bad account id": raw_money("TransferSent", "p", 5, None, to_account="-x"),
    "a second opening": raw_opened("p"),
    "an unknown type": ("MoneyTeleported", 1, {"account_id": "p"}),
}


@pytest.mark.parametrize("raw", HOSTILE_SINGLE.values(), ids=HOSTILE_SINGLE.keys())
def test_the_fold_leaves_to_the_rule_what_the_rule_refuses(raw: Raw) -> None:
    ledger = Ledger()
    _open(ledger, "p", "q")
    events = ledger.events([("p", [raw])])
    assert fold_plain(events, ledger.live()) is None
    assert not ledger.rule(events)


def test_the_fold_leaves_a_gap_in_the_versions_to_the_rule() -> None:
    ledger = Ledger()
    _open(ledger, "p")
    (event,) = ledger.events([("p", [_deposit()])])
    gap = RecordedEvent(
        event.id,
        event.stream,
        event.type,
        1,
        event.data,
        {},
        3,
        event.position,
        T0,
        batch_end=event.position,
    )
    assert fold_plain([gap], ledger.live()) is None
    assert not ledger.rule([gap])


def test_the_fold_leaves_a_balance_out_of_range_to_the_rule() -> None:
    ledger = Ledger()
    _open(ledger, "p")
    for _ in range(INT64_MAX // MAX_AMOUNT):
        assert ledger.rule(ledger.events([("p", [_deposit(amount=MAX_AMOUNT)])]))
    events = ledger.events([("p", [_deposit(amount=MAX_AMOUNT)])])
    assert fold_plain(events, ledger.live()) is None
    assert not ledger.rule(events)


def _transfer(source: str, target: str, **received: Any) -> list[tuple[str, list[Raw]]]:
    sent = raw_money("TransferSent", source, 10, "rent", tx=TX, to_account=target)
    into = raw_money("TransferReceived", target, 10, "rent", tx=TX, from_account=source)
    into[2].update(received)
    return [(source, [sent]), (target, [into])]


HOSTILE_TRANSFERS = {
    "amounts that differ": {"amount": 11},
    "references that differ": {"reference": "other"},
    "a receiver from a third account": {"from_account": "r"},
    "another transaction": {"transaction_id": str(uuid.uuid4())},
}


@pytest.mark.parametrize("flaw", HOSTILE_TRANSFERS.values(), ids=HOSTILE_TRANSFERS.keys())
def test_the_fold_leaves_to_the_rule_a_transfer_whose_halves_differ(flaw: dict[str, Any]) -> None:
    ledger = Ledger()
    _open(ledger, "p", "q", "r")
    events = ledger.events(_transfer("p", "q", **flaw))
    assert fold_plain(events, ledger.live()) is None
    assert not ledger.rule(events)


def test_the_fold_leaves_to_the_rule_a_transfer_between_currencies() -> None:
    ledger = Ledger()
    _open(ledger, "p")
    _open(ledger, "q", currency="USD")
    events = ledger.events(_transfer("p", "q"))
    assert fold_plain(events, ledger.live()) is None
    assert not ledger.rule(events)


def test_the_fold_leaves_money_on_a_closed_or_never_opened_account_to_the_rule() -> None:
    ledger = Ledger()
    _open(ledger, "p")
    assert ledger.rule(ledger.events([("p", [("AccountClosed", 1, {"account_id": "p"})])]))
    for account in ("p", "q"):
        events = ledger.events([(account, [_deposit(account_id=account)])])
        assert fold_plain(events, ledger.live()) is None
        assert not ledger.rule(events)


def test_a_bulk_append_is_folded_and_a_transfer_either_way_round() -> None:
    ledger = Ledger()
    _open(ledger, "q")
    bulk = [raw_opened("p"), *(raw_money("MoneyDeposited", "p", 5, None) for _ in range(999))]
    events = ledger.events([("p", bulk)])
    live = ledger.live()
    moves = fold_plain(events, live)
    assert moves is not None and len(moves) == 1000
    assert (live["p"].version, live["p"].balance) == (1000, 4995)
    assert ledger.rule(events)
    transfer = _transfer("p", "q", reference=None)  # one side erased: the halves agree
    events = ledger.events(transfer[::-1])
    live = ledger.live()
    assert fold_plain(events, live) is not None
    assert (live["p"].balance, live["q"].balance) == (4985, 10)
    assert ledger.rule(events)
