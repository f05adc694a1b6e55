"""The validity rule of account streams (`domain.validity`): one test per rule, then the
property that ties the doors together: an append the stream service's guard accepts is one
both projections apply, and an append it refuses is one they would both refuse."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.domain.errors import InvalidAccountEvent, InvalidOwner, InvalidReference
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferReceived,
    TransferSent,
)
from eventledger.domain.money import INT64_MAX, MAX_AMOUNT, check_owner, check_reference
from eventledger.domain.validity import (
    AccountFacts,
    check_append,
    check_batch,
    check_event,
    check_transfers,
    decode_event,
)
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import projection as accounting
from eventledger.services.readside.commits import commit_groups
from eventledger.services.statistics import projection as statistics

A, B = "acc-a", "acc-b"
TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
NEW = AccountFacts(A)
OPEN = AccountFacts(A, exists=True, version=1, currency="EUR")


def deposit(amount: Any = 100, reference: Any = None, account: str = A) -> MoneyDeposited:
    return MoneyDeposited(account, TX, amount, reference)


def rule_of(facts: AccountFacts, event: Event, version: int | None = None) -> str:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_event(facts, event, stream_version=facts.version + 1 if version is None else version)
    return caught.value.rule


# -- one event ---------------------------------------------------------------------------------


def test_an_account_opens_at_version_1_at_balance_zero() -> None:
    facts = check_event(NEW, AccountOpened(A, "EUR", 500, "Ada"), stream_version=1)
    assert facts == AccountFacts(A, exists=True, closed=False, version=1, currency="EUR")


def test_an_account_opens_only_once() -> None:
    assert rule_of(OPEN, AccountOpened(A, "EUR", 0, None)) == "opened-twice"


def test_nothing_comes_before_account_opened() -> None:
    assert rule_of(NEW, deposit()) == "not-opened"
    assert rule_of(NEW, AccountClosed(A)) == "not-opened"


def test_nothing_comes_after_account_closed() -> None:
    closed = check_event(OPEN, AccountClosed(A), stream_version=2)
    assert closed.closed
    assert rule_of(closed, deposit()) == "after-close"
    assert rule_of(closed, AccountClosed(A)) == "after-close"


def test_an_account_closes_only_at_balance_zero() -> None:
    with_money = check_event(OPEN, deposit(5), stream_version=2)
    assert rule_of(with_money, AccountClosed(A)) == "balance-not-zero"


def test_an_event_belongs_to_the_account_of_its_stream() -> None:
    assert rule_of(OPEN, deposit(account=B)) == "wrong-account"


def test_an_event_lands_right_after_the_version_it_follows() -> None:
    assert rule_of(OPEN, deposit(), version=3) == "version-gap"
    assert rule_of(NEW, AccountOpened(A, "EUR", 0, None), version=2) == "version-gap"


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, True, 1.0])
def test_an_amount_is_an_integer_from_1_to_2_53_minus_1(amount: Any) -> None:
    assert rule_of(OPEN, deposit(amount)) == "invalid-amount"
    assert rule_of(OPEN, MoneyWithdrawn(A, TX, amount, None)) == "invalid-amount"


@pytest.mark.parametrize("amount", [1, MAX_AMOUNT])
def test_the_smallest_and_largest_amounts_are_valid(amount: int) -> None:
    assert check_event(OPEN, deposit(amount), stream_version=2).balance == amount


@pytest.mark.parametrize("transaction_id", [TX.upper(), TX.replace("-", ""), "tx-1", ""])
def test_a_transaction_id_is_a_canonical_uuid(transaction_id: str) -> None:
    event = MoneyDeposited(A, transaction_id, 100, None)
    assert rule_of(OPEN, event) == "invalid-transaction-id"


@pytest.mark.parametrize("currency", ["usd", "XYZ", "HRK", "", "EURO"])
def test_an_account_opens_in_an_active_iso_4217_currency(currency: str) -> None:
    assert rule_of(NEW, AccountOpened(A, currency, 0, None)) == "invalid-currency"


@pytest.mark.parametrize("limit", [-1, MAX_AMOUNT + 1])
def test_an_overdraft_limit_is_from_0_to_2_53_minus_1(limit: int) -> None:
    assert rule_of(NEW, AccountOpened(A, "EUR", limit, None)) == "invalid-overdraft-limit"


def test_an_account_id_is_at_most_64_characters() -> None:
    long_id = "a" * 65
    event = AccountOpened(long_id, "EUR", 0, None)
    assert rule_of(AccountFacts(long_id), event) == "invalid-account-id"


# U+202E turns "gpj.exe" into what reads as "exe.jpg"; U+200B makes two equal-looking
# references differ; U+FEFF is invisible; all of them reached `eventledger history` before.
BAD_TEXT = [
    "\x00",
    "\n",
    "\x7f",
    "\x85",
    "\ud800",
    *("\u202a", "\u202b", "\u202c", "\u202d", "\u202e"),
    *("\u2066", "\u2067", "\u2068", "\u2069"),
    *("\u200e", "\u200f", "\u061c"),
    *("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"),
    "\u00ad",
    "\u2028",
    "\u2029",
]


@pytest.mark.parametrize("char", BAD_TEXT, ids=[f"U+{ord(c):04X}" for c in BAD_TEXT])
def test_text_holds_no_control_bidi_or_invisible_character(char: str) -> None:
    assert rule_of(OPEN, deposit(reference=f"rent{char}")) == "invalid-reference"
    assert rule_of(NEW, AccountOpened(A, "EUR", 0, f"Ada{char}")) == "invalid-owner"


@pytest.mark.parametrize("char", BAD_TEXT[:1] + BAD_TEXT[5:], ids=lambda c: f"U+{ord(c):04X}")
def test_commands_refuse_the_same_text_as_events(char: str) -> None:
    # One rule, every door: what a stored event may not hold, no command may carry.
    with pytest.raises(InvalidReference):
        check_reference(f"rent{char}")
    with pytest.raises(InvalidOwner):
        check_owner(f"Ada{char}")


def test_text_is_at_most_256_characters_and_may_be_any_script() -> None:
    assert check_event(OPEN, deposit(reference="x" * 256), stream_version=2).version == 2
    assert check_event(OPEN, deposit(reference="Miete für Mai, 五月 🙂"), stream_version=2)
    assert rule_of(OPEN, deposit(reference="x" * 257)) == "invalid-reference"


def test_a_balance_stays_in_the_signed_64_bit_range() -> None:
    rich = AccountFacts(A, exists=True, version=1, currency="EUR", balance=INT64_MAX)
    assert rule_of(rich, deposit(1)) == "balance-out-of-range"
    poor = AccountFacts(A, exists=True, version=1, currency="EUR", balance=-(2**63))
    assert rule_of(poor, MoneyWithdrawn(A, TX, 1, None)) == "balance-out-of-range"


def test_a_withdrawal_beyond_the_overdraft_is_a_decision_not_a_validity_rule() -> None:
    # The command side refuses it; written anyway, it is a fact every reader can apply.
    assert check_event(OPEN, MoneyWithdrawn(A, TX, 100, None), stream_version=2).balance == -100


def test_a_transfer_joins_two_different_valid_accounts() -> None:
    assert rule_of(OPEN, TransferSent(A, TX, A, 10, None)) == "same-account-transfer"
    assert rule_of(OPEN, TransferReceived(A, TX, "-bad", 10, None)) == "invalid-account-id"


def test_an_append_names_the_index_of_its_first_invalid_event() -> None:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_append(OPEN, [deposit(5), deposit(0), deposit(-1)])
    assert (caught.value.account_id, caught.value.index) == (A, 1)


# -- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type", "data", "version", "rule"),
    [
        ("MoneyTeleported", {}, 1, "unknown-event"),
        ("AccountOpened", {"account_id": A, "currency": "EUR", "owner": None}, 1, "unknown-event"),
        (
            "MoneyDeposited",
            {"account_id": A, "transaction_id": TX, "amount": "1"},
            1,
            "malformed-event",
        ),
        ("AccountClosed", [A], 1, "malformed-event"),
    ],
)
def test_only_known_types_in_their_current_shape_are_events(
    type: str, data: Any, version: int, rule: str
) -> None:
    with pytest.raises(InvalidAccountEvent) as caught:
        decode_event(type, data, schema_version=version)
    assert caught.value.rule == rule


# -- transfers: one atomic append ------------------------------------------------------------


def sent(amount: int = 10, reference: str | None = None, tx: str = TX) -> TransferSent:
    return TransferSent(A, tx, B, amount, reference)


def received(amount: int = 10, reference: str | None = None, source: str = A) -> TransferReceived:
    return TransferReceived(B, TX, source, amount, reference)


EUR = {A: OPEN, B: AccountFacts(B, exists=True, version=1, currency="EUR")}


def transfer_rule(events: Sequence[Event], facts: dict[str, AccountFacts] = EUR) -> str:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_transfers(events, facts)
    return caught.value.rule


def test_a_transfer_is_its_two_matching_halves() -> None:
    check_transfers([sent(), received()], EUR)
    check_transfers([received(), sent()], EUR)


def test_half_a_transfer_alone_is_invalid() -> None:
    assert transfer_rule([sent()]) == "unpaired-transfer"
    assert transfer_rule([received()]) == "unpaired-transfer"


@pytest.mark.parametrize(
    "other_half",
    [received(amount=11), received(reference="x"), received(source="acc-c")],
    ids=["amount", "reference", "accounts"],
)
def test_the_two_halves_agree(other_half: TransferReceived) -> None:
    assert transfer_rule([sent(reference="y"), other_half]) == "transfer-mismatch"


def test_a_half_whose_reference_was_erased_still_agrees_with_the_other() -> None:
    # Each side is sealed under its own account's key: forgetting one erases its side only.
    check_transfers([sent(reference=None), received(reference="rent")], EUR)
    check_transfers([sent(reference="rent"), received(reference=None)], EUR)


def test_a_transfer_joins_accounts_of_one_currency() -> None:
    usd = {**EUR, B: AccountFacts(B, exists=True, version=1, currency="USD")}
    assert transfer_rule([sent(), received()], usd) == "currency-mismatch"


def test_a_transaction_id_is_used_once_per_side() -> None:
    assert transfer_rule([sent(), received(), sent()]) == "transfer-twice"


def test_a_batch_names_the_account_and_index_of_the_unpaired_half() -> None:
    with pytest.raises(InvalidAccountEvent) as caught:
        check_batch(EUR, [(A, [deposit(5), sent()]), (B, [deposit(5, account=B)])])
    assert (caught.value.rule, caught.value.account_id, caught.value.index) == (
        "unpaired-transfer",
        A,
        1,
    )


def test_a_batch_gives_the_facts_after_it() -> None:
    after = check_batch(EUR, [(A, [sent(10)]), (B, [received(10)])])
    assert (after[A].balance, after[A].version, after[B].balance) == (-10, 2, 10)


# -- the property: guard ⇔ both projections -----------------------------------------------------

ACCOUNTS = ("p", "q", "r")
T0 = datetime(2026, 11, 27, tzinfo=UTC)
Raw = tuple[str, int, dict[str, Any]]  # type, schema version, data: what a client sends


def raw_money(type: str, account: str, amount: int, reference: str | None, **more: Any) -> Raw:
    data = {"account_id": account, "transaction_id": more.pop("tx", None) or str(uuid.uuid4())}
    return (type, 1, {**data, "amount": amount, "reference": reference, **more})


# Mostly valid values, so that accounts live long enough for every rule to be met.
AMOUNTS = st.sampled_from([1, 7, 100, 250, 1000, MAX_AMOUNT, 0, -3, MAX_AMOUNT + 1])
REFERENCES = st.sampled_from([None, None, "rent", "Miete", "gpj\u202eexe", "a\u200bb", "x" * 257])
KINDS = ["open", "deposit", "deposit", "deposit", "withdraw", "withdraw", "close", "half"]


def raw_opened(
    account: str,
    *,
    currency: str = "EUR",
    overdraft: int = 0,
    owner: str | None = None,
    schema_version: int = 2,
) -> Raw:
    data = {"account_id": account, "currency": currency, "overdraft_limit": overdraft}
    return ("AccountOpened", schema_version, {**data, "owner": owner})


@st.composite
def single_event(draw: st.DrawFn, account: str) -> Raw:
    kind = draw(st.sampled_from([*KINDS, "unknown", "stray"]))
    if kind == "open":
        return raw_opened(
            account,
            currency=draw(st.sampled_from(["EUR", "EUR", "EUR", "USD", "usd"])),
            overdraft=draw(st.sampled_from([0, 0, 500, -1])),
            owner=draw(st.sampled_from([None, "Ada", "Ada", "\u202eAda"])),
            schema_version=draw(st.sampled_from([2, 2, 2, 1])),
        )
    if kind in ("deposit", "withdraw"):
        type = "MoneyDeposited" if kind == "deposit" else "MoneyWithdrawn"
        return raw_money(type, account, draw(AMOUNTS), draw(REFERENCES))
    if kind == "close":
        return ("AccountClosed", 1, {"account_id": account})
    if kind == "half":
        other = draw(st.sampled_from([a for a in ACCOUNTS if a != account]))
        return raw_money("TransferSent", account, draw(AMOUNTS), None, to_account=other)
    if kind == "unknown":
        return ("MoneyTeleported", 1, {"account_id": account})
    return raw_money("MoneyDeposited", draw(st.sampled_from(ACCOUNTS)), 5, None)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, list[Raw]]]:
    """One atomic append: events on one account, or a transfer (its halves possibly not
    matching) with more events around it."""
    if draw(st.booleans()):
        account = draw(st.sampled_from(ACCOUNTS))
        return [(account, draw(st.lists(single_event(account), min_size=1, max_size=2)))]
    source, target = draw(st.permutations(ACCOUNTS))[:2]
    tx, amount = str(uuid.uuid4()), draw(AMOUNTS)
    flaw = draw(st.sampled_from([None, None, None, "amount", "reference", "to"]))
    out = raw_money("TransferSent", source, amount, None, tx=tx, to_account=target)
    into = raw_money(
        "TransferReceived",
        target,
        amount + 1 if flaw == "amount" else amount,
        "other" if flaw == "reference" else None,
        tx=tx,
        from_account=source,
    )
    if flaw == "to":
        out[2]["to_account"] = next(a for a in ACCOUNTS if a not in (source, target))
    before = draw(st.lists(single_event(source), max_size=1))
    return [(source, [*before, out]), (target, [into])]


@dataclass
class Readers:
    """Both projections' rows, fed with whole atomic appends as their runner feeds them."""

    accounting: dict[str, accounting.Account] = field(default_factory=dict)
    statistics: dict[str, statistics.StatsAccount] = field(default_factory=dict)
    position: int = 0

    def apply(self, batch: list[tuple[str, list[Raw]]], versions: dict[str, int]) -> bool:
        events: list[RecordedEvent] = []
        for account, raws in batch:
            for i, (type, schema_version, data) in enumerate(raws):
                self.position += 1
                events.append(
                    RecordedEvent(
                        uuid.uuid4(),
                        f"account-{account}",
                        type,
                        schema_version,
                        data,
                        {},
                        versions[account] + i + 1,
                        self.position,
                        T0,
                    )
                )
        end = self.position
        events = [_with_batch_end(e, end) for e in events]
        ((group, whole),) = list(commit_groups(events))
        assert whole
        a_changes, a_rejected = accounting.evolve_commit(self.accounting, group)
        s_changes, s_rejected = statistics.evolve_commit(self.statistics, group)
        assert (a_rejected is None) == (s_rejected is None), (a_rejected, s_rejected)
        if a_rejected is not None:
            return False
        for a_change in a_changes:
            self.accounting[a_change.account.account_id] = a_change.account
        for s_change in s_changes:
            self.statistics[s_change.account.account_id] = s_change.account
        return True


