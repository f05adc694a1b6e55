"""The validity rule for `TransactionReversed` (`domain.validity`): one test per rule, then
the property of test_validity extended to reversals: an append with reversals that the stream
service's guard accepts is one both projections apply, and one it refuses they both refuse."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import Event, TransactionReversed
from eventledger.domain.money import INT64_MAX, MAX_AMOUNT
from eventledger.domain.validity import AccountFacts, check_batch, check_event, check_reversals
from tests.unit.test_validity import (
    ACCOUNTS,
    Raw,
    Readers,
    batches,
    guard_accepts,
    raw_opened,
)

A, B = "acc-a", "acc-b"
TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
ORIGINAL = "11111111-1111-4111-8111-111111111111"
OPEN = AccountFacts(A, exists=True, version=1, currency="EUR", balance=1000)


def reversal(
    amount: Any = -100, account: str = A, reverses: str = ORIGINAL, reference: Any = None
) -> TransactionReversed:
    return TransactionReversed(account, TX, reverses, amount, reference)


def rule_of(facts: AccountFacts, event: Event) -> str:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_event(facts, event, stream_version=facts.version + 1)
    return caught.value.rule


def batch_rule(*parts: tuple[str, list[Event]]) -> str:
    facts = {
        A: OPEN,
        B: AccountFacts(B, exists=True, version=1, currency="EUR"),
        "acc-usd": AccountFacts("acc-usd", exists=True, version=1, currency="USD"),
    }
    with pytest.raises(InvalidAccountEvent) as caught:
        check_batch(facts, list(parts))
    return caught.value.rule


@pytest.mark.parametrize("amount", [-100, 100, 1, -1, MAX_AMOUNT, -MAX_AMOUNT])
def test_a_reversal_amount_is_signed_and_moves_the_balance_by_itself(amount: int) -> None:
    facts = check_event(OPEN, reversal(amount), stream_version=2)
    assert facts.balance == 1000 + amount and facts.version == 2


@pytest.mark.parametrize("amount", [0, MAX_AMOUNT + 1, -MAX_AMOUNT - 1])
def test_a_reversal_amount_is_never_0_nor_larger_than_an_amount(amount: int) -> None:
    assert rule_of(OPEN, reversal(amount)) == "invalid-amount"


@pytest.mark.parametrize("reverses", ["tx-1", ORIGINAL.upper().replace("1", "A"), ""])
def test_what_a_reversal_reverses_is_a_canonical_transaction_id(reverses: str) -> None:
    assert rule_of(OPEN, reversal(reverses=reverses)) == "invalid-transaction-id"


def test_a_reversal_does_not_reverse_itself() -> None:
    assert rule_of(OPEN, reversal(reverses=TX)) == "reverses-itself"


def test_a_reversal_keeps_the_balance_in_the_signed_64_bit_range() -> None:
    top = AccountFacts(A, exists=True, version=1, currency="EUR", balance=INT64_MAX)
    assert rule_of(top, reversal(1)) == "balance-out-of-range"


def test_a_reversal_reason_is_clean_text() -> None:
    assert rule_of(OPEN, reversal(reference="a\u202eb")) == "invalid-reference"


def test_no_reversal_lands_on_a_closed_account() -> None:
    closed = AccountFacts(A, exists=True, closed=True, version=2, currency="EUR")
    assert rule_of(closed, reversal()) == "after-close"


def test_a_transfer_reversal_sums_to_zero_over_its_accounts() -> None:
    ok = [(A, [reversal(100)]), (B, [reversal(-100, account=B)])]
    facts = check_batch(
        {A: OPEN, B: AccountFacts(B, exists=True, version=1, currency="EUR", balance=100)}, ok
    )
    assert (facts[A].balance, facts[B].balance) == (1100, 0)
    assert batch_rule((A, [reversal(100)]), (B, [reversal(-99, account=B)])) == (
        "reversal-unbalanced"
    )


def test_one_reversal_touches_each_account_once() -> None:
    assert batch_rule((A, [reversal(100), reversal(-100)])) == "reversal-twice"


def test_the_events_of_one_reversal_reverse_one_transaction_for_one_reason() -> None:
    other = "33333333-3333-4333-8333-333333333333"
    assert batch_rule((A, [reversal(100)]), (B, [reversal(-100, B, reverses=other)])) == (
        "reversal-mismatch"
    )
    assert batch_rule(
        (A, [reversal(100, reference="y")]), (B, [reversal(-100, B, reference="x")])
    ) == ("reversal-mismatch")


def test_a_transfer_reversal_stays_in_one_currency() -> None:
    parts: list[tuple[str, list[Event]]] = [
        (A, [reversal(100)]),
        ("acc-usd", [reversal(-100, account="acc-usd")]),
    ]
    assert batch_rule(*parts) == "currency-mismatch"


def test_check_reversals_names_the_event_that_breaks_the_rule() -> None:
    events: list[Event] = [reversal(100), reversal(-100, account=B), reversal(5, account=B)]
    with pytest.raises(InvalidAccountEvent) as caught:
        check_reversals(events, {})
    assert caught.value.index == 2 and caught.value.rule == "reversal-twice"


# -- the property: the guard and both projections agree on reversals -------------------------

REVERSAL_AMOUNTS = st.sampled_from([1, 7, 100, 250, 1000, 0, MAX_AMOUNT + 1])


def raw_reversal(account: str, amount: int, tx: str, reverses: str, reference: Any) -> Raw:
    data = {"account_id": account, "transaction_id": tx, "reverses": reverses}
    return ("TransactionReversed", 1, {**data, "amount": amount, "reference": reference})


@st.composite
def reversal_batches(draw: st.DrawFn) -> list[tuple[str, list[Raw]]]:
    """One atomic append of a reversal: on one account (either sign), or on two accounts
    (a transfer's), with a flaw sometimes (unbalanced, another reason, another original, the
    same account twice, reversing itself)."""
    tx, original = str(uuid.uuid4()), str(uuid.uuid4())
    amount = draw(REVERSAL_AMOUNTS)
    sign = draw(st.sampled_from([1, -1]))
    if draw(st.booleans()):
        account = draw(st.sampled_from(ACCOUNTS))
        reverses = tx if draw(st.integers(0, 9)) == 0 else original
        return [(account, [raw_reversal(account, sign * amount, tx, reverses, None)])]
    first, second = draw(st.permutations(ACCOUNTS))[:2]
    flaw = draw(st.sampled_from([None, None, None, "amount", "reference", "reverses", "twice"]))
    out = raw_reversal(first, sign * amount, tx, original, "fix")
    back = raw_reversal(
        second,
        -sign * amount + (1 if flaw == "amount" else 0),
        tx,
        str(uuid.uuid4()) if flaw == "reverses" else original,
        "other" if flaw == "reference" else "fix",
    )
    if flaw == "twice":
        return [(first, [out, raw_reversal(first, -sign * amount, tx, original, "fix")])]
    return [(first, [out]), (second, [back])]


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.sampled_from(ACCOUNTS), min_size=2),
    st.lists(st.one_of(batches(), reversal_batches()), min_size=1, max_size=30),
)
def test_a_reversal_the_guard_accepts_is_one_both_projections_apply_and_no_other(
    opened: set[str], appends: list[list[tuple[str, list[Raw]]]]
) -> None:
    facts = {a: AccountFacts(a) for a in ACCOUNTS}
    readers = Readers()
    openings = [[(a, [raw_opened(a, currency="USD" if a == "r" else "EUR")])] for a in opened]
    for batch in openings + appends:
        after = guard_accepts(facts, batch)
        applied = readers.apply(batch, {a: f.version for a, f in facts.items()})
        assert applied == (after is not None), batch
        if after is not None:
            facts.update(after)
    for account, f in facts.items():
        row, stats = readers.accounting.get(account), readers.statistics.get(account)
        if not f.exists:
            assert row is None and stats is None
            continue
        assert row is not None and stats is not None
        assert (row.balance, row.version, row.status == "closed") == (
            f.balance,
            f.version,
            f.closed,
        )
        assert (stats.balance, stats.version, stats.status) == (
            row.balance,
            row.version,
            row.status,
        )
