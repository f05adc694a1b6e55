"""Specs of the account rules, given/when/then: given past events, when a command, then
new events or a refusal."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from eventledger.domain import errors
from eventledger.domain.account import (
    Account,
    decide,
    decide_transfer,
    evolve,
    fold,
    initial_state,
)
from eventledger.domain.commands import (
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    Withdraw,
)
from eventledger.domain.errors import (
    AccountExists,
    AccountNotFound,
    BalanceNotZero,
    BalanceOutOfRange,
    CurrencyMismatch,
    DomainError,
    InsufficientFunds,
    InvalidAccountId,
    InvalidAmount,
    InvalidCommand,
    InvalidCurrency,
    InvalidOverdraftLimit,
    InvalidOwner,
    InvalidReference,
    InvalidTransactionId,
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
from eventledger.domain.money import (
    CURRENCIES,
    INT64_MAX,
    INT64_MIN,
    MAX_AMOUNT,
    MAX_OVERDRAFT_LIMIT,
    check_balance,
)

ACC = "acc-1"
OTHER = "acc-2"
TX = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"

# Helpers: past events ("given") and commands ("when") with sensible defaults.


def opened(account_id: str = ACC, currency: str = "EUR", overdraft_limit: int = 0) -> AccountOpened:
    return AccountOpened(account_id, currency, overdraft_limit, None)


def deposited(amount: int, account_id: str = ACC) -> MoneyDeposited:
    return MoneyDeposited(account_id, TX, amount, None)


def withdrawn(amount: int, account_id: str = ACC) -> MoneyWithdrawn:
    return MoneyWithdrawn(account_id, TX, amount, None)


def closed(account_id: str = ACC) -> AccountClosed:
    return AccountClosed(account_id)


def given(*events: Event, account_id: str = ACC) -> Account:
    return fold(account_id, events)


def given_balance(balance: int, *, account_id: str = ACC, overdraft_limit: int = 0) -> Account:
    """An open account at any balance, even one no series of valid amounts reaches quickly."""
    state = given(opened(account_id, overdraft_limit=overdraft_limit), account_id=account_id)
    return dataclasses.replace(state, balance=balance)


def deposit(amount: Any = 100, account_id: Any = ACC, **kw: Any) -> Deposit:
    return Deposit(
        account_id=account_id, transaction_id=kw.pop("transaction_id", TX), amount=amount, **kw
    )


def withdraw(amount: Any = 100, account_id: Any = ACC, **kw: Any) -> Withdraw:
    return Withdraw(
        account_id=account_id, transaction_id=kw.pop("transaction_id", TX), amount=amount, **kw
    )


def transfer(
    amount: Any = 100, from_account: Any = ACC, to_account: Any = OTHER, **kw: Any
) -> Transfer:
    return Transfer(
        transaction_id=kw.pop("transaction_id", TX),
        from_account=from_account,
        to_account=to_account,
        amount=amount,
        **kw,
    )


# Opening


def test_opening_a_new_account_records_that_it_was_opened() -> None:
    events = decide(initial_state(ACC), OpenAccount(ACC, "EUR", overdraft_limit=500, owner="Ada"))

    assert events == [AccountOpened(ACC, "EUR", 500, "Ada")]
    account = fold(ACC, events)
    assert (account.exists, account.currency, account.overdraft_limit, account.owner) == (
        True,
        "EUR",
        500,
        "Ada",
    )
    assert (account.balance, account.closed, account.version) == (0, False, 1)


def test_an_account_opens_without_overdraft_or_owner_by_default() -> None:
    assert decide(initial_state(ACC), OpenAccount(ACC, "USD")) == [
        AccountOpened(ACC, "USD", 0, None)
    ]


def test_an_account_cannot_be_opened_twice() -> None:
    with pytest.raises(AccountExists, match="acc-1"):
        decide(given(opened()), OpenAccount(ACC, "EUR"))


def test_a_closed_account_cannot_be_opened_again() -> None:
    with pytest.raises(AccountExists):
        decide(given(opened(), closed()), OpenAccount(ACC, "EUR"))


@pytest.mark.parametrize(
    "currency", ["USD", "EUR", "GBP", "JPY", "CHF", "CNY", "XCG", "ZWG", "XTS"]
)
def test_active_iso_4217_currencies_are_accepted(currency: str) -> None:
    assert decide(initial_state(ACC), OpenAccount(ACC, currency))[0] == opened(currency=currency)


@pytest.mark.parametrize("currency", ["usd", "Eur", "XYZ", "", "EURO", " EUR", "HRK", 978, None])
def test_the_currency_must_be_an_active_iso_4217_code(currency: Any) -> None:
    with pytest.raises(InvalidCurrency) as refused:
        decide(initial_state(ACC), OpenAccount(ACC, currency))
    assert refused.value.field == "currency"


@pytest.mark.parametrize("limit", [0, 1, MAX_OVERDRAFT_LIMIT])
def test_the_overdraft_limit_may_be_anything_from_zero_to_its_maximum(limit: int) -> None:
    events = decide(initial_state(ACC), OpenAccount(ACC, "EUR", limit))
    assert events == [AccountOpened(ACC, "EUR", limit, None)]


@pytest.mark.parametrize(
    "limit", [-1, MAX_OVERDRAFT_LIMIT + 1, True, False, 1.0, "10", None, Decimal(5)]
)
def test_the_overdraft_limit_must_be_a_non_negative_integer(limit: Any) -> None:
    with pytest.raises(InvalidOverdraftLimit) as refused:
        decide(initial_state(ACC), OpenAccount(ACC, "EUR", limit))
    assert refused.value.field == "overdraft_limit"


@pytest.mark.parametrize("account_id", ["0", "a", "A.b_c-9", "acc-42", "x" * 64])
def test_account_ids_of_letters_digits_and_punctuation_up_to_64_characters_are_accepted(
    account_id: str,
) -> None:
    assert decide(initial_state(account_id), OpenAccount(account_id, "EUR"))


@pytest.mark.parametrize(
    "account_id",
    ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "x" * 65, "abc\n", "\nabc", 42, None],
)
def test_account_ids_must_follow_the_identifier_rules(account_id: Any) -> None:
    with pytest.raises(InvalidAccountId) as refused:
        decide(initial_state(account_id), OpenAccount(account_id, "EUR"))
    assert refused.value.field == "account_id"


@pytest.mark.parametrize("owner", [None, "", "Ada Lovelace", "Zoë ✓ 日本", "x" * 256])
def test_the_owner_is_optional_text(owner: str | None) -> None:
    assert decide(initial_state(ACC), OpenAccount(ACC, "EUR", owner=owner))


@pytest.mark.parametrize(
    "owner", ["x" * 257, "a\x00b", "tab\there", "new\nline", "\x7f", "\x85", "\ud800", 5]
)
def test_the_owner_is_at_most_256_characters_without_control_characters(owner: Any) -> None:
    with pytest.raises(InvalidOwner) as refused:
        decide(initial_state(ACC), OpenAccount(ACC, "EUR", owner=owner))
    assert refused.value.field == "owner"


# Deposits


def test_a_deposit_raises_the_balance() -> None:
    events = decide(given(opened(), deposited(50)), deposit(100, reference="salary"))

    assert events == [MoneyDeposited(ACC, TX, 100, "salary")]
    assert fold(ACC, [opened(), deposited(50), *events]).balance == 150


def test_a_deposit_may_take_the_balance_up_to_the_int64_maximum() -> None:
    assert decide(given_balance(INT64_MAX - 10), deposit(10))


def test_a_deposit_may_not_take_the_balance_beyond_the_int64_maximum() -> None:
    with pytest.raises(BalanceOutOfRange) as refused:
        decide(given_balance(INT64_MAX - 10), deposit(11))
    assert refused.value.balance == INT64_MAX + 1


# Withdrawals


def test_a_withdrawal_lowers_the_balance() -> None:
    events = decide(given(opened(), deposited(500)), withdraw(200))

    assert events == [MoneyWithdrawn(ACC, TX, 200, None)]
    assert fold(ACC, [opened(), deposited(500), *events]).balance == 300


def test_without_overdraft_a_withdrawal_may_empty_the_account_but_not_more() -> None:
    account = given(opened(), deposited(500))
    assert decide(account, withdraw(500))
    with pytest.raises(InsufficientFunds):
        decide(account, withdraw(501))


def test_withdrawal_may_use_the_overdraft_but_not_beyond() -> None:
    account = given(opened(overdraft_limit=1000), deposited(500))

    assert (
        fold(
            ACC, [opened(overdraft_limit=1000), deposited(500), *decide(account, withdraw(1500))]
        ).balance
        == -1000
    )
    with pytest.raises(InsufficientFunds):
        decide(account, withdraw(1501))


def test_an_overdrawn_account_refuses_withdrawals_beyond_the_limit() -> None:
    account = given(opened(overdraft_limit=100), withdrawn(100))
    with pytest.raises(InsufficientFunds):
        decide(account, withdraw(1))


def test_insufficient_funds_says_the_balance_the_amount_and_the_limit() -> None:
    with pytest.raises(InsufficientFunds) as refused:
        decide(given(opened(overdraft_limit=250), deposited(300)), withdraw(777))

    error = refused.value
    assert (error.account_id, error.balance, error.amount, error.overdraft_limit) == (
        ACC,
        300,
        777,
        250,
    )
    for number in ("300", "777", "250"):
        assert number in str(error)


def test_a_withdrawal_at_the_largest_amount_and_limit_stays_in_range() -> None:
    account = given_balance(0, overdraft_limit=MAX_OVERDRAFT_LIMIT)
    assert (
        fold(
            ACC,
            [opened(overdraft_limit=MAX_OVERDRAFT_LIMIT), *decide(account, withdraw(MAX_AMOUNT))],
        ).balance
        == -MAX_AMOUNT
    )


# Closing


def test_an_account_at_balance_zero_can_be_closed() -> None:
    account = given(opened(), deposited(100), withdrawn(100))

    events = decide(account, CloseAccount(ACC))

    assert events == [AccountClosed(ACC)]
    assert evolve(account, events[0]).closed


@pytest.mark.parametrize("balance", [1, -1])
def test_an_account_can_only_be_closed_at_balance_zero(balance: int) -> None:
    with pytest.raises(BalanceNotZero) as refused:
        decide(given_balance(balance, overdraft_limit=10), CloseAccount(ACC))
    assert refused.value.balance == balance


def test_a_closed_account_refuses_deposits() -> None:
    with pytest.raises(errors.AccountClosed):
        decide(given(opened(), closed()), deposit())


def test_a_closed_account_refuses_withdrawals() -> None:
    with pytest.raises(errors.AccountClosed):
        decide(given(opened(), closed()), withdraw())


def test_a_closed_account_cannot_be_closed_again() -> None:
    with pytest.raises(errors.AccountClosed):
        decide(given(opened(), closed()), CloseAccount(ACC))


# Unknown accounts


@pytest.mark.parametrize("command", [deposit(), withdraw(), CloseAccount(ACC)], ids=type)
def test_an_unknown_account_refuses_everything_but_opening(
    command: Deposit | Withdraw | CloseAccount,
) -> None:
    with pytest.raises(AccountNotFound, match="acc-1"):
        decide(initial_state(ACC), command)


# Values of money commands


@pytest.mark.parametrize("amount", [True, False, 1.0, 10.5, "10", "1e3", None, Decimal(10), 1j])
def test_amounts_must_be_integers_not_bools_or_floats(amount: Any) -> None:
    account = given(opened(), deposited(1000))
    for command in (deposit(amount), withdraw(amount)):
        with pytest.raises(InvalidAmount) as refused:
            decide(account, command)
        assert refused.value.field == "amount"
    with pytest.raises(InvalidAmount):
        decide_transfer(account, given(opened(OTHER), account_id=OTHER), transfer(amount))


@pytest.mark.parametrize("amount", [0, -1, -100, MAX_AMOUNT + 1, 2**63])
def test_amounts_must_be_from_1_to_2_pow_53_minus_1(amount: int) -> None:
    account = given(opened(), deposited(1000))
    for command in (deposit(amount), withdraw(amount)):
        with pytest.raises(InvalidAmount):
            decide(account, command)


@pytest.mark.parametrize("amount", [1, MAX_AMOUNT])
def test_the_smallest_and_largest_amounts_are_accepted(amount: int) -> None:
    assert decide(given(opened()), deposit(amount)) == [deposited(amount)]


@pytest.mark.parametrize(
    "transaction_id",
    [
        "",
        "not-a-uuid",
        TX.upper(),
        TX.replace("-", ""),
        "{" + TX + "}",
        "urn:uuid:" + TX,
        TX + "\n",
        42,
        None,
    ],
)
def test_transaction_ids_must_be_uuids_in_canonical_form(transaction_id: Any) -> None:
    with pytest.raises(InvalidTransactionId) as refused:
        decide(given(opened()), deposit(transaction_id=transaction_id))
    assert refused.value.field == "transaction_id"


@pytest.mark.parametrize("reference", ["x" * 257, "a\x00", "line\r\n", "\x1b[31m", "\ud83d", 7])
def test_references_are_at_most_256_characters_without_control_characters(reference: Any) -> None:
    account = given(opened(), deposited(1000))
    for command in (deposit(reference=reference), withdraw(reference=reference)):
        with pytest.raises(InvalidReference) as refused:
            decide(account, command)
        assert refused.value.field == "reference"


@pytest.mark.parametrize("reference", [None, "", "invoice 42 — Zoë", "x" * 256])
def test_references_are_optional_text(reference: str | None) -> None:
    assert decide(given(opened()), deposit(reference=reference))[0] == MoneyDeposited(
        ACC, TX, 100, reference
    )


# Order of checks


def test_values_are_checked_before_the_state_of_the_account() -> None:
    with pytest.raises(InvalidAmount):
        decide(initial_state(ACC), deposit(0))
    with pytest.raises(InvalidAmount):
        decide(given(opened(), closed()), withdraw(True))
    with pytest.raises(InvalidCurrency):
        decide(given(opened()), OpenAccount(ACC, "usd"))


def test_values_are_checked_in_field_order() -> None:
    with pytest.raises(InvalidAccountId):
        decide(initial_state("-"), Deposit("-", "bad", 0, "\x00"))
    with pytest.raises(InvalidTransactionId):
        decide(initial_state(ACC), Deposit(ACC, "bad", 0, "\x00"))
    with pytest.raises(InvalidAmount):
        decide(initial_state(ACC), Deposit(ACC, TX, 0, "\x00"))


def test_a_closed_account_is_refused_before_its_funds_are_counted() -> None:
    with pytest.raises(errors.AccountClosed):
        decide(given(opened(), closed()), withdraw(10**6))


# Transfers


def test_a_transfer_moves_money_from_one_account_to_another() -> None:
    source, target = given(opened(), deposited(1000)), given(opened(OTHER), account_id=OTHER)

    sent, received = decide_transfer(source, target, transfer(300, reference="rent"))

    assert sent == TransferSent(ACC, TX, OTHER, 300, "rent")
    assert received == TransferReceived(OTHER, TX, ACC, 300, "rent")
    assert evolve(source, sent).balance == 700
    assert evolve(target, received).balance == 300


def test_a_transfer_to_the_same_account_is_refused_before_anything_else() -> None:
    unknown = initial_state(ACC)
    with pytest.raises(SameAccountTransfer):
        decide_transfer(unknown, unknown, transfer(0, to_account=ACC, transaction_id="bad"))


@pytest.mark.parametrize(("missing", "side"), [(ACC, "source"), (OTHER, "target")])
def test_a_transfer_needs_both_accounts_to_exist(missing: str, side: str) -> None:
    source = initial_state(ACC) if side == "source" else given(opened(), deposited(1000))
    target = initial_state(OTHER) if side == "target" else given(opened(OTHER), account_id=OTHER)
    with pytest.raises(AccountNotFound) as refused:
        decide_transfer(source, target, transfer())
    assert refused.value.account_id == missing


def test_an_unknown_source_is_reported_before_an_unknown_target() -> None:
    with pytest.raises(AccountNotFound) as refused:
        decide_transfer(initial_state(ACC), initial_state(OTHER), transfer())
    assert refused.value.account_id == ACC


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_transfer_from_or_to_a_closed_account_is_refused(side: str) -> None:
    source = given(opened(), deposited(1000), *([closed()] if side == "source" else []))
    target = given(opened(OTHER), *([closed(OTHER)] if side == "target" else []), account_id=OTHER)
    with pytest.raises(errors.AccountClosed) as refused:
        decide_transfer(source, target, transfer())
    assert refused.value.account_id == (ACC if side == "source" else OTHER)


def test_a_transfer_between_currencies_is_refused() -> None:
    source = given(opened(currency="EUR"), deposited(1000))
    target = given(opened(OTHER, currency="USD"), account_id=OTHER)
    with pytest.raises(CurrencyMismatch, match=r"EUR.*USD"):
        decide_transfer(source, target, transfer())


def test_a_transfer_may_use_the_overdraft_of_the_source_but_not_beyond() -> None:
    source = given(opened(overdraft_limit=200), deposited(100))
    target = given(opened(OTHER), account_id=OTHER)

    sent, _ = decide_transfer(source, target, transfer(300))
    assert evolve(source, sent).balance == -200
    with pytest.raises(InsufficientFunds):
        decide_transfer(source, target, transfer(301))


def test_a_transfer_may_not_take_the_target_beyond_the_int64_maximum() -> None:
    source = given(opened(), deposited(1000))
    target = given_balance(INT64_MAX - 99, account_id=OTHER)
    assert decide_transfer(source, target, transfer(99))
    with pytest.raises(BalanceOutOfRange):
        decide_transfer(source, target, transfer(100))


def test_the_accounts_of_a_transfer_are_validated_by_field() -> None:
    with pytest.raises(InvalidAccountId) as refused:
        decide_transfer(initial_state("a b"), initial_state(OTHER), transfer(from_account="a b"))
    assert refused.value.field == "from_account"
    with pytest.raises(InvalidAccountId) as refused:
        decide_transfer(initial_state(ACC), initial_state(""), transfer(to_account=""))
    assert refused.value.field == "to_account"


def test_decide_does_not_take_a_transfer() -> None:
    with pytest.raises(TypeError, match="decide_transfer"):
        decide(given(opened()), transfer())  # type: ignore[arg-type]


def test_deciding_a_command_on_the_state_of_another_account_is_a_bug() -> None:
    with pytest.raises(ValueError, match="acc-2"):
        decide(given(opened()), deposit(account_id=OTHER))
    with pytest.raises(ValueError):
        decide_transfer(given(opened(OTHER), account_id=OTHER), given(opened()), transfer())


# State


def test_a_new_account_does_not_exist_and_is_empty() -> None:
    assert initial_state(ACC) == Account(ACC, False, "", 0, None, 0, False, 0)


def test_the_version_counts_the_events_folded() -> None:
    events: list[Event] = [
        opened(),
        deposited(10),
        withdrawn(3),
        TransferSent(ACC, TX, OTHER, 7, None),
        TransferReceived(ACC, TX, OTHER, 2, None),
        withdrawn(2),
        closed(),
    ]
    account = fold(ACC, events)
    assert (account.version, account.balance, account.closed) == (7, 0, True)


# Errors and money


ERRORS: list[tuple[type[DomainError], str, int]] = [
    (AccountNotFound, "account-not-found", 404),
    (AccountExists, "account-exists", 409),
    (errors.AccountClosed, "account-closed", 409),
    (InsufficientFunds, "insufficient-funds", 409),
    (BalanceNotZero, "balance-not-zero", 409),
    (CurrencyMismatch, "currency-mismatch", 409),
    (BalanceOutOfRange, "balance-out-of-range", 409),
    (SameAccountTransfer, "same-account-transfer", 422),
    (InvalidCommand, "invalid-command", 422),
    (InvalidAmount, "invalid-amount", 422),
    (InvalidCurrency, "invalid-currency", 422),
    (InvalidOverdraftLimit, "invalid-overdraft-limit", 422),
    (InvalidAccountId, "invalid-account-id", 422),
    (InvalidTransactionId, "invalid-transaction-id", 422),
    (InvalidReference, "invalid-reference", 422),
    (InvalidOwner, "invalid-owner", 422),
    (errors.InvalidExpiry, "invalid-expires-at", 422),
    (errors.TransferNotFound, "transfer-not-found", 404),
    (errors.TransferNotPending, "transfer-not-pending", 409),
    (errors.AmountExceedsHold, "amount-exceeds-hold", 422),
    (errors.PendingTransfers, "pending-transfers", 409),
    (errors.TransactionNotFound, "transaction-not-found", 404),
    (errors.AlreadyReversed, "already-reversed", 409),
    (errors.NotReversible, "not-reversible", 409),
    (errors.TransferPending, "transfer-pending", 409),
    (errors.ReversalBlocked, "reversal-blocked", 409),
    (errors.TransactionIdInUse, "transaction-id-in-use", 409),
]


@pytest.mark.parametrize(
    ("error", "code", "status"), ERRORS, ids=lambda e: getattr(e, "__name__", None)
)
def test_every_error_has_a_stable_code_a_status_and_a_raised_when_docstring(
    error: type[DomainError], code: str, status: int
) -> None:
    assert (error.code, error.status) == (code, status)
    assert error.__doc__ is not None and error.__doc__.startswith("Raised when")
    assert error.title


def test_the_codes_of_errors_are_unique() -> None:
    codes = [code for _, code, _ in ERRORS]
    assert len(codes) == len(set(codes))
    assert {error for error, _, _ in ERRORS} >= set(DomainError.__subclasses__())


def test_bad_values_are_invalid_commands() -> None:
    for error in (
        InvalidAmount,
        InvalidCurrency,
        InvalidOverdraftLimit,
        InvalidAccountId,
        InvalidReference,
        InvalidOwner,
    ):
        assert issubclass(error, InvalidCommand)


def test_error_messages_do_not_echo_huge_values_whole() -> None:
    with pytest.raises(InvalidReference) as refused:
        decide(given(opened()), deposit(reference="x" * 100_000))
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("balance", [INT64_MIN, -1, 0, INT64_MAX])
def test_balances_within_the_signed_64_bit_range_are_accepted(balance: int) -> None:
    assert check_balance(balance) == balance


@pytest.mark.parametrize("balance", [INT64_MIN - 1, INT64_MAX + 1])
def test_balances_outside_the_signed_64_bit_range_are_refused(balance: int) -> None:
    with pytest.raises(BalanceOutOfRange):
        check_balance(balance)


def test_the_currencies_are_the_active_iso_4217_codes() -> None:
    assert 170 <= len(CURRENCIES) <= 185
    assert {"USD", "EUR", "GBP", "JPY", "CHF", "CNY", "INR", "BRL", "XAU", "XDR"} <= CURRENCIES
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in CURRENCIES)
    assert not {"HRK", "DEM", "FRF", "ZWL"} & CURRENCIES
