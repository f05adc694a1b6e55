"""A small asynchronous client of the stream service (API.md, "Stream service") over aiohttp.

One `aiohttp.ClientSession` per client, so connections are pooled and kept alive: a command
costs one or two requests on warm connections. (httpx would cost about ten times the CPU per
request on this hot path.)

What it writes is `NewEvent`/`StreamAppend` and what it reads back is `RecordedEvent`/
`AppendResult`, the records of the event store, decoded from the stream service's JSON
envelope by `eventstore.codec`.

Concurrent appends share requests (coalescing.py: one `POST /appends` item per call, queued
while `max_in_flight` requests are out). Failures are typed (stream_errors.py, re-exported
here): StreamClientError, WrongExpectedVersion, DuplicateEventId, StreamUnavailable,
UnexpectedResponse.
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
from eventledger.services.stream.forwarding import RELAYED, WRITER_HEADER, writer_of
from eventledger.services.transaction.coalescing import (
    MAX_IN_FLIGHT,
    MAX_ITEMS,
    MAX_REQUEST_BYTES,
    AppendQueue,
)
from eventledger.services.transaction.stream_appends import (
    append_body,
    append_result,
    event_body,
    expected,
    problem_type,
    raise_for_append,
)
from eventledger.services.transaction.stream_errors import (
    DuplicateEventId,
    StreamClientError,
    StreamUnavailable,
    UnexpectedResponse,
    WrongExpectedVersion,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "KEEP_ALIVE_SECONDS",
    "MAX_IN_FLIGHT",
    "MAX_ITEMS",
    "MAX_REQUEST_BYTES",
    "PAGE_SIZE",
    "DuplicateEventId",
    "StreamClient",
    "StreamClientError",
    "StreamSlice",
    "StreamUnavailable",
    "UnexpectedResponse",
    "WrongExpectedVersion",
]

PAGE_SIZE = 1000
DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 2.0
KEEP_ALIVE_SECONDS = 3.0  # below the server's 5 s
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class StreamSlice:
    """Events of one stream, oldest first, and the stream's version when read (0: no stream)."""

    stream: str
    version: int
    events: tuple[RecordedEvent, ...]


