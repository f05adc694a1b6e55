"""What the client raises: one class per problem `type`, transport failures apart.

    EventLedgerError                 everything below
    ├── ProblemError                 a service answered with a problem document (status, type,
    │   │                            title, detail, problem: the whole document)
    │   ├── ValidationError          400/422: a bad request (validation-error, invalid-*, …)
    │   │   ├── IdempotencyKeyReused     the key was bound to another request body
    │   │   ├── SameAccountTransfer      from and to are the same account
    │   │   └── AmountExceedsHold        posting more than a pending transfer holds
    │   ├── Unauthenticated          401: no valid token
    │   ├── Forbidden                403: the token lacks a scope (or a foreign Origin)
    │   ├── NotFound                 404
    │   │   ├── AccountNotFound
    │   │   ├── StreamNotFound
    │   │   └── TransferNotFound         no pending transfer has this id
    │   ├── Conflict                 409: the rules refused it; nothing was written
    │   │   ├── AccountExists
    │   │   ├── AccountClosed
    │   │   ├── InsufficientFunds
    │   │   ├── CurrencyMismatch
    │   │   ├── BalanceNotZero
    │   │   ├── BalanceOutOfRange
    │   │   ├── TransferNotPending       already posted, voided or expired (`transfer_status`)
    │   │   ├── PendingTransfers         closing an account that is party to holds
    │   │   ├── WrongExpectedVersion     a stream append whose expected version is stale
    │   │   └── NotHaltedHere            skip/park of a position the read model is not at
    │   ├── RateLimited              429 (retried while `Retry-After` is short)
    │   └── Unavailable              503 (retried while `Retry-After` is short)
    │       ├── NotCaughtUp              `min_position` not applied within the wait
    │       └── Rebuilding               the read model is replaying the log
    ├── TransportError               no usable answer: cannot connect, timed out, connection lost
    │                                (`maybe_applied`: a command may have been written: retry it
    │                                with the same `idempotency_key`, which is always safe)
    └── UnexpectedResponse           an answer that is not what the API promises (not JSON, …)

A problem is matched by its `type` (the last path segment, so a URI type works too), then by
its status, so a new type of a known status still lands in the right family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EventLedgerError(Exception):
    """Base of everything this client raises; `idempotency_key` is the key of the command
    that failed (send it again with that key to learn its outcome safely)."""

    idempotency_key: str | None = None


class ProblemError(EventLedgerError):
    """Raised when a service answers with an error status and (usually) a problem document."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type = str(problem.get("type") or "about:blank")
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        super().__init__(self.line)

    @property
    def line(self) -> str:
        """`title: detail` (or the title alone): one line for a human."""
        if self.detail and self.detail != self.title:
            return f"{self.title}: {self.detail}"
        return self.title


