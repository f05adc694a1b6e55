"""A small asynchronous client of the stream service (API.md, "Stream service") over aiohttp.

One `aiohttp.ClientSession` per client, so connections are pooled and kept alive: a command
costs one or two requests on warm connections. (httpx would cost about ten times the CPU per
request on this hot path.)

What it writes is `NewEvent`/`StreamAppend` and what it reads back is `RecordedEvent`/
`AppendResult`, the records of the event store, decoded from the stream service's JSON
envelope by `eventstore.codec`.

Concurrent appends share requests (coalescing): each `append()`/`append_batch()` is one item
of `POST /appends` (the stream service answers each item on its own). While no request is in
flight, a call is sent at once, alone: no latency is added at concurrency 1. While
`max_in_flight` requests are out, calls wait in a queue, and when one returns the queue
leaves as one request (at most `max_items` items, about `max_request_bytes`). So under load one
round trip, one parse and one group commit of the stream service serve many commands. Every
call still gets its own result or exception; a call cancelled while queued leaves the queue
unsent; a request that fails in transport fails each of its calls with StreamUnavailable.

Failures are typed:

    StreamClientError
    ├── WrongExpectedVersion     409 wrong-expected-version: nothing written, `actual_version`
    ├── DuplicateEventId         409 duplicate-event-id: an id is stored elsewhere, nothing written
    ├── StreamUnavailable        connection refused, timeout, 5xx: retry later
    └── UnexpectedResponse       any other answer: a bug on one side or the other
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
KEEP_ALIVE_SECONDS = 3.0  # below the server's 5 s
# Coalescing: two requests out keep the stream service's group commit fed (one commits while
# the next is parsed) without one caller's wait growing past about two round trips.
MAX_IN_FLIGHT = 2
MAX_ITEMS = 256  # the stream store's group commit takes at most 256 appends at once
MAX_REQUEST_BYTES = 512 * 1024  # well inside the stream service's 1 MiB bound on a body
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


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


@dataclass(eq=False, slots=True)
class _Queued:
    """One call waiting for its item's outcome: (status, the item's answer)."""

    body: bytes  # the item, encoded once, as it goes into the request
    outcome: asyncio.Future[tuple[int, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


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
        # coalesce=False: one request per call on POST /streams/… and POST /batches.
        self.coalesce = coalesce
        self.max_in_flight = max_in_flight
        self.max_items = max_items
        self.max_request_bytes = max_request_bytes
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()
        self.requests_sent = 0  # POST /appends requests, for tests and benchmarks
        # The transaction service's own token (events:read, events:append); never logged.
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None

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
            for task in list(self._senders):
                task.cancel()  # each fails its calls with StreamUnavailable
            await asyncio.gather(*self._senders, return_exceptions=True)
            while self._queue:
                self._fail(self._queue.popleft(), "the stream client was closed")
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
        if self.coalesce:
            return await self._append_item(list(appends))
        body = {"appends": [_append_body(a) for a in appends]}
        status, answer = await self._request("POST", "/batches", json_body=body)
        self._raise_for_append(status, answer)
        results = answer.get("results") if isinstance(answer, dict) else answer
        if not isinstance(results, list) or len(results) != len(appends):
            raise UnexpectedResponse(f"malformed batch result: {answer!r}"[:500], status=status)
        return [_append_result(r, replayed=status == 200) for r in results]

    # -- coalescing ------------------------------------------------------------------------

    async def _append_item(self, appends: list[StreamAppend]) -> list[AppendResult]:
        """Send `appends` as one item of a `POST /appends` request, alone or with the calls
        queued with it; answer its results or raise what its outcome says."""
        if self._session is None:
            raise RuntimeError("the stream client is not open")
        queued = _Queued(_encode({"appends": [_append_body(a) for a in appends]}).encode())
        if not self._queue and self._in_flight < self.max_in_flight:
            # Room, and nobody waiting: send it from this task, alone. No hand-over to a
            # sender task (27 µs a command at concurrency 1); cancelled, the request is.
            self._in_flight += 1
            try:
                await self._send([queued])
            except asyncio.CancelledError:
                if queued.outcome.done() and not queued.outcome.cancelled():
                    queued.outcome.exception()  # retrieved: nobody else will
                raise
            status, answer = queued.outcome.result()
        else:
            self._queue.append(queued)
            self._pump()
            try:
                status, answer = await queued.outcome
            except asyncio.CancelledError:
                # Cancelled while queued: leave the queue, unsent. (Once sent, the item's
                # outcome is the stream service's; nobody waits for it any more.)
                if queued in self._queue:
                    self._queue.remove(queued)
                raise
        if status in (200, 201):
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list) or len(results) != len(appends):
                raise UnexpectedResponse(f"malformed item result: {answer!r}"[:500], status=status)
            return [_append_result(r, replayed=status == 200) for r in results]
        problem = answer.get("problem") if isinstance(answer, dict) else None
        if status >= 500:  # as a 5xx answer to a single append: written or not, unknown
            raise StreamUnavailable(
                f"stream service answered {status} {_problem_type(problem)} for the append"
            )
        self._raise_for_append(status, problem)
        raise UnexpectedResponse(f"append item answered {status}", status=status)

    def _pump(self) -> None:
        """Start requests for the queue while fewer than `max_in_flight` are out."""
        while self._queue and self._in_flight < self.max_in_flight and self._session is not None:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    def _take(self) -> list[_Queued]:
        """The head of the queue, up to `max_items` items and `max_request_bytes` (at least
        one item); calls that gave up meanwhile are dropped."""
        batch: list[_Queued] = []
        size = 0
        while self._queue and len(batch) < self.max_items:
            queued = self._queue[0]
            if queued.outcome.done():
                self._queue.popleft()
                continue
            if batch and size + len(queued.body) > self.max_request_bytes:
                break
            size += len(queued.body) + 1
            batch.append(self._queue.popleft())
        return batch

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            body = b'{"items":[' + b",".join(q.body for q in batch) + b"]}"
            self.requests_sent += 1
            try:
                status, answer = await self._request("POST", "/appends", raw_body=body)
            except StreamClientError as exc:
                for queued in batch:
                    self._fail(queued, str(exc), kind=type(exc), status=_status_of(exc))
                return
            items = answer.get("items") if isinstance(answer, dict) else None
            if status != 200 or not isinstance(items, list) or len(items) != len(batch):
                # The request was refused whole (a 4xx problem) or answered nonsense.
                problem = answer if isinstance(answer, dict) else {}
                detail = str(problem.get("detail") or f"{answer!r}"[:300])
                for queued in batch:
                    self._fail(
                        queued,
                        f"POST /appends answered {status}: {detail}",
                        kind=UnexpectedResponse,
                        status=status,
                    )
                return
            for queued, item in zip(batch, items, strict=True):
                item_status = item.get("status") if isinstance(item, dict) else None
                if type(item_status) is not int:
                    self._fail(queued, f"malformed item: {item!r}"[:500], kind=UnexpectedResponse)
                elif not queued.outcome.done():
                    queued.outcome.set_result((item_status, item))
        except asyncio.CancelledError:
            for queued in batch:
                self._fail(queued, "the stream client was closed with the request out")
            raise
        finally:
            self._in_flight -= 1
            self._pump()

    @staticmethod
    def _fail(
        queued: _Queued,
        detail: str,
        *,
        kind: Callable[..., StreamClientError] = StreamUnavailable,
        status: int = 0,
    ) -> None:
        # A fresh exception per call: one object raised in many tasks would mix tracebacks.
        if not queued.outcome.done():
            exc = kind(detail, status=status) if kind is UnexpectedResponse else kind(detail)
            queued.outcome.set_exception(exc)

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
        raw_body: bytes | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request; answer (status, parsed JSON body or None). Connection errors,
        timeouts and 5xx answers become StreamUnavailable."""
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


def _status_of(exc: StreamClientError) -> int:
    return exc.status if isinstance(exc, UnexpectedResponse) else 0
