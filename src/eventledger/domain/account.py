"""The account Decider: `initial_state`, `evolve` (state + event -> state), `decide`
(state + command -> events, or a DomainError).

The rules, checked in this order so that the same input always gets the same answer:

1. every value of the command (`commands.validate`): a transfer to the same account first,
   then ids, amount, currency, overdraft limit, reference, owner;
2. the account exists (AccountNotFound), except for opening, which needs it not to
   (AccountExists); for a transfer, source before target;
3. the account is open (AccountClosed);
4. a transfer joins accounts of one currency (CurrencyMismatch);
5. money: a withdrawal, transfer or new hold keeps what is *available* (the balance less
   the holds on it) at or above -overdraft_limit (InsufficientFunds); every balance, with
   the holds going out and coming in, stays within the signed 64-bit range
   (BalanceOutOfRange); closing needs a balance of exactly 0 (BalanceNotZero) and no
   pending transfer (PendingTransfers).

Two-phase transfers: `decide_transfer` with `pending=True` places the hold; its outcome
(post, void, expiry) is decided by `holds.decide_outcome` on both accounts' states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from eventledger.domain.commands import (
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    Withdraw,
    validate,
)
from eventledger.domain.errors import (
    AccountClosedError,
    AccountExists,
    AccountNotFound,
    BalanceNotZero,
    CurrencyMismatch,
    InsufficientFunds,
    PendingTransfers,
    TransactionIdInUse,
)
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    MoneyDeposited,
    MoneyWithdrawn,
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
    PersonalDataErased,
    TransactionReversed,
    TransferReceived,
    TransferSent,
)
from eventledger.domain.money import check_balance
from eventledger.domain.pending import (
    CREDIT,
    DEBIT,
    PendingHold,
    out_of_range,
    with_hold,
    without_hold,
)
from eventledger.domain.validity import AccountFacts


@dataclass(frozen=True, slots=True)
class Account:
    """An account as its events left it. `version` counts the events folded into it, so it
    is the stream version to expect when appending the next ones."""

    account_id: str
    exists: bool
    currency: str
    overdraft_limit: int
    owner: str | None
    balance: int
    closed: bool
    version: int
    # Two-phase transfers this account is party to, still pending: by transaction id.
    pending: Mapping[str, PendingHold] = field(default_factory=dict)
    pending_debits: int = 0  # held amounts going out: not available any more
    pending_credits: int = 0  # held amounts coming in: not the balance yet

    @property
    def available(self) -> int:
        """What the overdraft rule applies to: the balance less the holds on it."""
        return self.balance - self.pending_debits


def initial_state(account_id: str) -> Account:
    """The state of an account with no events: it does not exist yet."""
    return Account(
        account_id=account_id,
        exists=False,
        currency="",
        overdraft_limit=0,
        owner=None,
        balance=0,
        closed=False,
        version=0,
    )


def evolve(state: Account, event: Event) -> Account:
    """The state after one more event. Total: events record facts, so it never refuses one."""
    version = state.version + 1
    match event:
        case AccountOpened():
            return replace(
                state,
                exists=True,
                currency=event.currency,
                overdraft_limit=event.overdraft_limit,
                owner=event.owner,
                version=version,
            )
        case MoneyDeposited() | TransferReceived():
            return replace(state, balance=state.balance + event.amount, version=version)
        case MoneyWithdrawn() | TransferSent():
            return replace(state, balance=state.balance - event.amount, version=version)
        case TransactionReversed():  # signed: the change it makes to the balance
            return replace(state, balance=state.balance + event.amount, version=version)
        case AccountClosed():
            return replace(state, closed=True, version=version)
        case PersonalDataErased():  # no copy of the owner outlives its erasure
            return replace(state, owner=None, version=version)
        case PendingTransferSent() | PendingTransferReceived():
            return _held(state, event, version)
        case PendingTransferPosted() | PendingTransferVoided():
            return _released(state, event, version)
        case _:
            # An event this code does not act on still takes its place in the stream.
            return replace(state, version=version)


def _held(
    state: Account, event: PendingTransferSent | PendingTransferReceived, version: int
) -> Account:
    if isinstance(event, PendingTransferSent):
        hold = PendingHold(DEBIT, event.amount, event.to_account, event.expires_at)
        debits, credits = state.pending_debits + event.amount, state.pending_credits
    else:
        hold = PendingHold(CREDIT, event.amount, event.from_account, event.expires_at)
        debits, credits = state.pending_debits, state.pending_credits + event.amount
    return replace(
        state,
        pending=with_hold(state.pending, event.transaction_id, hold),
        pending_debits=debits,
        pending_credits=credits,
        version=version,
    )


def _released(
    state: Account, event: PendingTransferPosted | PendingTransferVoided, version: int
) -> Account:
    # Total: an outcome this state holds no hold for changes nothing but the version (the
    # validity rule refuses such an event before any evolve sees it).
    hold = state.pending.get(event.transaction_id)
    if hold is None:
        return replace(state, version=version)
    moved = event.amount if isinstance(event, PendingTransferPosted) else 0
    debit = hold.side == DEBIT
    return replace(
        state,
        pending=without_hold(state.pending, event.transaction_id),
        pending_debits=state.pending_debits - (hold.amount if debit else 0),
        pending_credits=state.pending_credits - (0 if debit else hold.amount),
        balance=state.balance + (-moved if debit else moved),
        version=version,
    )


def facts_of(state: Account) -> AccountFacts:
    """What the validity rule (`validity.check_event`) needs to know of an account."""
    return AccountFacts(
        state.account_id,
        state.exists,
        state.closed,
        state.version,
        state.currency,
        state.balance,
        pending=state.pending,
        pending_debits=state.pending_debits,
        pending_credits=state.pending_credits,
    )


def fold(account_id: str, events: Iterable[Event]) -> Account:
    """The state of an account from its events, oldest first."""
    state = initial_state(account_id)
    for event in events:
        state = evolve(state, event)
    return state


def decide(state: Account, command: OpenAccount | Deposit | Withdraw | CloseAccount) -> list[Event]:
    """The events that carry out a command on one account, or the DomainError refusing it.

    Transfers touch two accounts: use `decide_transfer`.
    """
    if isinstance(command, Transfer):
        raise TypeError("a transfer touches two accounts: use decide_transfer")
    validate(command)
    _check_addressed(state, command.account_id)
    match command:
        case OpenAccount():
            _check_not_exists(state)
            return [
                AccountOpened(
                    account_id=command.account_id,
                    currency=command.currency,
                    overdraft_limit=command.overdraft_limit,
                    owner=command.owner,
                )
            ]
        case Deposit():
            _check_exists(state)
            _check_open(state)
            _check_in_range(state, balance=state.balance + command.amount)
            return [
                MoneyDeposited(
                    account_id=command.account_id,
                    transaction_id=command.transaction_id,
                    amount=command.amount,
                    reference=command.reference,
                )
            ]
        case Withdraw():
            _check_exists(state)
            _check_open(state)
            _check_sufficient_funds(state, command.amount)
            _check_in_range(state, balance=state.balance - command.amount)
            return [
                MoneyWithdrawn(
                    account_id=command.account_id,
                    transaction_id=command.transaction_id,
                    amount=command.amount,
                    reference=command.reference,
                )
            ]
        case CloseAccount():
            _check_exists(state)
            _check_open(state)
            _check_balance_zero(state)
            _check_no_pending(state)
            return [AccountClosed(account_id=command.account_id)]


def decide_transfer(
    source: Account, target: Account, command: Transfer
) -> tuple[TransferSent, TransferReceived] | tuple[PendingTransferSent, PendingTransferReceived]:
    """The two events of a transfer (or, `pending`, of its hold), one for each account's
    stream, to append atomically; or the DomainError refusing it."""
    validate(command)
    _check_addressed(source, command.from_account)
    _check_addressed(target, command.to_account)
    _check_exists(source)
    _check_exists(target)
    _check_open(source)
    _check_open(target)
    _check_same_currency(source, target)
    _check_sufficient_funds(source, command.amount)
    amount = command.amount
    if command.pending:
        # The guard refuses a hold id an account holds already ('hold-twice'): decided here,
        # an Idempotency-Key reused for another hold answers idempotency-key-reused, not 502.
        for state in (source, target):
            if command.transaction_id in state.pending:
                raise TransactionIdInUse(command.transaction_id, state.account_id)
        _check_in_range(source, debits=source.pending_debits + amount)
        _check_in_range(target, credits=target.pending_credits + amount)
        return (
            PendingTransferSent(
                account_id=command.from_account,
                transaction_id=command.transaction_id,
                to_account=command.to_account,
                amount=amount,
                reference=command.reference,
                expires_at=command.expires_at,
            ),
            PendingTransferReceived(
                account_id=command.to_account,
                transaction_id=command.transaction_id,
                from_account=command.from_account,
                amount=amount,
                reference=command.reference,
                expires_at=command.expires_at,
            ),
        )
    _check_in_range(source, balance=source.balance - amount)
    _check_in_range(target, balance=target.balance + amount)
    return (
        TransferSent(
            account_id=command.from_account,
            transaction_id=command.transaction_id,
            to_account=command.to_account,
            amount=amount,
            reference=command.reference,
        ),
        TransferReceived(
            account_id=command.to_account,
            transaction_id=command.transaction_id,
            from_account=command.from_account,
            amount=amount,
            reference=command.reference,
        ),
    )


def _check_addressed(state: Account, account_id: str) -> None:
    # A caller bug, not a refusal: the events would land on the wrong stream.
    if state.account_id != account_id:
        raise ValueError(
            f"a command for account {account_id!r} was decided on the state of "
            f"account {state.account_id!r}"
        )


def _check_not_exists(state: Account) -> None:
    if state.exists:
        raise AccountExists(state.account_id)


def _check_exists(state: Account) -> None:
    if not state.exists:
        raise AccountNotFound(state.account_id)


def _check_open(state: Account) -> None:
    if state.closed:
        raise AccountClosedError(state.account_id)


def _check_same_currency(source: Account, target: Account) -> None:
    if source.currency != target.currency:
        raise CurrencyMismatch(
            source.account_id, source.currency, target.account_id, target.currency
        )


def _check_sufficient_funds(state: Account, amount: int) -> None:
    # On what is available: money on hold for a pending transfer is promised already.
    if state.available - amount < -state.overdraft_limit:
        raise InsufficientFunds(
            state.account_id,
            balance=state.balance,
            amount=amount,
            overdraft_limit=state.overdraft_limit,
            pending_debits=state.pending_debits,
        )


def _check_balance_in_range(state: Account, balance: int) -> None:
    check_balance(balance, account_id=state.account_id)


def _check_in_range(
    state: Account,
    *,
    balance: int | None = None,
    debits: int | None = None,
    credits: int | None = None,
) -> None:
    """The balance, and it less the holds going out / plus those coming in, all within the
    signed 64-bit range after a change (so that no later post or void can leave it)."""
    bad = out_of_range(
        state.balance if balance is None else balance,
        state.pending_debits if debits is None else debits,
        state.pending_credits if credits is None else credits,
    )
    if bad is not None:
        check_balance(bad, account_id=state.account_id)


def _check_no_pending(state: Account) -> None:
    if state.pending:
        raise PendingTransfers(state.account_id, pending=len(state.pending))


def _check_balance_zero(state: Account) -> None:
    if state.balance != 0:
        raise BalanceNotZero(state.account_id, balance=state.balance)