class ValidationError(ProblemError):
    """Raised when the request is malformed or a value is invalid (400/422); `errors` names
    the fields when the service did."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


class IdempotencyKeyReused(ValidationError):
    """Raised when an Idempotency-Key is sent again with a different request body."""


class SameAccountTransfer(ValidationError):
    """Raised when a transfer names the same account as source and destination."""


class Unauthenticated(ProblemError):
    """Raised when no valid bearer token was presented (401)."""


class Forbidden(ProblemError):
    """Raised when the token lacks the scope the operation needs (403)."""


class NotFound(ProblemError):
    """Raised when the resource does not exist (404)."""


class AccountNotFound(NotFound):
    """Raised when the account does not exist (or this read model has not seen it yet: read
    with `min_position` to be sure)."""


class StreamNotFound(NotFound):
    """Raised when a stream has no events."""


class Conflict(ProblemError):
    """Raised when the current state refuses the command (409); nothing was written."""


class AccountExists(Conflict):
    """Raised when opening an account whose id is taken."""


class AccountClosed(Conflict):
    """Raised when money is moved on a closed account."""


class InsufficientFunds(Conflict):
    """Raised when a withdrawal or transfer would take the balance below -overdraft_limit."""


class CurrencyMismatch(Conflict):
    """Raised when a transfer joins accounts of different currencies."""


class BalanceNotZero(Conflict):
    """Raised when closing an account whose balance is not 0."""


class BalanceOutOfRange(Conflict):
    """Raised when a balance would leave the signed 64-bit range."""


class WrongExpectedVersion(Conflict):
    """Raised when a stream append expected another version; `problem` has the actual one."""


class NotHaltedHere(Conflict):
    """Raised when skip/park names a position the read model is not halted at."""


class RateLimited(ProblemError):
    """Raised when the service rate-limits the caller (429) longer than the client waits."""


class Unavailable(ProblemError):
    """Raised when a service cannot answer now (503) and retrying did not help in time."""


class NotCaughtUp(Unavailable):
    """Raised when the read model did not apply `min_position` within its wait."""


class Rebuilding(Unavailable):
    """Raised while the read model is rebuilt (it refuses reads until it has caught up)."""


class TransportError(EventLedgerError):
    """Raised when a service cannot be reached, times out or drops the connection."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        url: str,
        maybe_applied: bool = False,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key
        self.service = service
        self.url = url
        self.maybe_applied = maybe_applied


class UnexpectedResponse(EventLedgerError):
    """Raised when an answer is not what the API promises (not JSON, a missing field…)."""


class AmountExceedsHold(ValidationError):
    """Raised when posting more than a pending transfer holds."""


class TransferNotFound(NotFound):
    """Raised when posting, voiding or reading a two-phase transfer that does not exist."""


class TransferNotPending(Conflict):
    """Raised when posting or voiding a transfer that is no longer pending;
    `transfer_status` says how it ended (posted, voided or expired)."""

    @property
    def transfer_status(self) -> str:
        return str(self.problem.get("transfer_status") or "")


class PendingTransfers(Conflict):
    """Raised when closing an account that is party to pending transfers."""


class RebuildInProgress(Conflict):
    """Raised when a rebuild is asked for while a blue/green rebuild goes on."""


class NotRebuilding(Conflict):
    """Raised when cancelling a blue/green rebuild and none is in progress."""


_BY_TYPE: dict[str, type[ProblemError]] = {
    "amount-exceeds-hold": AmountExceedsHold,
    "transfer-not-found": TransferNotFound,
    "transfer-not-pending": TransferNotPending,
    "pending-transfers": PendingTransfers,
    "validation-error": ValidationError,
    "idempotency-key-reused": IdempotencyKeyReused,
    "same-account-transfer": SameAccountTransfer,
    "unauthenticated": Unauthenticated,
    "forbidden": Forbidden,
    "account-not-found": AccountNotFound,
    "stream-not-found": StreamNotFound,
    "account-exists": AccountExists,
    "account-closed": AccountClosed,
    "insufficient-funds": InsufficientFunds,
    "currency-mismatch": CurrencyMismatch,
    "balance-not-zero": BalanceNotZero,
    "balance-out-of-range": BalanceOutOfRange,
    "wrong-expected-version": WrongExpectedVersion,
    "not-halted-here": NotHaltedHere,
    "rate-limited": RateLimited,
    "not-caught-up": NotCaughtUp,
    "rebuilding": Rebuilding,
    "rebuild-in-progress": RebuildInProgress,
    "not-rebuilding": NotRebuilding,
}
_BY_STATUS: dict[int, type[ProblemError]] = {
    400: ValidationError,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def problem_error(status: int, problem: Mapping[str, Any]) -> ProblemError:
    """The exception for a problem document: by its `type`, else by its status."""
    slug = str(problem.get("type") or "").rstrip("/").rsplit("/", 1)[-1]
    cls = _BY_TYPE.get(slug) or _BY_STATUS.get(status) or ProblemError
    return cls(status, problem)