class StreamClient:
    """The stream service seen from another service. Use as an async context manager, or
    call `open()` and `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        coalesce: bool = True,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_items: int = MAX_ITEMS,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if max_in_flight < 1 or max_items < 1 or max_request_bytes < 1:
            raise ValueError("max_in_flight, max_items and max_request_bytes must be >= 1")
        self.base_url = base_url.rstrip("/")
        # The stream instance that writes, when ours named one (WRITER_HEADER): POST /appends
        # go straight to it instead of through ours (services/stream/forwarding.py).
        self.writer_url: str | None = None
        # coalesce=False: one request per call on POST /streams/… and POST /batches.
        self.coalesce = coalesce
        self.max_in_flight = max_in_flight
        self.max_items = max_items
        self.max_request_bytes = max_request_bytes
        # The transaction service's own token (events:read, events:append); never logged.
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None
        self._appends = AppendQueue(
            self._post_appends,
            lambda: self._session is not None,
            max_in_flight=max_in_flight,
            max_items=max_items,
            max_request_bytes=max_request_bytes,
        )

    async def open(self) -> None:
        if self._session is None:
            # Idle connections are dropped before the stream service drops them (uvicorn's
            # keep-alive is 5 s, cli/serve.py): reusing one the server is closing fails the
            # request, and an append that fails so answers 503 with an unknown outcome.
            connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=KEEP_ALIVE_SECONDS)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await self._appends.close()
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

    @property
    def requests_sent(self) -> int:
        """POST /appends requests, for tests and benchmarks."""
        return self._appends.requests_sent

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
            if status == 404 and problem_type(body) == "stream-not-found":
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
        if status == 404 and problem_type(body) == "event-not-found":
            return None
        self._expect(status, body, 200)
        try:
            return from_envelope(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"malformed event: {exc}", status=status) from exc

    async def read_transaction(self, transaction_id: str) -> list[RecordedEvent]:
        """The events of account streams that carry this transaction id, oldest first
        (`GET /transactions/{id}/events`: the stream service's index, no scan)."""
        status, body = await self._request("GET", f"/transactions/{transaction_id}/events")
        self._expect(status, body, 200)
        try:
            return [from_envelope(e) for e in body["events"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"malformed events: {exc}", status=status) from exc

    async def forget(
        self, account_id: str, *, expected_version: int, event_id: UUID, authorization: str | None
    ) -> tuple[int, Any]:
        """`POST /admin/accounts/{id}/forget` (erasure.py of the stream service): its status
        and body. It needs scope `admin`, which this service's own token lacks: the caller's
        `authorization` (checked for `admin` here already) is presented instead, so the
        stream service checks the caller's right itself."""
        headers = {"Authorization": authorization} if authorization else None
        return await self._request(
            "POST",
            f"/admin/accounts/{quote(account_id, safe='')}/forget",
            json_body={"expected_version": expected_version, "event_id": str(event_id)},
            extra_headers=headers,
        )

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
        if self.coalesce:
            append = StreamAppend(stream, expected_version, tuple(events))
            (result,) = await self._append_item([append])
            return result
        body = {
            "expected_version": expected(expected_version),
            "events": [event_body(e) for e in events],
        }
        status, answer = await self._request(
            "POST", f"/streams/{quote(stream, safe='')}", json_body=body
        )
        raise_for_append(status, answer)
        return append_result(answer, replayed=status == 200)

    async def append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams atomically: all or nothing."""
        if self.coalesce:
            return await self._append_item(list(appends))
        body = {"appends": [append_body(a) for a in appends]}
        status, answer = await self._request("POST", "/batches", json_body=body)
        raise_for_append(status, answer)
        results = answer.get("results") if isinstance(answer, dict) else answer
        if not isinstance(results, list) or len(results) != len(appends):
            raise UnexpectedResponse(f"malformed batch result: {answer!r}"[:500], status=status)
        return [append_result(r, replayed=status == 200) for r in results]

    # -- coalescing ------------------------------------------------------------------------

    async def _append_item(self, appends: list[StreamAppend]) -> list[AppendResult]:
        """Send `appends` as one item of a `POST /appends` request, alone or with the calls
        queued with it; answer its results or raise what its outcome says."""
        if self._session is None:
            raise RuntimeError("the stream client is not open")
        item = _encode({"appends": [append_body(a) for a in appends]}).encode()
        status, answer = await self._appends.submit(item)
        if status in (200, 201):
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list) or len(results) != len(appends):
                raise UnexpectedResponse(f"malformed item result: {answer!r}"[:500], status=status)
            return [append_result(r, replayed=status == 200) for r in results]
        problem = answer.get("problem") if isinstance(answer, dict) else None
        if status >= 500:  # as a 5xx answer to a single append: written or not, unknown
            raise StreamUnavailable(
                f"stream service answered {status} {problem_type(problem)} for the append"
            )
        raise_for_append(status, problem)
        raise UnexpectedResponse(f"append item answered {status}", status=status)

    async def _post_appends(self, body: bytes) -> tuple[int, Any]:
        writer = self.writer_url
        if writer is not None:
            try:
                status, answer = await self._request("POST", "/appends", raw_body=body, base=writer)
                if status in RELAYED:
                    return status, answer
            except StreamUnavailable:
                pass
            # The writer went away, failed, or refused us (401/403: other tokens; 429): back
            # to our own stream instance, which appends itself or hands the request to
            # whoever writes now. Every event of ours has an id: if the writer did commit,
            # this is an idempotent re-send.
            if self.writer_url == writer:
                self.writer_url = None
        return await self._request("POST", "/appends", raw_body=body)

    # -- plumbing --------------------------------------------------------------------------

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
        raw_body: bytes | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
        extra_headers: Mapping[str, str] | None = None,
        base: str | None = None,
    ) -> tuple[int, Any]:
        """Send one request (to `base`, by default our stream instance); answer (status,
        parsed JSON body or None). Connection errors, timeouts and 5xx answers become
        StreamUnavailable. An answer naming the writing instance (WRITER_HEADER) sets
        `writer_url`."""
        base = base or self.base_url
        if self._session is None:
            raise RuntimeError("the stream client is not open")
        data: str | bytes | None = raw_body
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":"))
        headers = None if data is None else {"Content-Type": "application/json"}
        if extra_headers:
            headers = {**(headers or {}), **extra_headers}
        try:
            async with self._session.request(
                method,
                base + path,
                params=params,
                data=data,
                headers=headers,
                timeout=client_timeout or self._timeout,
            ) as response:
                raw = await response.read()
                status = response.status
                if (writer := response.headers.get(WRITER_HEADER)) is not None:
                    self.writer_url = writer_of(writer)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StreamUnavailable(
                f"stream service at {base} unreachable: {type(exc).__name__} {exc}"
            ) from exc
        if status >= 500:
            raise StreamUnavailable(f"stream service answered {status}")
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError as exc:
            raise UnexpectedResponse(f"answered {status} with non-JSON", status=status) from exc
