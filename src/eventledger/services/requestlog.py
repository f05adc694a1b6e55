"""The request id, and one log line per request: what an operator follows a request by.

`RequestLog` is a pure ASGI middleware wrapped around everything else of a service (outside
the auth and browser guards too, so a refused request is logged and answered with its id):

* **`X-Request-ID`**: a client's value is taken when it is 1-64 visible ASCII characters
  (`!`..`~`); anything else (missing, empty, too long, spaces, control or non-ASCII bytes) is
  replaced by a new id: this process's random prefix and a counter (`3f9c2a1b-1c`), unique
  without a system call. The id is echoed in the answer's `X-Request-ID` header, put in the
  ASGI scope (`scope["eventledger.request_id"]`) and in the context variable `REQUEST_ID`
  for the handlers (a command may carry it into its events as correlation id).
* **One line per request** on the logger `eventledger.requests`: method, path (never the query
  string, never a header: no token reaches a log), status, milliseconds, request id; as
  `key=value` or JSON members (eventledger/logging.py). Answers of 5xx are WARNING, the rest
  INFO. Measured in CPU time per request: the id alone ~1.5 µs, a line written ~16 µs (Python's
  logging: the record, the formatter, a write). So INFO lines are opt-in (`serve
  --log-requests`): without them the hot path pays only the id and one level check.

`install_request_log(app, registry)` installs it and, beside it, the process's own metrics
(CPU seconds, memory, open files, GC: prometheus_client's process/platform/GC collectors) on the
service's registry.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventledger.logging import FIELDS

HEADER: Final = b"x-request-id"
SCOPE_KEY: Final = "eventledger.request_id"
MAX_LENGTH: Final = 64
REQUEST_ID: ContextVar[str | None] = ContextVar("eventledger_request_id", default=None)

log = logging.getLogger("eventledger.requests")

_PREFIX = os.urandom(4).hex()  # per process: ids from two processes never collide
_counter = itertools.count(1)


_VALID = re.compile(rb"[!-~]{1,%d}" % MAX_LENGTH)


def valid_request_id(value: bytes) -> bool:
    """1-64 visible ASCII characters (0x21-0x7E)."""
    return _VALID.fullmatch(value) is not None


def new_request_id() -> str:
    return f"{_PREFIX}-{next(_counter):x}"


class RequestLog:
    """Pure ASGI middleware: the request id and the request's log line (module docstring)."""

    def __init__(self, app: ASGIApp, *, logger: logging.Logger = log) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == HEADER:
                given = value
                break
        if given is not None and valid_request_id(given):
            request_id = given.decode("ascii")
            header = given
        else:
            request_id = new_request_id()
            header = request_id.encode("ascii")
        scope[SCOPE_KEY] = request_id
        status = 500  # what the server answers when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, header)]
            await send(message)

        reset = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(reset)
            level = logging.WARNING if status >= 500 else logging.INFO
            if self.logger.isEnabledFor(level):
                self._log(level, scope, status, start, request_id)

    def _log(self, level: int, scope: Scope, status: int, start: float, request_id: str) -> None:
        fields = {
            "method": scope["method"],
            "path": scope["path"],  # the formatters quote a crafted one onto one line
            "status": status,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            "request_id": request_id,
        }
        self.logger.log(level, "request", extra={FIELDS: fields})


def install_request_log(app: Starlette, registry: CollectorRegistry | None = None) -> None:
    """Wrap `app`'s whole middleware stack in `RequestLog` (outermost, even around
    middleware added later), and register the process metrics on `registry`."""
    build: Callable[[], ASGIApp] = app.build_middleware_stack

    def build_with_request_log() -> ASGIApp:
        return RequestLog(build())

    app.build_middleware_stack = build_with_request_log  # type: ignore[method-assign]
    if registry is not None:
        register_process_metrics(registry)


def register_process_metrics(registry: CollectorRegistry) -> None:
    """process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …,
    python_info and python_gc_* on `registry` (read from /proc when scraped: no cost between
    scrapes)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
