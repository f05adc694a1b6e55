"""Why a command failed, as a problem document: the one table of this service.

DomainError              → its own `status` and `code` (404 account-not-found,
                           409 insufficient-funds, 422 invalid-amount, …)
InvalidIdempotencyKey    → 400 invalid-idempotency-key
IdempotencyKeyReused     → 422 idempotency-key-reused
StreamUnavailable        → 503 stream-unavailable      (Retry-After: 1)
TooMuchContention        → 503 too-much-contention     (Retry-After: 1)
StreamClientError (else) → 502 stream-error
InvalidAccountHistory    → 500 invalid-account-history (the stored events break the rules)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from eventledger.domain.errors import DomainError, InvalidCommand
from eventledger.services.http import ProblemError
from eventledger.services.transaction.accounts import InvalidAccountHistory
from eventledger.services.transaction.handlers import TooMuchContention
from eventledger.services.transaction.idempotency import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
)
from eventledger.services.transaction.stream_client import StreamClientError, StreamUnavailable

RETRY_AFTER = {"Retry-After": "1"}

log = logging.getLogger(__name__)

# Attributes of domain errors that are worth giving to a client, when the error has them.
_DOMAIN_EXTRAS = (
    "available",  # two-phase transfers: what the overdraft rule applied to
    "held",
    "pending",
    "transfer_status",
    "account_id",
    "balance",
    "amount",
    "overdraft_limit",
    "from_account",
    "from_currency",
    "to_account",
    "to_currency",
    "transaction_id",
    "reversed_by",
)


def _domain(exc: DomainError) -> ProblemError:
    extra: dict[str, Any] = {
        name: getattr(exc, name) for name in _DOMAIN_EXTRAS if hasattr(exc, name)
    }
    if isinstance(exc, InvalidCommand) and exc.field is not None:
        extra["errors"] = [{"field": exc.field, "message": exc.detail}]
    return ProblemError(exc.status, exc.code, exc.title, exc.detail, **extra)


def _bad_key(exc: InvalidIdempotencyKey) -> ProblemError:
    return ProblemError(400, "invalid-idempotency-key", "Invalid Idempotency-Key", str(exc))


def _reused(exc: IdempotencyKeyReused) -> ProblemError:
    return ProblemError(422, "idempotency-key-reused", "Idempotency-Key reused", str(exc))


def _unavailable(exc: StreamUnavailable) -> ProblemError:
    return ProblemError(
        503,
        "stream-unavailable",
        "Stream service unavailable",
        "the stream service cannot be reached or failed; the command may or may not have "
        "been written: retry it with the same Idempotency-Key, which is always safe",
        headers=RETRY_AFTER,
    )


def _contention(exc: TooMuchContention) -> ProblemError:
    return ProblemError(
        503, "too-much-contention", "Too much contention", str(exc), headers=RETRY_AFTER
    )


def _stream_error(exc: StreamClientError) -> ProblemError:
    return ProblemError(502, "stream-error", "Stream service error", str(exc)[:500])


def _invalid_history(exc: InvalidAccountHistory) -> ProblemError:
    # Not the client's fault, and not a retryable outage: the log holds an event that the
    # account rules refuse (the read models are halted at it too). Nothing was decided.
    log.error("%s: refusing to decide on it", exc)
    return ProblemError(
        500,
        "invalid-account-history",
        "Invalid account history",
        f"{exc}; the command was not decided on it and nothing was written",
        stream=exc.stream,
        version=exc.version,
        position=exc.position,
    )


# The one table. Most specific classes first: the first isinstance match wins.
PROBLEMS: tuple[tuple[type[Exception], Callable[[Any], ProblemError]], ...] = (
    (DomainError, _domain),
    (InvalidIdempotencyKey, _bad_key),
    (IdempotencyKeyReused, _reused),
    (StreamUnavailable, _unavailable),
    (TooMuchContention, _contention),
    (StreamClientError, _stream_error),
    (InvalidAccountHistory, _invalid_history),
)


def problem_for(exc: Exception) -> ProblemError | None:
    """The problem answering `exc`, or None when `exc` is not a failure this table knows."""
    if isinstance(exc, ProblemError):
        return exc
    for error_type, to_problem in PROBLEMS:
        if isinstance(exc, error_type):
            return to_problem(exc)
    return None
