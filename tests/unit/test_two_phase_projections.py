"""Two-phase transfers on the read side, as pure functions: what the accounting and statistics
projections make of holds, posts, voids and expiries, and the property that ties them to the
door: an append with two-phase events that the guard accepts is one both projections apply,
and one it refuses is one they both refuse (`domain.validity` is the rule)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain.pending import PendingHold
from eventledger.domain.validity import AccountFacts
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import projection as accounting
from eventledger.services.accounting.projection import Account, HistoryItem, Hold
from eventledger.services.readside.commits import commit_groups
from eventledger.services.readside.projection import EventRejected
from eventledger.services.statistics import projection as statistics
from eventledger.services.statistics.projection import TALLY_FIELDS, Tally, total
from tests.unit.test_accounting_projection import Log
from tests.unit.test_validity import (
    ACCOUNTS,
    T0,
    Raw,
    Readers,
    guard_accepts,
    raw_opened,
)
from tests.unit.test_validity_reversals import reversal_batches

EXPIRY = "2026-11-27T10:05:00.000000Z"


class TwoPhaseLog(Log):
    """`Log` with the two-phase events, each pair one atomic append (`batch_end` set)."""

    def pair(self, first: RecordedEvent, second: RecordedEvent) -> list[RecordedEvent]:
        return [_ending(first, second.position), _ending(second, second.position)]

    def hold(
        self,
        source: str,
        target: str,
        amount: int,
        *,
        tx: str | None = None,
        reference: str | None = None,
        expires_at: str | None = None,
    ) -> list[RecordedEvent]:
        tx = tx or str(uuid.uuid4())
        common = {"transaction_id": tx, "amount": amount, "reference": reference}
        sent = self.event(
            source,
            "PendingTransferSent",
            {"account_id": source, **common, "to_account": target, "expires_at": expires_at},
        )
        received = self.event(
            target,
            "PendingTransferReceived",
            {"account_id": target, **common, "from_account": source, "expires_at": expires_at},
        )
        return self.pair(sent, received)

    def outcome(
        self, type: str, source: str, target: str, tx: str, amount: int, **more: Any
    ) -> list[RecordedEvent]:
        data = {"transaction_id": tx, "from_account": source, "to_account": target}
        first = self.event(source, type, {"account_id": source, **data, "amount": amount, **more})
        second = self.event(target, type, {"account_id": target, **data, "amount": amount, **more})
        return self.pair(first, second)

    def posted(self, source: str, target: str, tx: str, amount: int) -> list[RecordedEvent]:
        return self.outcome("PendingTransferPosted", source, target, tx, amount)

    def voided(
        self, source: str, target: str, tx: str, amount: int, reason: str = "voided"
    ) -> list[RecordedEvent]:
        return self.outcome("PendingTransferVoided", source, target, tx, amount, reason=reason)


def _ending(event: RecordedEvent, end: int) -> RecordedEvent:
    return RecordedEvent(
        event.id,
        event.stream,
        event.type,
        event.schema_version,
        event.data,
        event.metadata,
        event.stream_version,
        event.position,
        event.recorded_at,
        batch_end=end,
    )


def apply(
    events: Sequence[RecordedEvent],
) -> tuple[dict[str, Account], list[HistoryItem], dict[tuple[str, str], Hold]]:
    """Fold the log through the accounting projection one append at a time, as the store
    does: the rows, the history, and the `pending_transfers` table it would hold."""
    rows: dict[str, Account] = {}
    items: list[HistoryItem] = []
    table: dict[tuple[str, str], Hold] = {}
    for group, whole in commit_groups(events):
        changes, rejected = accounting.evolve_commit(rows, group, whole=whole)
        if rejected is not None:
            raise rejected
        for change in changes:
            rows[change.account.account_id] = change.account
            if change.item is not None:
                items.append(change.item)
            if change.released is not None:
                del table[(change.account.account_id, change.released)]
            if change.hold is not None:
                table[(change.account.account_id, change.hold.transaction_id)] = change.hold
    return rows, items, table


def tallies(events: Sequence[RecordedEvent]) -> dict[str, Tally]:
    rows: dict[str, statistics.StatsAccount] = {}
    deltas: dict[str, list[Tally]] = {}
    for group, whole in commit_groups(events):
        changes, rejected = statistics.evolve_commit(rows, group, whole=whole)
        if rejected is not None:
            raise rejected
        for change in changes:
            rows[change.account.account_id] = change.account
            deltas.setdefault(change.currency, []).append(change.delta)
    return {currency: total(d) for currency, d in deltas.items()}


def funded(log: TwoPhaseLog, amount: int = 1000) -> list[RecordedEvent]:
    return [log.opened("a"), log.opened("b"), log.deposited("a", amount)]


# -- accounting --------------------------------------------------------------------------------


def test_a_hold_lowers_the_senders_available_not_its_balance() -> None:
    log = TwoPhaseLog()
    tx = str(uuid.uuid4())
    rows, items, table = apply(
        [*funded(log), *log.hold("a", "b", 400, tx=tx, reference="order 7", expires_at=EXPIRY)]
    )
    a, b = rows["a"], rows["b"]
    assert (a.balance, a.pending_debits, a.pending_credits, a.available) == (1000, 400, 0, 600)
    assert (b.balance, b.pending_debits, b.pending_credits, b.available) == (0, 0, 400, 0)
    out, into = items[-2:]
    assert (out.kind, out.amount, out.held, out.balance_after, out.available_after) == (
        "transfer_pending",
        0,
        -400,
        1000,
        600,
    )
    assert (out.counterparty, out.reference, out.transaction_id) == ("b", "order 7", tx)
    assert (into.kind, into.amount, into.held, into.available_after) == (
        "transfer_pending",
        0,
        400,
        0,
    )
    assert {(k, h.direction, h.counterparty, h.amount, h.expires_at) for k, h in table.items()} == {
        (("a", tx), "out", "b", 400, EXPIRY),
        (("b", tx), "in", "a", 400, EXPIRY),
    }


def test_a_partial_post_moves_the_posted_amount_and_releases_the_rest() -> None:
    log = TwoPhaseLog()
    tx = str(uuid.uuid4())
    rows, items, table = apply(
        [
            *funded(log),
            *log.hold("a", "b", 400, tx=tx, reference="r"),
            *log.posted("a", "b", tx, 250),
        ]
    )
    a, b = rows["a"], rows["b"]
    assert (a.balance, a.pending_debits, a.available) == (750, 0, 750)
    assert (b.balance, b.pending_credits, b.available) == (250, 0, 250)
    out, into = items[-2:]
    assert (out.kind, out.amount, out.held, out.balance_after, out.available_after) == (
        "transfer_posted",
        -250,
        -400,
        750,
        750,
    )
    assert (into.kind, into.amount, into.held, into.balance_after) == (
        "transfer_posted",
        250,
        400,
        250,
    )
    assert (out.reference, into.reference, out.counterparty) == ("r", "r", "b")
    assert table == {}


@pytest.mark.parametrize(
    ("reason", "kind"), [("voided", "transfer_voided"), ("expired", "transfer_expired")]
)
def test_a_void_or_an_expiry_gives_the_held_amount_back(reason: str, kind: str) -> None:
    log = TwoPhaseLog()
    tx = str(uuid.uuid4())
    rows, items, table = apply(
        [
            *funded(log),
            *log.hold("a", "b", 400, tx=tx, expires_at=EXPIRY),
            *log.voided("a", "b", tx, 400, reason),
        ]
    )
    assert (rows["a"].balance, rows["a"].available, rows["b"].pending_credits) == (1000, 1000, 0)
    assert [(i.kind, i.amount, i.held) for i in items[-2:]] == [(kind, 0, -400), (kind, 0, 400)]
    assert table == {}


def test_a_hold_placed_and_settled_in_one_page_leaves_no_pending_row() -> None:
    log = TwoPhaseLog()
    tx, again = str(uuid.uuid4()), str(uuid.uuid4())
    rows, _, table = apply(
        [
            *funded(log),
            *log.hold("a", "b", 100, tx=tx),
            *log.posted("a", "b", tx, 100),
            *log.hold("a", "b", 50, tx=again),
        ]
    )
    assert set(table) == {("a", again), ("b", again)}
    assert set(rows["a"].holds) == {again}
    assert (rows["a"].balance, rows["a"].available) == (900, 850)


def test_an_account_with_a_pending_transfer_cannot_close() -> None:
    log = TwoPhaseLog()
    rows, _, _ = apply([log.opened("a"), log.opened("b"), *log.hold("b", "a", 10)])
    # "a" is at balance 0 but is owed a pending transfer: the rule refuses to close it.
    with pytest.raises(EventRejected, match="pending transfer"):
        accounting.evolve(rows["a"], log.closed("a"))


@pytest.mark.parametrize("flaw", ["unknown", "too-much", "wrong-void-amount", "wrong-reason"])
def test_an_outcome_that_matches_no_hold_is_rejected(flaw: str) -> None:
    log = TwoPhaseLog()
    tx = str(uuid.uuid4())
    events = [*funded(log), *log.hold("a", "b", 100, tx=tx)]
    match flaw:
        case "unknown":
            bad = log.posted("a", "b", str(uuid.uuid4()), 100)
        case "too-much":
            bad = log.posted("a", "b", tx, 101)
        case "wrong-void-amount":
            bad = log.voided("a", "b", tx, 99)
        case _:
            bad = log.voided("a", "b", tx, 100, reason="expired")  # the hold never expires
    with pytest.raises(EventRejected):
        apply([*events, *bad])
    with pytest.raises(EventRejected):
        tallies([*events, *bad])


def test_half_a_hold_in_a_whole_append_is_rejected() -> None:
    log = TwoPhaseLog()
    start = funded(log)
    sent, _ = log.hold("a", "b", 100)
    with pytest.raises(EventRejected, match="without its other side"):
        apply([*start, _ending(sent, sent.position)])


# -- statistics --------------------------------------------------------------------------------


def test_statistics_count_placed_pending_posted_voided_and_expired_transfers() -> None:
    log = TwoPhaseLog()
    posted, voided, expired, open_ = (str(uuid.uuid4()) for _ in range(4))
    eur = tallies(
        [
            *funded(log, 5000),
            *log.hold("a", "b", 400, tx=posted),
            *log.hold("a", "b", 300, tx=voided),
            *log.hold("a", "b", 200, tx=expired, expires_at=EXPIRY),
            *log.hold("a", "b", 100, tx=open_),
            *log.posted("a", "b", posted, 350),
            *log.voided("a", "b", voided, 300),
            *log.voided("a", "b", expired, 200, "expired"),
        ]
    )["EUR"]
    assert (eur.holds_count, eur.holds_volume) == (4, 1000)
    assert (eur.pending_count, eur.pending_volume) == (1, 100)
    assert (eur.posted_count, eur.posted_volume) == (1, 350)
    assert (eur.voided_count, eur.voided_volume) == (1, 300)
    assert (eur.expired_count, eur.expired_volume) == (1, 200)
    # Posting moves money between two accounts of the currency: its total stays the same.
    assert eur.balance == 5000
    assert (eur.transfers_count, eur.deposits_count) == (0, 1)


def test_the_sum_of_tallies_covers_every_counter() -> None:
    ones = Tally(*range(1, len(TALLY_FIELDS) + 1))
    assert (
        total([ones, ones, ones])
        == ones + ones + ones
        == Tally(*(3 * n for n in range(1, len(TALLY_FIELDS) + 1)))
    )


# -- the property: the door and both readers agree ---------------------------------------------

HELD = st.sampled_from([1, 50, 100, 400, 0, -5])
Batch = list[tuple[str, list[Raw]]]


def raw_hold(
    source: str, target: str, tx: str, amount: int, expires: bool, reference: str | None = None
) -> Batch:
    expires_at = EXPIRY if expires else None
    common = {"transaction_id": tx, "amount": amount, "reference": reference}
    common["expires_at"] = expires_at
    return [
        (
            source,
            [("PendingTransferSent", 1, {"account_id": source, **common, "to_account": target})],
        ),
        (
            target,
            [
                (
                    "PendingTransferReceived",
                    1,
                    {"account_id": target, **common, "from_account": source},
                )
            ],
        ),
    ]


def raw_outcome(type: str, source: str, target: str, tx: str, amount: int, **more: Any) -> Batch:
    data = {"transaction_id": tx, "from_account": source, "to_account": target, "amount": amount}
    return [(a, [(type, 1, {"account_id": a, **data, **more})]) for a in (source, target)]


@st.composite
def two_phase_logs(draw: st.DrawFn) -> list[Batch]:
    """Atomic appends: deposits, withdrawals, closes, holds and outcomes, where an outcome
    mostly ends a hold drawn earlier (posted in part, in full or for too much; voided; expired
    whether or not it could), and sometimes is flawed (half a pair, the sides swapped, an
    amount or reason that does not match); among them reversals (of anything, balanced or
    not: `reversal_batches`) and erasures (`PersonalDataErased`, as a forget writes it)."""
    log: list[Batch] = []
    holds: list[tuple[str, str, str, int, bool]] = []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        source, target = draw(st.permutations(ACCOUNTS))[:2]
        kind = draw(
            st.sampled_from(
                [
                    *("deposit", "withdraw", "close", "hold", "hold", "post", "post", "void"),
                    *("expire", "reverse", "erase"),
                ]
            )
        )
        if kind == "reverse":
            log.append(draw(reversal_batches()))
            continue
        if kind == "erase":
            log.append([(source, [("PersonalDataErased", 1, {"account_id": source})])])
            continue
        if kind in ("deposit", "withdraw"):
            type = "MoneyDeposited" if kind == "deposit" else "MoneyWithdrawn"
            data = {"account_id": source, "transaction_id": str(uuid.uuid4())}
            amount = draw(st.sampled_from([1, 100, 1000]))
            log.append([(source, [(type, 1, {**data, "amount": amount, "reference": None})])])
            continue
        if kind == "close":
            log.append([(source, [("AccountClosed", 1, {"account_id": source})])])
            continue
        if kind == "hold" or not holds:
            tx = draw(st.sampled_from([str(uuid.uuid4()), *(h[2] for h in holds)]))
            expires = draw(st.booleans())
            amount = draw(HELD)
            holds.append((source, target, tx, amount, expires))
            reference = draw(st.sampled_from([None, "order 7", "\u202eorder"]))
            batch = raw_hold(source, target, tx, amount, expires, reference)
        else:
            source, target, tx, held, _ = draw(st.sampled_from(holds))
            if draw(st.integers(0, 5)) == 0:
                source, target = target, source
            if kind == "post":
                amount = draw(st.sampled_from([held, held, max(held // 2, 1), held + 1]))
                batch = raw_outcome("PendingTransferPosted", source, target, tx, amount)
            else:
                amount = draw(st.sampled_from([held, held, held, held - 1]))
                reason = (
                    "expired"
                    if kind == "expire"
                    else draw(st.sampled_from(["voided"] * 4 + ["lost"]))
                )
                batch = raw_outcome(
                    "PendingTransferVoided", source, target, tx, amount, reason=reason
                )
        flaw = draw(st.sampled_from([None, None, None, None, "half", "swap"]))
        log.append(batch[:1] if flaw == "half" else batch[::-1] if flaw == "swap" else batch)
    return log


@dataclass
class CountingReaders(Readers):
    """`Readers` that also sum the statistics' counters of what they applied, per currency."""

    tallies: dict[str, Tally] = field(default_factory=dict)

    def apply(self, batch: list[tuple[str, list[Raw]]], versions: dict[str, int]) -> bool:
        before = dict(self.statistics)
        position = self.position
        if not super().apply(batch, versions):
            return False
        events = [
            RecordedEvent(
                uuid.uuid4(),
                f"account-{account}",
                type,
                schema_version,
                data,
                {},
                versions[account] + i + 1,
                0,
                T0,
            )
            for account, raws in batch
            for i, (type, schema_version, data) in enumerate(raws)
        ]
        events = [
            _ending(_at(e, position + n + 1), position + len(events)) for n, e in enumerate(events)
        ]
        changes, rejected = statistics.evolve_commit(before, events)
        assert rejected is None
        for change in changes:
            self.tallies[change.currency] = (
                self.tallies.get(change.currency, Tally()) + change.delta
            )
        return True


