"""Appends on the wire between the stream client and the stream service: the JSON bodies the
client sends for `NewEvent`/`StreamAppend`, and what an answer to an append means (an
`AppendResult`, or one of the typed errors of stream_errors.py)."""

from __future__ import annotations

from typing import Any

from eventledger.eventstore.records import AppendResult, NewEvent, StreamAppend, StreamState
from eventledger.services.transaction.stream_errors import (
    DuplicateEventId,
    UnexpectedResponse,
    WrongExpectedVersion,
)


def expected(value: int | StreamState) -> int | str:
    return value.value if isinstance(value, StreamState) else value


def event_body(event: NewEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "type": event.type,
        "schema_version": event.schema_version,
        "data": dict(event.data),
        "metadata": dict(event.metadata),
    }


def append_body(append: StreamAppend) -> dict[str, Any]:
    return {
        "stream": append.stream,
        "expected_version": expected(append.expected_version),
        "events": [event_body(e) for e in append.events],
    }


def problem_type(body: Any) -> object:
    return body.get("type") if isinstance(body, dict) else None


def append_result(body: Any, *, replayed: bool) -> AppendResult:
    try:
        return AppendResult(
            stream=str(body["stream"]),
            first_version=int(body["first_version"]),
            last_version=int(body["last_version"]),
            positions=tuple(int(p) for p in body["positions"]),
            replayed=replayed,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnexpectedResponse(f"malformed append result: {exc}", status=200) from exc


def raise_for_append(status: int, body: Any) -> None:
    """Return if `status` is an append's success (200 replayed, 201 written), else raise the
    typed error its problem document `body` names."""
    if status in (200, 201):
        return
    problem = body if isinstance(body, dict) else {}
    kind = problem_type(body)
    detail = str(problem.get("detail") or problem.get("title") or f"status {status}")
    if status == 409 and kind == "wrong-expected-version":
        actual = problem.get("actual_version")
        raise WrongExpectedVersion(
            detail,
            stream=problem.get("stream"),
            actual_version=actual if type(actual) is int else None,
        )
    if status == 409 and kind == "duplicate-event-id":
        raise DuplicateEventId(detail)
    raise UnexpectedResponse(f"append answered {status} {kind}: {detail}", status=status)