def _with_batch_end(event: RecordedEvent, end: int) -> RecordedEvent:
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


def guard_accepts(
    facts: dict[str, AccountFacts], batch: list[tuple[str, list[Raw]]]
) -> dict[str, AccountFacts] | None:
    """What the stream service's guard decides (`AccountGuard.check` without the store)."""
    try:
        parts = [
            (account, [decode_event(t, d, schema_version=v) for t, v, d in raws])
            for account, raws in batch
        ]
        return check_batch(facts, parts)
    except InvalidAccountEvent:
        return None


@settings(max_examples=300, deadline=None)
@given(st.sets(st.sampled_from(ACCOUNTS), min_size=2), st.lists(batches(), min_size=1, max_size=30))
def test_an_append_the_guard_accepts_is_one_both_projections_apply_and_no_other(
    opened: set[str], appends: list[list[tuple[str, list[Raw]]]]
) -> None:
    facts = {a: AccountFacts(a) for a in ACCOUNTS}
    readers = Readers()
    # Some accounts opened first (one of them in another currency), the others maybe later.
    openings = [[(a, [raw_opened(a, currency="USD" if a == "r" else "EUR")])] for a in opened]
    for batch in openings + appends:
        after = guard_accepts(facts, batch)
        applied = readers.apply(batch, {a: f.version for a, f in facts.items()})
        assert applied == (after is not None), batch
        if after is not None:
            facts.update(after)
    # The three agree on every account, to the cent.
    for account, f in facts.items():
        row, stats = readers.accounting.get(account), readers.statistics.get(account)
        if not f.exists:
            assert row is None and stats is None
            continue
        assert row is not None and stats is not None
        assert (row.balance, row.version, row.status == "closed", row.currency) == (
            f.balance,
            f.version,
            f.closed,
            f.currency,
        )
        assert (stats.balance, stats.version, stats.status, stats.currency) == (
            row.balance,
            row.version,
            row.status,
            row.currency,
        )