def _at(event: RecordedEvent, position: int) -> RecordedEvent:
    return RecordedEvent(
        event.id,
        event.stream,
        event.type,
        event.schema_version,
        event.data,
        event.metadata,
        event.stream_version,
        position,
        event.recorded_at,
    )


@settings(max_examples=300, deadline=None)
@given(two_phase_logs())
def test_a_two_phase_append_the_guard_accepts_is_one_both_projections_apply_and_no_other(
    appends: list[Batch],
) -> None:
    facts = {a: AccountFacts(a) for a in ACCOUNTS}
    readers = CountingReaders()
    openings = [[(a, [raw_opened(a, overdraft=10**6)])] for a in ACCOUNTS]
    for batch in openings + appends:
        after = guard_accepts(facts, batch)
        applied = readers.apply(batch, {a: f.version for a, f in facts.items()})
        assert applied == (after is not None), batch
        if after is not None:
            facts.update(after)
    for account, f in facts.items():
        row, stats = readers.accounting[account], readers.statistics[account]
        assert (row.balance, row.pending_debits, row.pending_credits, row.status == "closed") == (
            f.balance,
            f.pending_debits,
            f.pending_credits,
            f.closed,
        )
        assert _holds(row.holds) == _holds(f.pending) == _holds(stats.holds)
        assert (
            row.available
            == f.available
            == row.balance - sum(h.amount for h in row.holds.values() if h.direction == "out")
        )
        assert (stats.balance, stats.pending_debits, stats.pending_credits) == (
            row.balance,
            row.pending_debits,
            row.pending_credits,
        )
    held_out = sum(f.pending_debits for f in facts.values())
    assert held_out == sum(f.pending_credits for f in facts.values())  # every hold has two sides
    # The statistics count each transfer once: what is pending is what the accounts hold out,
    # and every hold placed is pending or ended once.
    eur = readers.tallies["EUR"]
    holds_out = [h for f in facts.values() for h in f.pending.values() if h.side == "debit"]
    assert (eur.pending_count, eur.pending_volume) == (len(holds_out), held_out)
    assert eur.holds_count == (
        eur.pending_count + eur.posted_count + eur.voided_count + eur.expired_count
    )
    assert eur.holds_volume - eur.pending_volume >= eur.posted_volume
    assert eur.balance == sum(f.balance for f in facts.values())


def _holds(holds: Mapping[str, PendingHold]) -> dict[str, tuple[str, int, str, str | None]]:
    return {t: (h.side, h.amount, h.counterparty, h.expires_at) for t, h in holds.items()}
