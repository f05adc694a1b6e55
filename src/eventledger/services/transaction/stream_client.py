"""A small asynchronous client of the stream service (API.md, "Stream service") over aiohttp.

One `aiohttp.ClientSession` per client, so connections are pooled and kept alive: a command
costs one or two requests on warm connections. (httpx would cost about ten times the CPU per
request on this hot path.)

What it writes is `NewEvent`/`StreamAppend` and what it reads back is `RecordedEvent`/
`AppendResult`, the records of the event store, decoded from the stream service's JSON
envelope by `eventstore.codec`. Failures are typed:

    StreamClientError
    ├── WrongExpectedVersion     409 wrong-expected-version: nothing written, `actual_version`
    ├── DuplicateEventId         409 duplicate-event-id: an id is stored elsewhere, nothing written
    ├── StreamUnavailable        connection refused, timeout, 5xx: retry later
    └── UnexpectedResponse       any other answer: a bug on one side or the other
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote
from uuid import UUID

import aiohttp

from eventledger.eventstore.codec import from_envelope
from eventledger.eventstore.records import (
    AppendResult,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamState,
)

PAGE_SIZE = 1000
DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 2.0


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


@dataclass(frozen=True, slots=True)
class StreamSlice:
    """Events of one stream, oldest first, and the stream's version when read (0: no stream)."""

    stream: str
    version: int
    events: tuple[RecordedEvent, ...]


def _expected(value: int | StreamState) -> int | str:
    return value.value if isinstance(value, StreamState) else value


def _event_body(event: NewEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "type": event.type,
        "schema_version": event.schema_version,
        "data": dict(event.data),
        "metadata": dict(event.metadata),
    }


def _append_body(append: StreamAppend) -> dict[str, Any]:
    return {
        "stream": append.stream,
        "expected_version": _expected(append.expected_version),
        "events": [_event_body(e) for e in append.events],
    }


def _problem_type(body: Any) -> object:
    return body.get("type") if isinstance(body, dict) else None


def _append_result(body: Any, *, replayed: bool) -> AppendResult:
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


class StreamClient:
    """The stream service seen from another service. Use as an async context manager, or
    call `open()` and `close()`."""

    def __init__(
        self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The transaction service's own token (events:read, events:append); never logged.
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reading ---------------------------------------------------------------------------

    async def read_stream(
        self, stream: str, *, from_version: int = 1, to_version: int | None = None
    ) -> StreamSlice:
        """Every event of `stream` from `from_version` (up to `to_version`), all pages.
        A stream that does not exist reads as version 0 with no events."""
        events: list[RecordedEvent] = []
        version = 0
        start = max(from_version, 1)
        while True:
            limit = PAGE_SIZE if to_version is None else min(PAGE_SIZE, to_version - start + 1)
            if limit <= 0:
                break
            status, body = await self._request(
                "GET",
                f"/streams/{quote(stream, safe='')}",
                params={"from_version": str(start), "limit": str(limit)},
            )
            if status == 404 and _problem_type(body) == "stream-not-found":
                return StreamSlice(stream, 0, ())
            self._expect(status, body, 200)
            try:
                version = int(body["version"])
                page = [from_envelope(e) for e in body["events"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise UnexpectedResponse(f"malformed stream page: {exc}", status=status) from exc
            events.extend(page)
            if len(page) < limit or not page or page[-1].stream_version >= version:
                break
            start = page[-1].stream_version + 1
        return StreamSlice(stream, version, tuple(events))

    async def get_event(self, event_id: UUID) -> RecordedEvent | None:
        """The stored event with this id, or None."""
        status, body = await self._request("GET", f"/events/{event_id}")
        if status == 404 and _problem_type(body) == "event-not-found":
            return None
        self._expect(status, body, 200)
        try:
            return from_envelope(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"malformed event: {exc}", status=status) from exc

    async def health(self, *, within: float) -> dict[str, Any]:
        """The stream service's /health document; raises StreamUnavailable unless it is 200
        in less than `within` seconds."""
        status, body = await self._request(
            "GET", "/health", client_timeout=aiohttp.ClientTimeout(total=within)
        )
        if status != 200 or not isinstance(body, dict):
            raise StreamUnavailable(f"stream service health answered {status}")
        return body

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self, stream: str, *, expected_version: int | StreamState, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Append to one stream if it is at `expected_version`. `replayed` is True when the
        events were already stored there (nothing new written)."""
        body = {
            "expected_version": _expected(expected_version),
            "events": [_event_body(e) for e in events],
        }
        status, answer = await self._request(
            "POST", f"/streams/{quote(stream, safe='')}", json_body=body
        )
        self._raise_for_append(status, answer)
        return _append_result(answer, replayed=status == 200)

    async def append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams atomically: all or nothing."""
        body = {"appends": [_append_body(a) for a in appends]}
        status, answer = await self._request("POST", "/batches", json_body=body)
        self._raise_for_append(status, answer)
        results = answer.get("results") if isinstance(answer, dict) else answer
        if not isinstance(results, list) or len(results) != len(appends):
            raise UnexpectedResponse(f"malformed batch result: {answer!r}"[:500], status=status)
        return [_append_result(r, replayed=status == 200) for r in results]

    # -- plumbing --------------------------------------------------------------------------

    def _raise_for_append(self, status: int, body: Any) -> None:
        if status in (200, 201):
            return
        problem = body if isinstance(body, dict) else {}
        kind = _problem_type(body)
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

    @staticmethod
    def _expect(status: int, body: Any, wanted: int) -> None:
        if status != wanted or not isinstance(body, dict):
            raise UnexpectedResponse(f"answered {status}: {body!r}"[:500], status=status)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, Any]:
        """Send one request; answer (status, parsed JSON body or None). Connection errors,
        timeouts and 5xx answers become StreamUnavailable."""
        if self._session is None:
            raise RuntimeError("the stream client is not open")
        data = None if json_body is None else json.dumps(json_body, separators=(",", ":"))
        headers = None if data is None else {"Content-Type": "application/json"}
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                params=params,
                data=data,
                headers=headers,
                timeout=client_timeout or self._timeout,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StreamUnavailable(
                f"stream service at {self.base_url} unreachable: {type(exc).__name__} {exc}"
            ) from exc
        if status >= 500:
            raise StreamUnavailable(f"stream service answered {status}")
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError as exc:
            raise UnexpectedResponse(f"answered {status} with non-JSON", status=status) from exc
