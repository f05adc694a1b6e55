"""Properties of the account Decider, and a stateful test against a model of plain dicts."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from eventledger.domain import errors
from eventledger.domain.account import Account, decide, decide_transfer, evolve, fold, initial_state
from eventledger.domain.commands import CloseAccount, Deposit, OpenAccount, Transfer, Withdraw
from eventledger.domain.errors import (
    AccountExists,
    AccountNotFound,
    BalanceNotZero,
    CurrencyMismatch,
    DomainError,
    InsufficientFunds,
    InvalidAmount,
    SameAccountTransfer,
)
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferReceived,
    TransferSent,
)
from eventledger.domain.money import INT64_MAX, INT64_MIN, MAX_AMOUNT, MAX_OVERDRAFT_LIMIT

ACC = "acc-1"
TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"

# Values as a client might send them: mostly valid, sometimes out of range or of the wrong type.
amounts = st.one_of(
    st.integers(min_value=1, max_value=MAX_AMOUNT),
    st.integers(min_value=1, max_value=10_000),
    st.sampled_from([0, -1, MAX_AMOUNT, MAX_AMOUNT + 1, True, False, 1.0, "10", None, Decimal(1)]),
)
limits = st.one_of(
    st.integers(min_value=0, max_value=MAX_OVERDRAFT_LIMIT),
    st.sampled_from([0, 100, -1, MAX_OVERDRAFT_LIMIT + 1, True]),
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=300),
    st.binary(max_size=4),
)
commands = st.one_of(
    st.builds(OpenAccount, st.just(ACC), st.sampled_from(["EUR", "USD", "eur"]), limits),
    st.builds(Deposit, st.just(ACC), st.just(TX), amounts, st.none() | st.text(max_size=260)),
    st.builds(Withdraw, st.just(ACC), st.just(TX), amounts, st.none() | st.text(max_size=260)),
    st.builds(CloseAccount, st.just(ACC)),
)


@st.composite
def accounts(draw: st.DrawFn) -> Account:
    """Any state an account can reach under the rules, including balances at the int64 edges."""
    limit = draw(st.integers(min_value=0, max_value=MAX_OVERDRAFT_LIMIT) | st.just(0))
    balance = draw(
        st.one_of(
            st.integers(min_value=-limit, max_value=INT64_MAX),
            st.integers(min_value=INT64_MAX - 3 * MAX_AMOUNT, max_value=INT64_MAX),
            st.just(-limit),
            st.just(0),
        )
    )
    state = fold(ACC, [AccountOpened(ACC, draw(st.sampled_from(["EUR", "USD"])), limit, None)])
    return dataclasses.replace(state, balance=balance, closed=draw(st.booleans()))


def in_rules(account: Account) -> bool:
    return -account.overdraft_limit <= account.balance and INT64_MIN <= account.balance <= INT64_MAX


@settings(max_examples=150, deadline=None)
@given(accounts(), st.lists(commands, max_size=30))
def test_accepted_events_keep_the_balance_within_the_overdraft_and_int64(
    start: Account, sequence: list[Any]
) -> None:
    state = start
    for command in sequence:
        try:
            events = decide(state, command)
        except DomainError:
            continue
        for event in events:
            state = evolve(state, event)
        assert in_rules(state)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.just(initial_state(ACC)), accounts()), commands)
def test_decide_neither_mutates_nor_varies(state: Account, command: Any) -> None:
    state_before, command_before = copy.deepcopy(state), copy.deepcopy(command)

    def outcome() -> object:
        try:
            return decide(state, command)
        except DomainError as error:
            return (type(error), str(error))

    first = outcome()
    assert outcome() == first
    assert (state, command) == (state_before, command_before)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([Deposit, Withdraw]),
    anything,
    anything,
    anything,
    st.one_of(st.just(initial_state(ACC)), accounts()),
)
def test_any_values_are_either_accepted_or_refused_with_a_domain_error(
    kind: type[Deposit | Withdraw], transaction_id: Any, amount: Any, reference: Any, state: Account
) -> None:
    try:
        events = decide(state, kind(ACC, transaction_id, amount, reference))
    except DomainError:
        return
    assert len(events) == 1


texts = st.text(max_size=10)
big_ints = st.integers()
any_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(AccountOpened, texts, texts, big_ints, st.none() | texts),
    st.builds(MoneyDeposited, texts, texts, big_ints, st.none() | texts),
    st.builds(MoneyWithdrawn, texts, texts, big_ints, st.none() | texts),
    st.builds(TransferSent, texts, texts, texts, big_ints, st.none() | texts),
    st.builds(TransferReceived, texts, texts, texts, big_ints, st.none() | texts),
    st.builds(AccountClosed, texts),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.just(initial_state(ACC)), accounts()), st.lists(any_events, max_size=10))
def test_evolve_is_total_and_counts_every_event(state: Account, events: list[Event]) -> None:
    for event in events:
        next_state = evolve(state, event)
        assert next_state.version == state.version + 1
        state = next_state


# The stateful test: several accounts driven by random commands, checked against a model.

IDS = ["a", "b", "c"]


def tx(number: int) -> str:
    return str(uuid.UUID(int=number))


class Ledger(RuleBasedStateMachine):
    """The model keeps each account as a plain dict; the system under test is the Decider
    over one event list per account. After every step both must agree on what was accepted
    or refused (and why) and on every balance."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, list[Event]] = {account_id: [] for account_id in IDS}
        self.model: dict[str, dict[str, Any]] = {}
        self.external = 0  # deposits minus withdrawals: transfers create no money
        self.transactions = 0

    def state(self, account_id: str) -> Account:
        return fold(account_id, self.streams[account_id])

    def next_tx(self) -> str:
        self.transactions += 1
        return tx(self.transactions)

    def expect_refusal(self, expected: type[DomainError], run: Any) -> None:
        streams_before = copy.deepcopy(self.streams)
        try:
            run()
        except DomainError as error:
            assert type(error) is expected, f"expected {expected.__name__}, got {error!r}"
        else:
            raise AssertionError(f"expected {expected.__name__}, but it was accepted")
        assert self.streams == streams_before

    @staticmethod
    def refusal_of_money(account: dict[str, Any] | None) -> type[DomainError] | None:
        if account is None:
            return AccountNotFound
        if account["closed"]:
            return errors.AccountClosed
        return None

    @rule(
        account_id=st.sampled_from(IDS),
        currency=st.sampled_from(["EUR", "USD"]),
        limit=st.sampled_from([0, 0, 100, 1_000]),
    )
    def open(self, account_id: str, currency: str, limit: int) -> None:
        command = OpenAccount(account_id, currency, limit)
        if account_id in self.model:
            self.expect_refusal(AccountExists, lambda: decide(self.state(account_id), command))
            return
        self.streams[account_id] += decide(self.state(account_id), command)
        self.model[account_id] = {
            "currency": currency,
            "limit": limit,
            "balance": 0,
            "closed": False,
        }

    @rule(account_id=st.sampled_from(IDS), amount=st.integers(min_value=-1, max_value=2_000))
    def deposit(self, account_id: str, amount: int) -> None:
        command = Deposit(account_id, self.next_tx(), amount)
        account = self.model.get(account_id)
        expected = InvalidAmount if amount < 1 else self.refusal_of_money(account)
        if expected is not None:
            self.expect_refusal(expected, lambda: decide(self.state(account_id), command))
            return
        assert account is not None
        self.streams[account_id] += decide(self.state(account_id), command)
        account["balance"] += amount
        self.external += amount

    @rule(account_id=st.sampled_from(IDS), amount=st.integers(min_value=-1, max_value=2_000))
    def withdraw(self, account_id: str, amount: int) -> None:
        self._withdraw(account_id, amount)

    @rule(account_id=st.sampled_from(IDS))
    def withdraw_everything(self, account_id: str) -> None:
        # Random amounts rarely empty an account exactly; closing needs it.
        account = self.model.get(account_id)
        self._withdraw(account_id, max(account["balance"], 1) if account else 1)

    def _withdraw(self, account_id: str, amount: int) -> None:
        command = Withdraw(account_id, self.next_tx(), amount)
        account = self.model.get(account_id)
        expected = InvalidAmount if amount < 1 else self.refusal_of_money(account)
        if (
            expected is None
            and account is not None
            and account["balance"] - amount < -account["limit"]
        ):
            expected = InsufficientFunds
        if expected is not None:
            self.expect_refusal(expected, lambda: decide(self.state(account_id), command))
            return
        assert account is not None
        self.streams[account_id] += decide(self.state(account_id), command)
        account["balance"] -= amount
        self.external -= amount

    @rule(
        from_account=st.sampled_from(IDS),
        to_account=st.sampled_from(IDS),
        amount=st.integers(min_value=-1, max_value=2_000),
    )
    def transfer(self, from_account: str, to_account: str, amount: int) -> None:
        command = Transfer(self.next_tx(), from_account, to_account, amount)
        source, target = self.model.get(from_account), self.model.get(to_account)
        expected: type[DomainError] | None
        if from_account == to_account:
            expected = SameAccountTransfer
        elif amount < 1:
            expected = InvalidAmount
        elif source is None or target is None:
            expected = AccountNotFound
        elif source["closed"] or target["closed"]:
            expected = errors.AccountClosed
        elif source["currency"] != target["currency"]:
            expected = CurrencyMismatch
        elif source["balance"] - amount < -source["limit"]:
            expected = InsufficientFunds
        else:
            expected = None

        def run() -> tuple[TransferSent, TransferReceived]:
            return decide_transfer(self.state(from_account), self.state(to_account), command)

        if expected is not None:
            self.expect_refusal(expected, run)
            return
        assert source is not None and target is not None
        sent, received = run()
        self.streams[from_account].append(sent)
        self.streams[to_account].append(received)
        source["balance"] -= amount
        target["balance"] += amount

    @rule(account_id=st.sampled_from(IDS))
    def close(self, account_id: str) -> None:
        command = CloseAccount(account_id)
        account = self.model.get(account_id)
        expected = self.refusal_of_money(account)
        if expected is None and account is not None and account["balance"] != 0:
            expected = BalanceNotZero
        if expected is not None:
            self.expect_refusal(expected, lambda: decide(self.state(account_id), command))
            return
        assert account is not None
        self.streams[account_id] += decide(self.state(account_id), command)
        account["closed"] = True

    @invariant()
    def the_decider_agrees_with_the_model(self) -> None:
        for account_id in IDS:
            state, account = self.state(account_id), self.model.get(account_id)
            assert state.version == len(self.streams[account_id])
            assert state.exists == (account is not None)
            if account is not None:
                assert (state.currency, state.overdraft_limit) == (
                    account["currency"],
                    account["limit"],
                )
                assert (state.balance, state.closed) == (account["balance"], account["closed"])
                assert state.balance >= -state.overdraft_limit

    @invariant()
    def transfers_create_no_money(self) -> None:
        assert sum(self.state(account_id).balance for account_id in IDS) == self.external


Ledger.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLedger = Ledger.TestCase
