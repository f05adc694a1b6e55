"""HTTP connections that cannot hold a worker: a deadline to send a request, bounded headers.

Uvicorn times out idle keep-alive connections (`timeout_keep_alive`), but nothing bounds the
time a client takes to *send* a request, nor (with httptools) the size of its headers: 3,000
connections that never finished their headers were all open after 31 s (slowloris), and one
256 MiB header took 136 s of the only event loop. This protocol adds what is missing:

* **A request deadline.** From the moment a connection opens, or the first byte of a further
  request on it, the client has `request_timeout` seconds to send the whole request (headers
  and body); otherwise it is answered `408 Request Timeout` (plain text, as uvicorn answers
  malformed requests) and closed. The deadline is lifted once the request is in, so long
  responses (Server-Sent Events) are never cut; while the app has not yet read a body the
  server paused reading for, the client is not blamed and the deadline is extended.
* **Bounded headers.** The request line and headers together may take `max_header_bytes`
  and hold `max_headers` fields; past either the answer is `431 Request Header Fields Too
  Large` and the connection is closed, before the app sees anything. The bytes are counted
  before they reach the parser, so a huge header costs no more than the bound.

Everything else is uvicorn's `HttpToolsProtocol` unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_HEADERS = 100


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request we refuse."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline and bounded headers (module doc).
    Configure a subclass with `guarded_protocol`."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None

    # -- the deadline --------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._in_headers and self.flow.read_paused:
            self._arm()  # the app has not read the body yet: the client is not late
            return
        if self.cycle is None or self.cycle.response_complete:
            self._answer(408, "Request timeout: send the whole request sooner.")
        else:
            self.transport.close()  # a body too slow: the app sees the client leave

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        super().on_message_complete()

    # -- bounded headers -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            room = self.max_header_bytes - self._header_bytes
            if len(data) > room:
                self._header_bytes = self.max_header_bytes
                super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self._in_headers and self._header_bytes >= self.max_header_bytes:
                    self._answer(431, "Request header fields too large.")
                    return
                self.data_received(data[room:])  # the body, or a further request
                return
            self._header_bytes += len(data)
        super().data_received(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = (431, "Too many request header fields.")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # The parser reports a refusal from a callback as a parse error: answer it as such.
        refusal, self._refusal = self._refusal, None
        if refusal is not None:
            self._answer(*refusal)
        else:
            super().send_400_response(msg)

    def _answer(self, status: int, text: str) -> None:
        """A plain-text answer that closes the connection (uvicorn's own form for a 400)."""
        body = text.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def guarded_protocol(
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`) with these bounds."""
    if request_timeout <= 0 or max_header_bytes < 1024 or max_headers < 8:
        raise ValueError("request_timeout > 0, max_header_bytes >= 1024, max_headers >= 8")
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "request_timeout": request_timeout,
            "max_header_bytes": max_header_bytes,
            "max_headers": max_headers,
        },
    )
