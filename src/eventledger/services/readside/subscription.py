"""Following the stream service: the client side of `GET /events/subscribe`.

* `SSEParser` turns the bytes of the subscription into messages (`id`, `event`, `data`,
  comments, multi-line data, CR/LF/CRLF line ends), whatever the chunking.
* `StreamSubscription` follows the stream service over aiohttp and yields decoded events
  (`events`), or the events of each chunk read together (`pages`: what the runner takes); it
  reconnects with exponential backoff (capped at `max_delay`, 2 s) and resumes after the last
  event it yielded, so it catches up within seconds once the stream service is back.
* `envelopes.EnvelopeDecoder` decodes the envelopes (orjson, exact fallback to the stdlib).
* `fetch_head_position` asks the stream service's `/health` for the head of the log.

The projection runner (runner.py) is what consumes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.envelopes import EnvelopeDecoder

log = logging.getLogger(__name__)


# The message the stream service sends, `id: P` `event: T` `data: {...}`: read in one match.
# (An id with NUL is ignored by the specification: such a block goes line by line.)
_USUAL = re.compile(rb"id: ([^\n\x00]*)\nevent: ([^\n]*)\ndata: ([^\n]*)")


class SSEMessage(NamedTuple):
    """One message. A named tuple, not a frozen dataclass: one is made per event of a
    catch-up, and a frozen dataclass's `__init__` costs twice as much."""

    id: str | None  # the last event id seen on this connection
    event: str
    data: str


class SSEParser:
    """An incremental parser of the `text/event-stream` format (WHATWG HTML, 9.2)."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._started = False
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        if not chunk:
            return []
        if self._skip_lf:  # the previous chunk ended in CR: a LF now is the rest of a CRLF
            chunk = chunk.removeprefix(b"\n")
        self._skip_lf = chunk.endswith(b"\r")
        buffer = self._pending + chunk
        if not self._started and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._pending = buffer
                return []
            self._started = True
            buffer = buffer.removeprefix(b"\xef\xbb\xbf")
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Whole messages only: a message's lines are read once its blank line is here (the
        # lines of a block, then the blank line, are the lines in the order they came).
        blocks = buffer.split(b"\n\n")
        self._pending = blocks.pop()
        messages: list[SSEMessage] = []
        for block in blocks:
            # The usual message, `id: P` `event: T` `data: {...}`, in a few slices; any other
            # block line by line, as the specification reads it.
            usual = _USUAL.fullmatch(block) if not self._data and not self._event else None
            if usual is not None:
                ident, event, data = usual.groups()
                self._last_id = ident.decode("utf-8", "replace")
                messages.append(
                    SSEMessage(
                        self._last_id,
                        event.decode("utf-8", "replace") or "message",
                        data.decode("utf-8", "replace"),
                    )
                )
                continue
            for line in block.split(b"\n"):
                self._line(line, messages)
            self._line(b"", messages)
        return messages

    def _line(self, line: bytes, messages: list[SSEMessage]) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                messages.append(SSEMessage(self._last_id, self._event or "message", data))
            self._data = []
            self._event = ""
            return
        if line[0] == 0x3A:  # ":" starts a comment: the heartbeat
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message of the subscription that is not a valid event envelope."""

    position: int | None
    type: str
    reason: str


