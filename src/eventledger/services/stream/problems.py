"""Store errors as problem documents: the one table, and the validation problems of this service.

EventStoreError          → problem
├── WrongExpectedVersion → 409 wrong-expected-version  (stream, expected_version, actual_version)
├── DuplicateEventId     → 409 duplicate-event-id      (event_id)
├── StreamNotFound       → 404 stream-not-found        (stream)
├── InvalidAppend        → 422 invalid-append
├── StoreUnavailable     → 503 store-unavailable       (Retry-After: 1)
│   └── StoreOutcomeUnknown → 503 outcome-unknown     (Retry-After: 1; retry with the same ids)
├── KeyConflict          → 503 store-unavailable       (personal data keys kept changing)
└── PersonalDataUnreadable → 500 personal-data-unreadable (a sealed value was altered)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from eventledger.eventstore.errors import (
    DuplicateEventId,
    EventStoreError,
    InvalidAppend,
    StoreOutcomeUnknown,
    StoreUnavailable,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventledger.eventstore.keys import KeyConflict
from eventledger.eventstore.pii import PersonalDataUnreadable
from eventledger.services.http import ProblemError, problem_response


def _wrong_version(exc: WrongExpectedVersion) -> ProblemError:
    return ProblemError(
        409,
        "wrong-expected-version",
        "Wrong expected version",
        str(exc),
        stream=exc.stream,
        expected_version=exc.expected,
        actual_version=exc.actual,
    )


def _duplicate(exc: DuplicateEventId) -> ProblemError:
    return ProblemError(
        409, "duplicate-event-id", "Duplicate event id", str(exc), event_id=str(exc.event_id)
    )


def _not_found(exc: StreamNotFound) -> ProblemError:
    return ProblemError(404, "stream-not-found", "Stream not found", str(exc), stream=exc.stream)


def _invalid(exc: InvalidAppend) -> ProblemError:
    return ProblemError(422, "invalid-append", "Invalid append", str(exc))


def _outcome_unknown(exc: StoreOutcomeUnknown) -> ProblemError:
    return ProblemError(
        503,
        "outcome-unknown",
        "Append outcome unknown",
        f"{exc}. The events may or may not be stored: send the same append again, with the "
        "same event ids, to settle it (it is then written, or answered as a replay).",
        headers={"Retry-After": "1"},
    )


def _unavailable(exc: StoreUnavailable | KeyConflict) -> ProblemError:
    return store_unavailable(str(exc))


def _unreadable(exc: PersonalDataUnreadable) -> ProblemError:
    # Not the caller's fault and not retryable: the stored text was altered (`eventledger
    # verify` names the position too).
    return ProblemError(
        500,
        "personal-data-unreadable",
        "Personal data unreadable",
        str(exc),
        event_id=str(exc.event_id),
    )


# The one table. Most specific classes first: the first isinstance match wins.
STORE_PROBLEMS: tuple[tuple[type[EventStoreError], Callable[[Any], ProblemError]], ...] = (
    (WrongExpectedVersion, _wrong_version),
    (DuplicateEventId, _duplicate),
    (StreamNotFound, _not_found),
    (InvalidAppend, _invalid),
    (StoreOutcomeUnknown, _outcome_unknown),
    (StoreUnavailable, _unavailable),
    (KeyConflict, _unavailable),
    (PersonalDataUnreadable, _unreadable),
)


def problem_for(exc: EventStoreError) -> ProblemError:
    for error_type, to_problem in STORE_PROBLEMS:
        if isinstance(exc, error_type):
            return to_problem(exc)
    return ProblemError(500, "internal-error", "Internal error", f"{type(exc).__name__}: {exc}")


def store_unavailable(detail: str = "the event store cannot be reached") -> ProblemError:
    return ProblemError(
        503,
        "store-unavailable",
        "Event store unavailable",
        detail,
        headers={"Retry-After": "1"},
    )


async def handle_store_error(_: Request, exc: Exception) -> Response:
    """The app's exception handler for every `EventStoreError` a route lets through."""
    assert isinstance(exc, EventStoreError)
    p = problem_for(exc)
    return problem_response(p.status, p.type, p.title, p.detail, p.headers or None, **p.extra)


def invalid_field(field: str, message: str) -> ProblemError:
    """A 422 validation problem for one field, shaped like the body validation problems."""
    return ProblemError(
        422,
        "validation-error",
        "Invalid request",
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def invalid_stream_name(stream: str) -> ProblemError:
    return ProblemError(
        422,
        "invalid-stream-name",
        "Invalid stream name",
        f"{stream[:200]!r} is not a stream name: 1-128 letters, digits, '_', '.', '-', "
        "starting with a letter or digit",
        errors=[{"field": "path.stream", "message": "invalid stream name"}],
    )
