"""No attacks through a browser: the `Host` and `Origin` rules of every service.

A service on 127.0.0.1 is reachable from any web page its user opens. Three rules keep such a
page from using it (the fourth, `Content-Type: application/json` on every request that may
change state, is `JsonBodyGuard` in `services/http.py`, on every app):

* **Origin** (CORS closed by default): a request that carries an `Origin` header is refused
  (403 `forbidden-origin`, preflights too) unless that origin was configured
  (`--cors-origin`) or is the service's own (`/docs` calling its own API). A configured
  origin gets the CORS answer headers; no cookies are involved, so none allow credentials.
* **Host** (DNS rebinding): on a loopback bind the `Host` header must name the bound address
  (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`); a page on `evil.example` whose name
  now resolves to 127.0.0.1 still sends `Host: evil.example:PORT`, and gets 421.
* Tokens are never ambient (no cookies): a page cannot borrow the user's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventledger.config import normalise_origin
from eventledger.services.http import Metrics, problem_response

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ALLOWED_METHODS = "GET, HEAD, POST"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, X-Correlation-ID, X-Min-Position, "
    "Last-Event-ID, X-Request-ID"
)
EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After, Location, X-Request-ID"
PREFLIGHT_MAX_AGE = "600"


def is_loopback(host: str) -> bool:
    """Whether a listen address is loopback only (127.0.0.0/8, ::1, `localhost`)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def loopback_hosts(bound_host: str, port: int) -> frozenset[str] | None:
    """The `Host` values a service bound to `bound_host:port` answers to: on a loopback bind,
    the loopback names with the port (port 0: any port, checked by name); otherwise None
    (no Host rule: such a service needs tokens anyway)."""
    if not is_loopback(bound_host):
        return None
    bound = bound_host.strip().lower()
    if ":" in bound and not bound.startswith("["):
        bound = f"[{bound}]"
    names = set(LOOPBACK_NAMES) | {bound}
    if port == 0:
        return frozenset(names)
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    return frozenset(hosts)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class BrowserGuard:
    """Pure ASGI middleware: the Host and Origin rules (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        allowed_hosts: frozenset[str] | None,
        any_port: bool = False,
        cors_origins: Iterable[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.allowed_hosts = allowed_hosts
        self.any_port = any_port
        self.cors_origins = frozenset(normalise_origin(o) for o in cors_origins)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1").strip().lower()
            elif name == b"origin":
                origin = value.decode("latin-1").strip().lower()
            elif name == b"access-control-request-method":
                preflight = scope["method"] == "OPTIONS"
        if self.allowed_hosts is not None and not self._host_allowed(host):
            await self._refuse(
                scope,
                receive,
                send,
                421,
                "misdirected-request",
                "Misdirected request",
                "this service listens on a loopback address and answers only to "
                + ", ".join(sorted(self.allowed_hosts))
                + " in the Host header",
            )
            return
        if origin is None:
            await self.app(scope, receive, send)
            return
        if origin in self.cors_origins:
            if preflight:
                await self._preflight(origin, send)
                return
            await self.app(scope, receive, self._with_cors_headers(origin, send))
            return
        if host is not None and origin in (f"http://{host}", f"https://{host}"):
            await self.app(scope, receive, send)  # same origin: the service's own /docs
            return
        await self._refuse(
            scope,
            receive,
            send,
            403,
            "forbidden-origin",
            "Cross-origin request refused",
            "requests from web pages of another origin are refused; an operator can allow "
            "an origin with --cors-origin",
        )

    def _host_allowed(self, host: str | None) -> bool:
        assert self.allowed_hosts is not None
        if host is None:
            return False
        if host in self.allowed_hosts:
            return True
        return self.any_port and _host_name(host) in self.allowed_hosts

    @staticmethod
    def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]

    def _with_cors_headers(self, origin: str, send: Send) -> Send:
        extra = self._cors_headers(origin)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_with_headers

    async def _preflight(self, origin: str, send: Send) -> None:
        headers = [
            *self._cors_headers(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        type: str,
        title: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(self.service, type).inc()
        await problem_response(status, type, title, detail, headers)(scope, receive, send)