class StreamSubscription:
    """Follows `GET {stream_url}/events/subscribe?after=P`, reconnecting for ever.

    `connected` says whether a subscription response is open; `last_seen` is the highest
    position received (a lower bound of the stream service's head)."""

    def __init__(
        self,
        stream_url: str,
        session: aiohttp.ClientSession,
        *,
        min_delay: float = 0.05,
        max_delay: float = 2.0,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.url = stream_url.rstrip("/") + "/events/subscribe"
        self._session = session
        self._headers = {"Accept": "text/event-stream", **auth_headers(token)}
        self._refused: int | None = None  # the refusal last logged, to log it once
        self._min_delay = min_delay
        self._max_delay = max_delay
        # No total timeout: the response is endless. A silent peer (no heartbeat for
        # `read_timeout`) is treated as gone and the connection is opened again.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=connect_timeout,
            connect=connect_timeout,
            sock_read=read_timeout,
        )
        self.connected = False
        self.last_seen = 0
        self.last_error: str | None = None

    async def events(self, *, after: int) -> AsyncGenerator[RecordedEvent | Undecodable, None]:
        """Every event with a position above `after`, oldest first, then live; never ends."""
        async with aclosing(self.pages(after=after)) as pages:
            async for page in pages:
                for item in page:
                    yield item

    async def pages(self, *, after: int) -> AsyncGenerator[list[RecordedEvent | Undecodable], None]:
        """`events`, as they arrive: the events of each chunk read from the connection at
        once (never an empty list), so a consumer's cost per event stays small."""
        delay = self._min_delay
        while True:
            try:
                async for page in self._connection(after):
                    delay = self._min_delay
                    after = max(after, _last_position(page))
                    yield page
                self.last_error = "the stream service ended the subscription"
            except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                self.connected = False
            log.debug(
                "subscription to %s lost (%s); retrying in %.2fs", self.url, self.last_error, delay
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self._max_delay)

    async def _connection(
        self, after: int
    ) -> AsyncGenerator[list[RecordedEvent | Undecodable], None]:
        async with self._session.get(
            self.url,
            params={"after": str(after)},
            headers=self._headers,
            timeout=self._timeout,
        ) as response:
            if response.status in (401, 403) and self._refused != response.status:
                self._refused = response.status
                # A missing or wrong token is an operator's mistake, not a network hiccup: say
                # so where they look (the token itself is never logged).
                log.warning(
                    "the stream service at %s refused the subscription (HTTP %d): check the "
                    "token this service presents (EVENTLEDGER_STREAM_TOKEN or "
                    "--stream-token-file)",
                    self.url,
                    response.status,
                )
            if response.status != 200:
                raise ValueError(f"subscribe answered HTTP {response.status}")
            self.connected = True
            self.last_error = None
            self._refused = None
            parser = SSEParser()
            decoder = EnvelopeDecoder()
            async for chunk in response.content.iter_any():
                page: list[RecordedEvent | Undecodable] = []
                for message in parser.feed(chunk):
                    item = _decode(message, decoder)
                    if item.position is not None:
                        if item.position <= after:
                            continue  # already delivered before a reconnection
                        after = item.position
                    page.append(item)
                if page:
                    self.last_seen = max(self.last_seen, after)
                    yield page


def _last_position(page: list[RecordedEvent | Undecodable]) -> int:
    """The position of the last item of `page` that has one (they increase), else 0."""
    for item in reversed(page):
        if item.position is not None:
            return item.position
    return 0


def _decode(message: SSEMessage, decoder: EnvelopeDecoder) -> RecordedEvent | Undecodable:
    position = int(message.id) if message.id and message.id.isdigit() else None
    try:
        event = decoder.decode(message.data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Undecodable(position, message.event, f"undecodable envelope: {exc!r}")
    if position is not None and event.position != position:
        return Undecodable(position, event.type, f"SSE id {position} is not the event's position")
    return event


def auth_headers(token: str | None) -> dict[str, str]:
    """The `Authorization` header that presents `token` to the stream service (none without)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def fetch_head_position(
    session: aiohttp.ClientSession,
    stream_url: str,
    *,
    seconds: float = 0.5,
    token: str | None = None,
) -> int | None:
    """The stream service's `head_position` from its `/health`, or None if it does not answer."""
    try:
        async with session.get(
            stream_url.rstrip("/") + "/health",
            headers=auth_headers(token),
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            if response.status != 200:
                return None
            head = (await response.json()).get("head_position")
    except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError, AttributeError):
        return None
    return head if type(head) is int else None
