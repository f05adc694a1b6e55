"""Why the domain refuses a command: one exception per rule, each with a stable slug.

`code` is the problem `type` slug the services answer with, `status` the HTTP status they
map it to, `title` the short, constant problem title; the message (`detail`) is for humans.

    DomainError
    ├── AccountNotFound            404 account-not-found
    ├── AccountExists              409 account-exists
    ├── AccountClosed              409 account-closed
    ├── InsufficientFunds          409 insufficient-funds
    ├── BalanceNotZero             409 balance-not-zero
    ├── CurrencyMismatch           409 currency-mismatch
    ├── BalanceOutOfRange          409 balance-out-of-range
    ├── SameAccountTransfer        422 same-account-transfer
    ├── TransactionNotFound        404 transaction-not-found
    ├── AlreadyReversed            409 already-reversed      (`reversed_by` names the reversal)
    ├── NotReversible              409 not-reversible        (a reversal; a voided hold)
    ├── TransferPending            409 transfer-pending      (a hold not yet posted or voided)
    ├── TransferNotFound           404 transfer-not-found   (no such pending transfer)
    ├── TransferNotPending         409 transfer-not-pending (posted, voided or expired)
    ├── AmountExceedsHold          422 amount-exceeds-hold  (a post above the held amount)
    ├── PendingTransfers           409 pending-transfers    (closing with holds open)
    └── InvalidCommand             422 invalid-command      (a bad value; `field` names it)
        ├── InvalidAmount              invalid-amount
        ├── InvalidCurrency            invalid-currency
        ├── InvalidOverdraftLimit      invalid-overdraft-limit
        ├── InvalidAccountId           invalid-account-id
        ├── InvalidTransactionId       invalid-transaction-id
        ├── InvalidReference           invalid-reference
        ├── InvalidOwner               invalid-owner
        └── InvalidExpiry              invalid-expires-at

    InvalidAccountEvent            an event that is no valid next event of its account's
                                   stream (`validity`); not a refusal of a command: the
                                   stream service answers 422 invalid-account-event, readers
                                   halt, the command side refuses to decide on it

The event `AccountClosed` (in `events`) shares its name with the error; `AccountClosedError`
is an alias of the error for modules that need both.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """Raised when a command breaks a rule of the domain; never for a bug or an outage."""

    code: ClassVar[str] = "domain-error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "The command breaks a rule of the ledger"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AccountNotFound(DomainError):
    """Raised when a command names an account that was never opened."""

    code = "account-not-found"
    status = 404
    title = "Account not found"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist")
        self.account_id = account_id


class AccountExists(DomainError):
    """Raised when opening an account whose id is already taken (open or closed)."""

    code = "account-exists"
    status = 409
    title = "Account already exists"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} already exists")
        self.account_id = account_id


class AccountClosed(DomainError):
    """Raised when a command would move money on, or close again, a closed account."""

    code = "account-closed"
    status = 409
    title = "Account is closed"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is closed")
        self.account_id = account_id


AccountClosedError = AccountClosed


class InsufficientFunds(DomainError):
    """Raised when a withdrawal or transfer would take the balance below -overdraft_limit."""

    code = "insufficient-funds"
    status = 409
    title = "Insufficient funds"

    def __init__(
        self,
        account_id: str,
        *,
        balance: int,
        amount: int,
        overdraft_limit: int,
        pending_debits: int = 0,
    ) -> None:
        # The rule applies to what is available: the balance less the holds on it.
        available = balance - pending_debits
        held = f" ({pending_debits} of it on hold)" if pending_debits else ""
        super().__init__(
            f"account {account_id!r} has a balance of {balance}{held} and an overdraft limit "
            f"of {overdraft_limit}: taking {amount} would leave {available - amount} "
            f"available, below the lowest allowed balance of {-overdraft_limit}"
        )
        self.account_id = account_id
        self.balance = balance
        self.available = available
        self.amount = amount
        self.overdraft_limit = overdraft_limit


class BalanceNotZero(DomainError):
    """Raised when closing an account whose balance is not exactly zero."""

    code = "balance-not-zero"
    status = 409
    title = "Balance is not zero"

    def __init__(self, account_id: str, *, balance: int) -> None:
        super().__init__(f"account {account_id!r} can only be closed at balance 0, not {balance}")
        self.account_id = account_id
        self.balance = balance


class CurrencyMismatch(DomainError):
    """Raised when a transfer joins two accounts kept in different currencies."""

    code = "currency-mismatch"
    status = 409
    title = "Currencies differ"

    def __init__(
        self, from_account: str, from_currency: str, to_account: str, to_currency: str
    ) -> None:
        super().__init__(
            f"account {from_account!r} is in {from_currency} but account {to_account!r} "
            f"is in {to_currency}"
        )
        self.from_account = from_account
        self.from_currency = from_currency
        self.to_account = to_account
        self.to_currency = to_currency


class BalanceOutOfRange(DomainError):
    """Raised when a balance would leave the signed 64-bit range."""

    code = "balance-out-of-range"
    status = 409
    title = "Balance out of range"

    def __init__(self, balance: int, *, account_id: str | None = None) -> None:
        who = "a balance" if account_id is None else f"the balance of account {account_id!r}"
        super().__init__(f"{who} of {balance} would leave the signed 64-bit range [-2^63, 2^63-1]")
        self.account_id = account_id
        self.balance = balance


class SameAccountTransfer(DomainError):
    """Raised when a transfer names the same account as source and target."""

    code = "same-account-transfer"
    status = 422
    title = "Transfer to the same account"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"a transfer needs two different accounts, got {account_id!r} twice")
        self.account_id = account_id


class TransactionNotFound(DomainError):
    """Raised when reversing a transaction id that no account stream holds."""

    code = "transaction-not-found"
    status = 404
    title = "Transaction not found"

    def __init__(self, transaction_id: str) -> None:
        super().__init__(f"no account holds a transaction {transaction_id}")
        self.transaction_id = transaction_id


class AlreadyReversed(DomainError):
    """Raised when reversing a transaction that a reversal (`reversed_by`) already undid."""

    code = "already-reversed"
    status = 409
    title = "Transaction already reversed"

    def __init__(self, transaction_id: str, *, reversed_by: str) -> None:
        super().__init__(f"transaction {transaction_id} was already reversed by {reversed_by}")
        self.transaction_id = transaction_id
        self.reversed_by = reversed_by


class ReversalBlocked(DomainError):
    """Raised when the marker stream of a transaction's reversal holds something that is no
    reversal of it (written by another writer of the stream service, not by a reversal): the
    one-reversal guarantee rests on that stream, so none can be written."""

    code = "reversal-blocked"
    status = 409
    title = "Reversal blocked"

    def __init__(self, transaction_id: str, *, marker_stream: str) -> None:
        super().__init__(
            f"transaction {transaction_id} cannot be reversed: its marker stream "
            f"{marker_stream!r} holds an event that is no reversal of it (not written by this "
            "service); nothing was written. Move the money back with a new transaction, and "
            "find out who wrote to that stream"
        )
        self.transaction_id = transaction_id
        self.marker_stream = marker_stream


class NotReversible(DomainError):
    """Raised when reversing a transaction that cannot be undone: a reversal, or a two-phase
    transfer that was voided (it moved nothing)."""

    code = "not-reversible"
    status = 409
    title = "Transaction cannot be reversed"

    def __init__(self, transaction_id: str, why: str) -> None:
        super().__init__(f"transaction {transaction_id} cannot be reversed: {why}")
        self.transaction_id = transaction_id


class TransferPending(DomainError):
    """Raised when reversing a two-phase transfer that is still pending: post or void it."""

    code = "transfer-pending"
    status = 409
    title = "Transfer still pending"

    def __init__(self, transaction_id: str) -> None:
        super().__init__(
            f"transaction {transaction_id} is a two-phase transfer still pending: void it "
            "(or post it, then reverse it)"
        )
        self.transaction_id = transaction_id


class InvalidCommand(DomainError):
    """Raised when a value of a command is malformed or out of range; `field` names it."""

    code = "invalid-command"
    status = 422
    title = "Invalid command"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class InvalidAmount(InvalidCommand):
    """Raised when an amount is not an integer (bools and floats refused) in 1..2^53-1."""

    code = "invalid-amount"
    title = "Invalid amount"


class InvalidCurrency(InvalidCommand):
    """Raised when a currency is not an active ISO 4217 alphabetic code."""

    code = "invalid-currency"
    title = "Invalid currency"


class InvalidOverdraftLimit(InvalidCommand):
    """Raised when an overdraft limit is not an integer in 0..2^53-1."""

    code = "invalid-overdraft-limit"
    title = "Invalid overdraft limit"


class InvalidAccountId(InvalidCommand):
    """Raised when an account id is not 1-64 letters, digits, '_', '.', '-' led by a letter
    or digit."""

    code = "invalid-account-id"
    title = "Invalid account id"


class InvalidTransactionId(InvalidCommand):
    """Raised when a transaction id is not a UUID in canonical (lowercase, hyphenated) form."""

    code = "invalid-transaction-id"
    title = "Invalid transaction id"


class InvalidReference(InvalidCommand):
    """Raised when a reference is not a string of at most 256 characters without control,
    format (bidi, zero-width) or separator characters."""

    code = "invalid-reference"
    title = "Invalid reference"


class InvalidOwner(InvalidCommand):
    """Raised when an owner is not a string of at most 256 characters without control,
    format (bidi, zero-width) or separator characters."""

    code = "invalid-owner"
    title = "Invalid owner"


class InvalidExpiry(InvalidCommand):
    """Raised when a hold's `expires_at` is not an RFC 3339 UTC time (`...Z`), or is given
    for a transfer that is not pending."""

    code = "invalid-expires-at"
    title = "Invalid expiry"


class TransactionIdInUse(DomainError):
    """Raised when a hold's transaction id is already pending on one of its accounts (the
    guard's 'hold-twice' rule): in practice an Idempotency-Key reused for another hold."""

    code = "transaction-id-in-use"
    status = 409
    title = "Transaction id in use"

    def __init__(self, transaction_id: str, account_id: str) -> None:
        super().__init__(f"transfer {transaction_id} is already pending on account {account_id!r}")
        self.transaction_id = transaction_id
        self.account_id = account_id


