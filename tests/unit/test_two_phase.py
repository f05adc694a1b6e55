"""Two-phase transfers in the domain: holds, posts (whole and partial), voids and expiries,
decided on the two accounts' states (given / when / then), and the validity rule every
writer and reader applies to their events."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from eventledger.domain.account import (
    Account,
    decide,
    decide_transfer,
    evolve,
    facts_of,
    fold,
)
from eventledger.domain.commands import (
    CloseAccount,
    ExpirePendingTransfer,
    PostPendingTransfer,
    Transfer,
    VoidPendingTransfer,
    Withdraw,
)
from eventledger.domain.errors import (
    AccountClosedError,
    AmountExceedsHold,
    InsufficientFunds,
    InvalidAccountEvent,
    InvalidExpiry,
    PendingTransfers,
    TransferNotFound,
    TransferNotPending,
)
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
)
from eventledger.domain.holds import decide_outcome
from eventledger.domain.pending import expiry_after, is_due, parse_time
from eventledger.domain.validity import AccountFacts, check_append, check_batch, check_event

A, B, C = "acc-a", "acc-b", "acc-c"
TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
TX2 = "7f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
DEP = "8f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
NOON = "2026-12-03T12:00:00.000000Z"
BEFORE = "2026-12-03T11:59:59.999999Z"
AFTER = "2026-12-03T12:00:00.000001Z"


def account(account_id: str, balance: int = 0, limit: int = 0, currency: str = "EUR") -> Account:
    events: list[Event] = [AccountOpened(account_id, currency, limit, None)]
    if balance:
        events.append(MoneyDeposited(account_id, DEP, balance, None))
    return fold(account_id, events)


def hold(
    amount: int = 300, expires_at: str | None = NOON, tid: str = TX, source: str = A
) -> Transfer:
    target = B if source == A else A
    return Transfer(tid, source, target, amount, "order 7", pending=True, expires_at=expires_at)


def apply(state: Account, events: Sequence[Event]) -> Account:
    for event in events:
        if event.account_id == state.account_id:
            state = evolve(state, event)
    return state


def held(source: Account, target: Account, command: Transfer) -> tuple[Account, Account]:
    events = decide_transfer(source, target, command)
    return apply(source, events), apply(target, events)


def ended(
    source: Account,
    target: Account,
    command: PostPendingTransfer | VoidPendingTransfer | ExpirePendingTransfer,
) -> tuple[Account, Account, tuple[Event, Event]]:
    events = decide_outcome(source, target, command)
    return apply(source, events), apply(target, events), events


# -- holds ------------------------------------------------------------------------------------


def test_a_hold_takes_the_amount_out_of_available_but_not_out_of_the_balance() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    assert (source.balance, source.available, source.pending_debits) == (1000, 700, 300)
    assert (target.balance, target.available, target.pending_credits) == (0, 0, 300)
    assert source.pending[TX].counterparty == B and target.pending[TX].counterparty == A


def test_a_hold_is_two_events_with_the_same_expiry_and_reference() -> None:
    sent, received = decide_transfer(account(A, 1000), account(B), hold(300))
    assert sent == PendingTransferSent(A, TX, B, 300, "order 7", NOON)
    assert received == PendingTransferReceived(B, TX, A, 300, "order 7", NOON)


def test_overdraft_rules_apply_to_available_for_holds_withdrawals_and_transfers() -> None:
    source, target = held(account(A, 1000, limit=100), account(B), hold(800))
    with pytest.raises(InsufficientFunds) as refused:
        decide_transfer(source, target, hold(301, tid=TX2))
    assert refused.value.available == 200
    decide_transfer(source, target, hold(300, tid=TX2))  # exactly down to -100 available
    with pytest.raises(InsufficientFunds):
        decide(source, Withdraw(A, TX2, 301))
    with pytest.raises(InsufficientFunds):
        decide_transfer(source, target, Transfer(TX2, A, B, 301))
    assert decide(source, Withdraw(A, TX2, 300))


def test_a_closed_account_is_party_to_no_new_hold() -> None:
    closed = apply(account(B), [AccountClosed(B)])
    with pytest.raises(AccountClosedError):
        decide_transfer(account(A, 1000), closed, hold())


def test_an_expiry_is_only_for_a_pending_transfer_and_must_be_rfc_3339_utc() -> None:
    with pytest.raises(InvalidExpiry):
        decide_transfer(account(A, 1000), account(B), Transfer(TX, A, B, 1, expires_at=NOON))
    for bad in ("2026-12-03T12:00:00+01:00", "2026-12-03 12:00:00Z", "tomorrow", "", 5):
        with pytest.raises(InvalidExpiry):
            decide_transfer(account(A, 1000), account(B), hold(expires_at=bad))  # type: ignore[arg-type]


def test_an_account_with_pending_transfers_on_either_side_cannot_be_closed() -> None:
    # Both at balance 0: the sender holds on its overdraft.
    source, target = held(account(A, 0, limit=300), account(B), hold(300))
    for state in (source, target):
        assert state.balance == 0
        with pytest.raises(PendingTransfers):
            decide(state, CloseAccount(state.account_id))


# -- outcomes ---------------------------------------------------------------------------------


def test_posting_moves_the_held_amount_and_releases_the_hold() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    source, target, events = ended(source, target, PostPendingTransfer(TX, A, B, now=BEFORE))
    assert events == (
        PendingTransferPosted(A, TX, A, B, 300),
        PendingTransferPosted(B, TX, A, B, 300),
    )
    assert (source.balance, source.available, dict(source.pending)) == (700, 700, {})
    assert (target.balance, target.pending_credits, dict(target.pending)) == (300, 0, {})


def test_a_partial_post_moves_part_and_releases_the_rest() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    source, target, _ = ended(source, target, PostPendingTransfer(TX, A, B, 120, now=BEFORE))
    assert (source.balance, source.available, target.balance) == (880, 880, 120)


def test_posting_more_than_the_hold_is_refused() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    with pytest.raises(AmountExceedsHold) as refused:
        decide_outcome(source, target, PostPendingTransfer(TX, A, B, 301, now=BEFORE))
    assert (refused.value.amount, refused.value.held) == (301, 300)


def test_voiding_releases_the_hold_and_moves_nothing() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    source, target, events = ended(source, target, VoidPendingTransfer(TX, A, B, now=BEFORE))
    assert {e.reason for e in events if isinstance(e, PendingTransferVoided)} == {"voided"}
    assert (source.balance, source.available, target.balance, target.pending_credits) == (
        1000,
        1000,
        0,
        0,
    )


def test_a_hold_ends_once() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    source, target, _ = ended(source, target, VoidPendingTransfer(TX, A, B, now=BEFORE))
    for command in (
        PostPendingTransfer(TX, A, B, now=BEFORE),
        VoidPendingTransfer(TX, A, B, now=BEFORE),
        ExpirePendingTransfer(TX, A, B, now=AFTER),
    ):
        with pytest.raises(TransferNotFound):
            decide_outcome(source, target, command)


def test_an_expiry_is_decided_only_once_the_deadline_has_passed() -> None:
    source, target = held(account(A, 1000), account(B), hold(300, expires_at=NOON))
    with pytest.raises(TransferNotPending) as early:
        decide_outcome(source, target, ExpirePendingTransfer(TX, A, B, now=BEFORE))
    assert early.value.transfer_status == "pending"
    source, target, events = ended(source, target, ExpirePendingTransfer(TX, A, B, now=NOON))
    assert {e.reason for e in events if isinstance(e, PendingTransferVoided)} == {"expired"}
    assert source.available == 1000


def test_a_hold_past_its_deadline_can_no_longer_be_posted_or_voided() -> None:
    source, target = held(account(A, 1000), account(B), hold(300, expires_at=NOON))
    for command in (
        PostPendingTransfer(TX, A, B, now=NOON),
        VoidPendingTransfer(TX, A, B, now=AFTER),
    ):
        with pytest.raises(TransferNotPending) as refused:
            decide_outcome(source, target, command)
        assert refused.value.transfer_status == "expired"


def test_a_hold_without_expiry_never_expires() -> None:
    source, target = held(account(A, 1000), account(B), hold(300, expires_at=None))
    with pytest.raises(TransferNotPending):
        decide_outcome(source, target, ExpirePendingTransfer(TX, A, B, now="9999-12-31T23:59:59Z"))


def test_an_outcome_between_other_accounts_than_the_holds_is_not_found() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    with pytest.raises(TransferNotFound):
        decide_outcome(target, source, PostPendingTransfer(TX, B, A, now=BEFORE))
    with pytest.raises(TransferNotFound):
        decide_outcome(source, account(C), PostPendingTransfer(TX, A, C, now=BEFORE))


def test_times_compare_as_instants_not_as_text() -> None:
    assert is_due("2026-12-03T12:00:00Z", "2026-12-03T12:00:00.000000Z")
    assert not is_due("2026-12-03T12:00:00.5Z", "2026-12-03T12:00:00.1Z")
    assert expiry_after(parse_time(NOON), 30) == "2026-12-03T12:00:30.000000Z"


# -- the validity rule --------------------------------------------------------------------------


def facts(state: Account) -> AccountFacts:
    return facts_of(state)


def test_the_decider_and_the_rule_agree_on_the_facts_of_holds() -> None:
    source, target = account(A, 1000), account(B)
    events = decide_transfer(source, target, hold(300))
    after = check_batch({A: facts(source), B: facts(target)}, [(A, [events[0]]), (B, [events[1]])])
    source, target = apply(source, events), apply(target, events)
    assert after[A] == facts(source) and after[B] == facts(target)
    outcome = decide_outcome(source, target, PostPendingTransfer(TX, A, B, 100, now=BEFORE))
    after = check_batch(after, [(A, [outcome[0]]), (B, [outcome[1]])])
    assert after[A] == facts(apply(source, outcome)) and after[A].balance == 900


def rule_of(facts_: AccountFacts, event: Event) -> str:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_event(facts_, event, stream_version=facts_.version + 1)
    return caught.value.rule


def test_the_rule_refuses_outcomes_that_match_no_pending_transfer_of_the_account() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    a, b = facts(source), facts(target)
    assert rule_of(facts(account(A, 1000)), PendingTransferPosted(A, TX, A, B, 1)) == (
        "transfer-not-pending"
    )
    assert rule_of(a, PendingTransferPosted(A, TX, A, C, 1)) == "transfer-mismatch"
    assert rule_of(a, PendingTransferPosted(A, TX, C, A, 1)) == "transfer-mismatch"
    assert rule_of(b, PendingTransferPosted(B, TX, B, A, 1)) == "transfer-mismatch"
    assert rule_of(a, PendingTransferPosted(A, TX, A, B, 301)) == "amount-exceeds-hold"
    assert rule_of(a, PendingTransferPosted(A, TX, A, B, 0)) == "invalid-amount"
    assert rule_of(a, PendingTransferVoided(A, TX, A, B, 299, "voided")) == "transfer-mismatch"
    assert rule_of(a, PendingTransferVoided(A, TX, A, B, 300, "changed mind")) == "invalid-reason"
    assert rule_of(a, PendingTransferSent(A, TX, B, 5, None, None)) == "hold-twice"
    assert rule_of(a, AccountClosed(A)) in {"balance-not-zero", "pending-transfers"}
    unheld = facts(held(account(A, 1000), account(B), hold(300, expires_at=None))[0])
    assert rule_of(unheld, PendingTransferVoided(A, TX, A, B, 300, "expired")) == "never-expires"


def test_the_rule_refuses_a_close_with_pending_transfers() -> None:
    _, target = held(account(A, 1000), account(B), hold(300))
    assert rule_of(facts(target), AccountClosed(B)) == "pending-transfers"


def test_holds_and_outcomes_come_in_matching_pairs_in_one_append() -> None:
    source, target = held(account(A, 1000), account(B), hold(300))
    pre = {A: facts(account(A, 1000)), B: facts(account(B))}
    sent, _ = decide_transfer(account(A, 1000), account(B), hold(300))
    with pytest.raises(InvalidAccountEvent) as alone:
        check_batch(pre, [(A, [sent])])
    assert alone.value.rule == "unpaired-transfer"
    other = PendingTransferReceived(B, TX, A, 300, "order 7", AFTER)
    with pytest.raises(InvalidAccountEvent) as differing:
        check_batch(pre, [(A, [sent]), (B, [other])])
    assert differing.value.rule == "transfer-mismatch"
    now = {A: facts(source), B: facts(target)}
    posted = PendingTransferPosted(A, TX, A, B, 300)
    with pytest.raises(InvalidAccountEvent) as half:
        check_batch(now, [(A, [posted])])
    assert half.value.rule == "unpaired-transfer"
    with pytest.raises(InvalidAccountEvent) as amounts:
        check_batch(now, [(A, [posted]), (B, [PendingTransferPosted(B, TX, A, B, 200)])])
    assert amounts.value.rule == "transfer-mismatch"
    mixed = [(A, [posted]), (B, [PendingTransferVoided(B, TX, A, B, 300, "voided")])]
    with pytest.raises(InvalidAccountEvent):
        check_batch(now, mixed)


def test_the_rule_refuses_a_hold_between_currencies() -> None:
    source, target = account(A, 1000), account(B, currency="USD")
    sent = PendingTransferSent(A, TX, B, 5, None, None)
    received = PendingTransferReceived(B, TX, A, 5, None, None)
    with pytest.raises(InvalidAccountEvent) as refused:
        check_batch({A: facts(source), B: facts(target)}, [(A, [sent]), (B, [received])])
    assert refused.value.rule == "currency-mismatch"


def test_deposits_keep_the_balance_with_incoming_holds_in_range() -> None:
    big = 2**53 - 1
    facts_b = facts(account(B))
    # Enough holds coming in that a deposit would push balance + pending credits over 2^63-1.
    for i in range(1024):
        tid = f"{i:08x}-4a5b-4c6d-8e7f-0123456789ab"
        facts_b = check_append(facts_b, [PendingTransferReceived(B, tid, A, big, None, None)])
    assert facts_b.pending_credits == 1024 * big
    assert rule_of(facts_b, MoneyDeposited(B, DEP, big, None)) == "balance-out-of-range"


def test_snapshots_of_state_and_facts_keep_the_holds_and_old_ones_are_not_misread() -> None:
    from uuid import uuid4

    from eventledger.services.stream import guard_snapshots as guard
    from eventledger.services.transaction import snapshots

    source, _ = held(account(A, 1000), account(B), hold(300))
    row = snapshots.encode_state(source)
    back = snapshots.decode_snapshot(A, source.version, uuid4(), "f", row)
    assert back is not None and back.state == source and back.state.available == 700
    facts_row = guard.encode_facts(facts(source))
    facts_back = guard.decode_row(A, source.version, uuid4(), "f", facts_row)
    assert facts_back is not None and facts_back.facts == facts(source)
    # A row of the format before holds (6 facts, no "pending") is ignored, not misread.
    old = '["acc-a",true,false,3,"EUR",1000]'
    assert guard.decode_row(A, 3, uuid4(), "f", old) is None
    assert snapshots.decode_snapshot(A, 3, uuid4(), "f", row.replace(',"pending"', ',"x"')) is None
    assert "guard-facts-2" in guard.guard_fingerprint()
    assert "account-fold-2" in snapshots.fold_fingerprint()
