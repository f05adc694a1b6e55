"""Bearer tokens with scopes (API.md, "Security"): the scope table and the middleware.

* The auth file (its format, loading and validation) is `eventledger.credentials`.
* The **scope table** `required_scope(service, method, path)` is the one place that says which
  scope a request needs; the middleware and the OpenAPI documents both read it.
* `AuthMiddleware` (pure ASGI) answers 401 `unauthenticated` (with `WWW-Authenticate: Bearer`)
  or 403 `forbidden` naming the missing scope, and otherwise puts the token's *name* into the
  ASGI scope as `scope["eventledger.principal"]` for the middleware inside it (rate limits).
  A presented token is hashed and compared with every known hash in constant time; the token
  itself is never kept, logged, echoed in a problem document or used as a metric label.

`GET /health` and the API documents (`/docs`, `/openapi.json`, `/redoc`) need no token: they
tell no secrets, and an operator's probe or a newcomer's browser needs them without one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from eventledger.credentials import SCOPES, AuthFileError, TokenEntry, load_auth_file
from eventledger.services.http import Metrics, problem_response
from eventledger.services.openapi import ASSET_PATHS

log = logging.getLogger(__name__)

PRINCIPAL = "eventledger.principal"  # the ASGI scope key: the authenticated token's name

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PATHS |= ASSET_PATHS  # Swagger UI's files, served by /docs's service (services/openapi.py)
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# What reads and what changes state need, per service (API.md's table). On a read model the
# only changes are operator actions, so anything but a read needs `admin` there.
_READ_SCOPE = {
    "stream": "events:read",
    "transaction": "ledger:read",
    "accounting": "ledger:read",
    "statistics": "ledger:read",
}
_WRITE_SCOPE = {
    "stream": "events:append",
    "transaction": "ledger:write",
    "accounting": "admin",
    "statistics": "admin",
}

_FORGET = re.compile(r"/accounts/[^/]+/forget")
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")
SECURITY_SCHEME = "bearer"


def required_scope(service: str, method: str, path: str) -> str | None:
    """The scope a request needs, or None when it needs no token (the one scope table)."""
    if path in OPEN_PATHS:
        return None
    if path == "/metrics":
        return "metrics"
    if path == "/admin" or path.startswith("/admin/"):
        return "admin"
    if service == "transaction" and method == "POST" and _FORGET.fullmatch(path):
        return "admin"  # erasing personal data is an operator's act, not a ledger write
    if method in _SAFE_METHODS:
        return _READ_SCOPE[service]
    return _WRITE_SCOPE[service]


class Authenticator:
    """Checks presented tokens against the hashes of an auth file."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._entries = tuple((bytes.fromhex(e.sha256), e) for e in entries)

    def __len__(self) -> int:
        return len(self._entries)

    def refresh(self) -> None:
        """Take changes of the auth file into account (nothing to do for fixed entries)."""

    def identify(self, token: str) -> TokenEntry | None:
        """The entry whose hash is the token's, or None. Every hash is compared, each in
        constant time, so the time taken tells nothing about which one matched or how far."""
        self.refresh()
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: TokenEntry | None = None
        for known, entry in self._entries:
            if hmac.compare_digest(known, digest):
                found = entry
        return found


class AuthFileAuthenticator(Authenticator):
    """An `Authenticator` that follows its auth file: a token created or revoked (`eventledger
    token`, which replaces the file atomically) counts within `RECHECK_SECONDS`, without a
    restart. The file is loaded strictly at start (`AuthFileError` stops the service); a
    later version that is not valid is logged and ignored, the last valid one staying in use.
    """

    RECHECK_SECONDS = 1.0

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._stamp = self._file_stamp()
        super().__init__(load_auth_file(path))
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.RECHECK_SECONDS:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = load_auth_file(self.path)
        except AuthFileError as exc:
            log.error("%s; still using the tokens loaded before", exc)
            return
        self._entries = tuple((bytes.fromhex(e.sha256), e) for e in entries)
        log.info("auth file %s reloaded: %d tokens", self.path, len(self._entries))


# -- the middleware ------------------------------------------------------------------------


def _bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(token, None) from the one `Authorization: Bearer` header, or (None, why not)."""
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        return None, "send Authorization: Bearer <token>"
    if len(values) > 1:
        return None, "send one Authorization header, not several"
    scheme, _, credentials = values[0].decode("latin-1").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None, "the Authorization header must be 'Bearer <token>'"
    if _BEARER.fullmatch(credentials) is None:
        return None, "the bearer token is not valid"
    return credentials, None


class AuthMiddleware:
    """Pure ASGI middleware: every request needs a token with the scope of `required_scope`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        authenticator: Authenticator,
        metrics: Metrics | None = None,
    ) -> None:
        if service not in _READ_SCOPE:
            raise ValueError(f"unknown service {service!r}")
        self.app = app
        self.service = service
        self.authenticator = authenticator
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(self.service, scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        token, why = _bearer_token(scope["headers"])
        entry = None if token is None else self.authenticator.identify(token)
        if entry is None:
            error = "" if why == "send Authorization: Bearer <token>" else ', error="invalid_token"'
            detail = why or "the bearer token is not valid (unknown, revoked or mistyped)"
            await self._refuse(
                scope,
                receive,
                send,
                401,
                "unauthenticated",
                "Authentication required",
                detail,
                {"WWW-Authenticate": f'Bearer realm="eventledger"{error}'},
            )
            return
        if needed not in entry.scopes:
            await self._refuse(
                scope,
                receive,
                send,
                403,
                "forbidden",
                "Forbidden",
                f"the token {entry.name!r} lacks the scope {needed!r} that this request needs",
                {
                    "WWW-Authenticate": f'Bearer realm="eventledger", '
                    f'error="insufficient_scope", scope="{needed}"'
                },
                missing_scope=needed,
            )
            return
        scope[PRINCIPAL] = entry.name
        await self.app(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        type: str,
        title: str,
        detail: str,
        headers: Mapping[str, str],
        **extra: Any,
    ) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(self.service, type).inc()
        response = problem_response(status, type, title, detail, headers, **extra)
        await response(scope, receive, send)


# -- OpenAPI -------------------------------------------------------------------------------

_AUTH_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {"description": "`unauthenticated`: no token, or not a valid one."},
    "403": {"description": "`forbidden`: the token lacks the scope this operation needs."},
}


def document_security(app: FastAPI, service: str) -> None:
    """Make `app`'s OpenAPI document show the bearer scheme and each operation's scope."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `eventledger token create`; each operation names "
            "the scope it needs. Scopes: " + ", ".join(f"`{s}`" for s in SCOPES) + ".",
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                needed = required_scope(service, method.upper(), path)
                if needed is None:
                    operation["security"] = []
                    continue
                operation["security"] = [{SECURITY_SCHEME: [needed]}]
                operation["x-required-scope"] = needed
                responses = operation.setdefault("responses", {})
                for status, response in _AUTH_RESPONSES.items():
                    responses.setdefault(status, response)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def secure_app(app: FastAPI, *, service: str, authenticator: Authenticator) -> None:
    """Require tokens on `app` (before it starts): the middleware and the documents."""
    metrics = getattr(app.state, "metrics", None)
    app.add_middleware(
        AuthMiddleware,
        service=service,
        authenticator=authenticator,
        metrics=metrics if isinstance(metrics, Metrics) else None,
    )
    document_security(app, service)