class TransferNotFound(DomainError):
    """Raised when posting or voiding a pending transfer that the ledger does not hold: no
    two-phase transfer has this id (or its accounts do not hold it)."""

    code = "transfer-not-found"
    status = 404
    title = "Pending transfer not found"

    def __init__(self, transaction_id: str) -> None:
        super().__init__(f"there is no pending transfer {transaction_id!r}")
        self.transaction_id = transaction_id


class TransferNotPending(DomainError):
    """Raised when posting or voiding a pending transfer that is already posted, voided or
    expired (`status`): a hold has exactly one outcome."""

    code = "transfer-not-pending"
    status = 409
    title = "Transfer is not pending"

    def __init__(self, transaction_id: str, *, status: str) -> None:
        super().__init__(f"transfer {transaction_id!r} is no longer pending: it is {status}")
        self.transaction_id = transaction_id
        # Not `status`: that is the HTTP status of the class.
        self.transfer_status = status


class AmountExceedsHold(DomainError):
    """Raised when posting more than a pending transfer holds."""

    code = "amount-exceeds-hold"
    status = 422
    title = "Amount exceeds the hold"

    def __init__(self, transaction_id: str, *, amount: int, held: int) -> None:
        super().__init__(
            f"transfer {transaction_id!r} holds {held}: {amount} cannot be posted from it"
        )
        self.transaction_id = transaction_id
        self.amount = amount
        self.held = held


class PendingTransfers(DomainError):
    """Raised when closing an account that is a party to pending transfers."""

    code = "pending-transfers"
    status = 409
    title = "Account has pending transfers"

    def __init__(self, account_id: str, *, pending: int) -> None:
        super().__init__(
            f"account {account_id!r} is a party to {pending} pending transfer(s): post or "
            "void them before closing it"
        )
        self.account_id = account_id
        self.pending = pending


class InvalidAccountEvent(ValueError):
    """Raised when an event is not a valid next event of its account's stream: a value out of
    range, an unknown type or shape, an event out of place (before `AccountOpened`, after
    `AccountClosed`), or half of a transfer. `rule` is a stable slug naming the broken rule,
    `reason` the human explanation; `account_id` and `index` (the event's place in its
    append, when the check was given several) say which event, when known."""

    def __init__(
        self, rule: str, reason: str, *, account_id: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason
        self.account_id = account_id
        self.index = index
