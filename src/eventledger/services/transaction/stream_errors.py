"""The typed failures of the stream client (stream_client.py), one class per way an answer of
the stream service can go wrong:

    StreamClientError
    ├── WrongExpectedVersion     409 wrong-expected-version: nothing written, `actual_version`
    ├── DuplicateEventId         409 duplicate-event-id: an id is stored elsewhere, nothing written
    ├── StreamUnavailable        connection refused, timeout, 5xx: retry later
    └── UnexpectedResponse       any other answer: a bug on one side or the other
"""

from __future__ import annotations


class StreamClientError(Exception):
    """Base class of every error this client raises."""


class WrongExpectedVersion(StreamClientError):
    """Raised when an append's expected version did not match; nothing was written."""

    def __init__(self, detail: str, *, stream: str | None, actual_version: int | None) -> None:
        super().__init__(detail)
        self.stream = stream
        self.actual_version = actual_version


class DuplicateEventId(StreamClientError):
    """Raised when an event id of an append is already stored at another place; nothing was
    written."""


class StreamUnavailable(StreamClientError):
    """Raised when the stream service cannot be reached, times out or answers 5xx. An append
    that raised this may or may not have been written."""


class UnexpectedResponse(StreamClientError):
    """Raised when the stream service answers something this client does not expect."""

    def __init__(self, detail: str, *, status: int) -> None:
        super().__init__(detail)
        self.status = status
