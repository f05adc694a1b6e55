"""Two-phase transfers, property-tested: for any interleaving of holds, posts (whole and
partial), voids, expiries, deposits, withdrawals and transfers between a few accounts,

* `available` never drops below -overdraft_limit on any account;
* every hold ends at most once: never both posted and voided (or expired);
* money is conserved: the sum of the balances is what came in less what went out, and the
  holds going out and coming in always balance;
* every event the Decider produces passes the validity rule (`check_batch`) that the stream
  service's guard and the readers apply, and the facts it keeps equal the Decider's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventledger.domain.account import Account, decide, decide_transfer, evolve, facts_of, fold
from eventledger.domain.commands import (
    Deposit,
    ExpirePendingTransfer,
    OpenAccount,
    PostPendingTransfer,
    Transfer,
    VoidPendingTransfer,
    Withdraw,
)
from eventledger.domain.errors import DomainError
from eventledger.domain.events import (
    Event,
    PendingTransferPosted,
    PendingTransferVoided,
)
from eventledger.domain.holds import decide_outcome
from eventledger.domain.pending import format_time
from eventledger.domain.validity import AccountFacts, check_batch

ACCOUNTS = ("acc-a", "acc-b", "acc-c")
LIMITS = {"acc-a": 0, "acc-b": 500, "acc-c": 0}
START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

amounts = st.integers(min_value=1, max_value=1500)
accounts = st.sampled_from(ACCOUNTS)


class TwoPhaseLedger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, Account] = {}
        self.facts: dict[str, AccountFacts] = {}
        for account_id in ACCOUNTS:
            (opened,) = decide(
                fold(account_id, []), OpenAccount(account_id, "EUR", LIMITS[account_id])
            )
            self.states[account_id] = evolve(fold(account_id, []), opened)
            self.facts[account_id] = facts_of(self.states[account_id])
        self.clock = START
        self.counter = 0
        self.money_in = 0
        self.money_out = 0
        self.holds: dict[str, tuple[str, str]] = {}  # every hold placed: id -> (from, to)
        self.outcomes: dict[str, list[str]] = {}  # id -> the outcomes written
        for account_id in ACCOUNTS:  # some money to hold from the start
            self._write(
                {
                    account_id: decide(
                        self.states[account_id], Deposit(account_id, self._tid(), 3000)
                    )
                }
            )
            self.money_in += 3000

    def _tid(self) -> str:
        self.counter += 1
        return f"{self.counter:08x}-0000-4000-8000-000000000000"

    def _now(self) -> str:
        return format_time(self.clock)

    def _write(self, parts: dict[str, list[Event]]) -> None:
        """Append as the command side would: the rule first (it must accept), then evolve."""
        self.facts.update(check_batch(self.facts, list(parts.items())))
        for account_id, events in parts.items():
            for event in events:
                self.states[account_id] = evolve(self.states[account_id], event)
                if (
                    isinstance(event, PendingTransferPosted | PendingTransferVoided)
                    and event.account_id == event.from_account
                ):
                    kind = "posted" if isinstance(event, PendingTransferPosted) else "voided"
                    self.outcomes.setdefault(event.transaction_id, []).append(kind)

    @rule(account=accounts, amount=amounts)
    def deposit(self, account: str, amount: int) -> None:
        events = decide(self.states[account], Deposit(account, self._tid(), amount))
        self._write({account: events})
        self.money_in += amount

    @rule(account=accounts, amount=amounts)
    def withdraw(self, account: str, amount: int) -> None:
        try:
            events = decide(self.states[account], Withdraw(account, self._tid(), amount))
        except DomainError:
            return
        self._write({account: events})
        self.money_out += amount

    @rule(sender=accounts, receiver=accounts, amount=amounts, pending=st.booleans(),
          timeout=st.one_of(st.none(), st.integers(min_value=1, max_value=60)))  # fmt: skip
    def transfer(
        self, sender: str, receiver: str, amount: int, pending: bool, timeout: int | None
    ) -> None:
        if sender == receiver:
            return
        tid = self._tid()
        expires_at = (
            format_time(self.clock + timedelta(seconds=timeout))
            if pending and timeout is not None
            else None
        )
        command = Transfer(tid, sender, receiver, amount, None, pending, expires_at)
        try:
            sent, received = decide_transfer(self.states[sender], self.states[receiver], command)
        except DomainError:
            return
        self._write({sender: [sent], receiver: [received]})
        if pending:
            self.holds[tid] = (sender, receiver)

    def _open_holds(self) -> list[str]:
        return sorted({tid for state in self.states.values() for tid in state.pending})

    def _outcome(
        self, tid: str, kind: str, amount: int | None
    ) -> PostPendingTransfer | VoidPendingTransfer | ExpirePendingTransfer:
        source, target = self.holds[tid]
        now = self._now()
        if kind == "post":
            return PostPendingTransfer(tid, source, target, amount, now)
        if kind == "void":
            return VoidPendingTransfer(tid, source, target, now)
        return ExpirePendingTransfer(tid, source, target, now)

    @precondition(lambda self: bool(self._open_holds()))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["post", "void", "expire"]),
        partial=st.one_of(st.none(), st.integers(min_value=1, max_value=1600)),
    )
    def end_hold(self, data: st.DataObject, kind: str, partial: int | None) -> None:
        tid = data.draw(st.sampled_from(self._open_holds()))
        source, target = self.holds[tid]
        command = self._outcome(tid, kind, partial)
        try:
            first, second = decide_outcome(self.states[source], self.states[target], command)
        except DomainError:
            return
        self._write({source: [first], target: [second]})

    @precondition(lambda self: bool(self.outcomes))
    @rule(data=st.data(), kind=st.sampled_from(["post", "void", "expire"]))
    def end_an_ended_hold(self, data: st.DataObject, kind: str) -> None:
        tid = data.draw(st.sampled_from(sorted(self.outcomes)))
        source, target = self.holds[tid]
        try:
            decide_outcome(self.states[source], self.states[target], self._outcome(tid, kind, None))
        except DomainError:
            return
        raise AssertionError(f"hold {tid} was ended twice")

    @rule(seconds=st.integers(min_value=1, max_value=40))
    def time_passes(self, seconds: int) -> None:
        self.clock += timedelta(seconds=seconds)

    @invariant()
    def available_never_below_the_overdraft_limit(self) -> None:
        for state in self.states.values():
            assert state.available >= -state.overdraft_limit

    @invariant()
    def every_hold_ends_at_most_once(self) -> None:
        for kinds in self.outcomes.values():
            assert len(kinds) == 1

    @invariant()
    def money_is_conserved(self) -> None:
        states = self.states.values()
        assert sum(s.balance for s in states) == self.money_in - self.money_out
        assert sum(s.pending_debits for s in states) == sum(s.pending_credits for s in states)
        open_holds = {tid for s in states for tid in s.pending}
        assert open_holds == set(self.holds) - set(self.outcomes)

    @invariant()
    def the_rules_facts_are_the_deciders(self) -> None:
        for account_id, state in self.states.items():
            assert self.facts[account_id] == facts_of(state)


TwoPhaseLedger.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_two_phase_ledger = TwoPhaseLedger.TestCase
