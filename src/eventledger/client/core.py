"""What both clients share, without I/O: the `Config`, a `Call` (one request and the reading
of its answer), the retry policy (`Attempts`), the SSE parser.

Retries (`Attempts`): a call is tried again after a connection error or a 503/429 answer, a
bounded number of times, waiting `Retry-After` when the service says (a wait longer than
`max_retry_wait` is not waited for: the error is raised at once). Only calls that are safe
to repeat are retried after the request may have been sent: reads, commands (their key makes
a repeat answer the first outcome) and appends (their event ids do the same); any other call
only when the connection could not even be opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import httpx

from eventledger.client import events as ev
from eventledger.client.errors import (
    TransportError,
    UnexpectedResponse,
    problem_error,
)

T = TypeVar("T")
Service = Literal["transaction", "accounting", "statistics", "stream"]

SERVICES: tuple[Service, ...] = ("transaction", "stream", "accounting", "statistics")
DEFAULT_URLS: dict[Service, str] = {
    "transaction": "http://127.0.0.1:8001",
    "stream": "http://127.0.0.1:8002",
    "accounting": "http://127.0.0.1:8003",
    "statistics": "http://127.0.0.1:8004",
}
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0)
RETRY_STATUSES = (429, 503)


@dataclass(frozen=True)
class Config:
    """Where the services are and how to talk to them; shared by both clients."""

    urls: Mapping[Service, str]
    token: str | None = field(repr=False)
    retries: int = 3
    max_retry_wait: float = 5.0

    @classmethod
    def make(
        cls,
        urls: Mapping[Service, str | None],
        token: str | None,
        retries: int,
        max_retry_wait: float,
    ) -> Config:
        """URLs given over the defaults; the token given, else EVENTLEDGER_TOKEN, else none."""
        resolved: dict[Service, str] = {}
        for service in SERVICES:
            url = urls.get(service) or DEFAULT_URLS[service]
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"the {service} URL must start with http:// or https://: {url!r}")
            resolved[service] = url.rstrip("/")
        if token is None:
            token = os.environ.get("EVENTLEDGER_TOKEN", "").strip() or None
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        return cls(resolved, token, retries, max_retry_wait)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reading of its answer."""

    service: Service
    method: str
    path: str
    read: Callable[[Any, httpx.Response], T]
    params: Mapping[str, str | int] = field(default_factory=dict)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    safe_to_repeat: bool = True  # may it be sent again after it may have arrived?
    key: str | None = None  # the Idempotency-Key of a command
    answers: tuple[int, ...] = ()  # error statuses that are an answer here, not a failure

    def result(self, response: httpx.Response) -> T:
        """The typed answer, or the problem raised as its exception."""
        if response.status_code >= 400 and response.status_code not in self.answers:
            raise problem_error(response.status_code, _problem(response))
        try:
            body = response.json() if response.content else None
        except ValueError as exc:
            raise UnexpectedResponse(
                f"the {self.service} service answered {self.method} {self.path} with "
                "something that is not JSON"
            ) from exc
        return self.read(body, response)


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    text = response.text.strip().replace("\n", " ")[:200]
    return {"status": response.status_code, "title": f"HTTP {response.status_code}", "detail": text}


class Attempts:
    """The retry policy of one call: how long to wait before the next try, or give up."""

    def __init__(self, call: Call[Any], config: Config) -> None:
        self.call = call
        self.config = config
        self.tries = 0
        self.maybe_sent = False

    def _backoff(self) -> float:
        return BACKOFF[min(self.tries, len(BACKOFF)) - 1]

    def after_response(self, response: httpx.Response) -> float | None:
        """The wait before trying again, or None: `call.result(response)` is the outcome."""
        self.tries += 1
        self.maybe_sent = True
        status = response.status_code
        if status not in RETRY_STATUSES or status in self.call.answers:
            return None
        if self.tries > self.config.retries:
            return None
        delay = _retry_after(response)
        if delay is None:
            return self._backoff()
        return delay if delay <= self.config.max_retry_wait else None

    def after_error(self, exc: httpx.TransportError, url: str) -> float:
        """The wait before trying again; raises `TransportError` when giving up."""
        self.tries += 1
        # A request that could not even connect was not sent: safe to send again.
        sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        self.maybe_sent = self.maybe_sent or sent
        if self.tries <= self.config.retries and (self.call.safe_to_repeat or not sent):
            return self._backoff()
        raise transport_error(self.call.service, url, exc, self.maybe_sent, self.call.key)


def transport_error(
    service: str, url: str, exc: httpx.TransportError, maybe_sent: bool, key: str | None
) -> TransportError:
    """What the last failure was; `maybe_sent`: whether any attempt may have arrived."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        message = f"cannot reach the {service} service at {url}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"the {service} service at {url} did not answer in time"
    else:
        message = f"lost the connection to the {service} service at {url}"
    return TransportError(
        message,
        service=service,
        url=url,
        maybe_applied=maybe_sent and key is not None,
        idempotency_key=key,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None  # the HTTP-date form is not used by us


# One event's data and metadata are at most 64 KiB; an event, or a line, past this is not
# from our stream service, and is refused rather than held in memory.
MAX_SSE_EVENT_BYTES = 4 * 1024 * 1024
SseEvent = tuple[str | None, str | None, str]


class SseParser:
    """A text/event-stream (WHATWG HTML) in, `(id, event, data)` out; comments skipped.
    Lines end in LF or CRLF (what our stream service writes)."""

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.event_type: str | None = None
        self.data: list[str] = []
        self._size = 0
        self._pending = bytearray()

    def feed_bytes(self, chunk: bytes) -> list[SseEvent]:
        """The events that `chunk` completes; bounded: a line or an event over
        `MAX_SSE_EVENT_BYTES` is `UnexpectedResponse`."""
        self._pending += chunk
        events: list[SseEvent] = []
        start = 0
        while (end := self._pending.find(b"\n", start)) >= 0:
            line = bytes(self._pending[start:end]).removesuffix(b"\r")
            start = end + 1
            done = self.feed(line.decode("utf-8", errors="replace"))
            if done is not None:
                events.append(done)
        del self._pending[:start]
        if len(self._pending) > MAX_SSE_EVENT_BYTES:
            raise UnexpectedResponse("the event stream sent a line longer than 4 MiB")
        return events

    def feed(self, line: str) -> SseEvent | None:
        """The `(id, event, data)` that `line` completes, if it completes one."""
        if line == "":
            self._size = 0
            done = (self.event_id, self.event_type, "\n".join(self.data)) if self.data else None
            self.event_type, self.data = None, []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._size += len(value) + 1
            if self._size > MAX_SSE_EVENT_BYTES:
                raise UnexpectedResponse("the event stream sent an event larger than 4 MiB")
            self.data.append(value)
        elif name == "event":
            self.event_type = value
        elif name == "id":
            self.event_id = value
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """`(id, event, data)` per event of a text/event-stream."""
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def sse_event(data: str) -> ev.RecordedEvent:
    """The envelope an SSE `data:` field carries."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise UnexpectedResponse("an SSE event whose data is not JSON") from exc
    return ev.RecordedEvent.from_json(body)


class Positioned(Protocol):
    @property
    def position(self) -> int: ...


class Shared:
    """What both clients hold besides their session: the config and a read floor."""

    config: Config
    floor: int

    def _min(self, min_position: int | None) -> int | None:
        """The `X-Min-Position` of a read: the one asked for, at least `consistent_with`'s."""
        value = max(min_position or 0, self.floor)
        return value or None

    @staticmethod
    def _position_of(result: Positioned | int) -> int:
        return result if isinstance(result, int) else int(result.position)


# How long a subscription waits before reconnecting after losing the connection, by failure
# in a row; an event received resets it. Past the last, the error is raised.
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
SSE_TIMEOUT = httpx.Timeout(10.0, connect=3.0, read=None)  # heartbeats come when idle
