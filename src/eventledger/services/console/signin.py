"""Who is at the console: sign-in with an eventledger token, a session, and its scopes.

With an auth file, every page and `/api` route needs a session (`SessionGuard`), except
`/health`, `/metrics` (its own bearer check), the assets, the API documents, the sign-in page
and the sign-in itself:

* `POST /api/session` `{"token": "…"}`: the token is checked by the services' own code
  (`services/auth.py`); it needs `ledger:read`. The answer sets the session cookie
  (`HttpOnly; SameSite=Strict; Path=/`, `Secure` over TLS) and names the principal and its
  scopes; the token itself is never sent back, logged or put in the browser. Failed sign-ins
  are limited per client address (`SignInLimiter`: 10 a minute, then 429 `too-many-sign-ins`).
* `GET /api/session`: who is signed in; `DELETE /api/session`: sign out (the session ends).

What a session may do is `required_scope(method, path)`: reads need `ledger:read`, the command
form `ledger:write`, the read models' buttons (and any other change) `admin` (the console then
presents the operator's own token, kept server-side in the session). Without a session an
`/api` route answers 401 `unauthenticated` and a page redirects to `/signin`; a missing scope
is 403 `forbidden`.

Without an auth file (a loopback-only open installation) there is no guard and no sign-in:
the pages say so in a banner.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import Field
from starlette.types import ASGIApp, Receive, Scope, Send

from eventledger.credentials import SCOPES
from eventledger.services.auth import PRINCIPAL, Authenticator
from eventledger.services.console.sessions import SESSION_COOKIE, Session, Sessions, SignInLimiter
from eventledger.services.http import ProblemError, StrictModel, problem_response, read_model
from eventledger.services.openapi import ASSET_PATHS

log = logging.getLogger(__name__)

SESSION = "eventledger.console.session"  # the ASGI scope key of the request's session
SIGN_IN_SCOPE = "ledger:read"  # the least a principal needs to use the console at all
ANY_SESSION = "session"  # required_scope's answer for "signed in, whatever the scopes"
OPEN_PATHS = frozenset(
    {"/health", "/metrics", "/signin", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
OPEN_PATHS |= ASSET_PATHS
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")  # as services/auth.py takes a bearer token


def required_scope(method: str, path: str) -> str | None:
    """What a request to the console needs: None (nothing), `ANY_SESSION`, or a scope."""
    if path in OPEN_PATHS or path.startswith("/static/"):
        return None
    if path == "/api/session":
        return None if method == "POST" else ANY_SESSION
    if method == "POST" and path.startswith("/api/commands/"):
        return "ledger:write"
    if method in ("GET", "HEAD"):
        return SIGN_IN_SCOPE
    # rebuild, skip, park; and any other change (there is none): the strictest by default
    return "admin"


def session_id(scope: Scope) -> str | None:
    """The session cookie's value, if the request carries one."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            key, _, given = pair.strip().partition("=")
            if key == SESSION_COOKIE and given:
                return given
    return None


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at a page: what it shows and hides. `open`: the console has no auth file."""

    name: str | None
    scopes: frozenset[str]
    open: bool


def viewer(request: Request) -> Viewer:
    session: Session | None = request.scope.get(SESSION)
    if session is not None:
        return Viewer(session.name, session.scopes, open=False)
    if getattr(request.app.state, "sessions", None) is None:
        return Viewer(None, frozenset(SCOPES), open=True)
    return Viewer(None, frozenset(), open=False)


def operator_authorization(request: Request) -> str | None:
    """`Authorization` for an admin call made for the signed-in operator; None when open."""
    session: Session | None = request.scope.get(SESSION)
    return None if session is None else f"Bearer {session.token}"


class SessionGuard:
    """Pure ASGI middleware: a request needs the session and the scope `required_scope` says."""

    def __init__(self, app: ASGIApp, *, sessions: Sessions, authenticator: Authenticator) -> None:
        self.app = app
        self.sessions = sessions
        self.authenticator = authenticator

    def current(self, scope: Scope) -> Session | None:
        """The request's session, its scopes as the auth file says now (a revoked token ends
        it; a changed one takes effect at once)."""
        found = session_id(scope)
        session = None if found is None else self.sessions.get(found)
        if session is None:
            return None
        entry = self.authenticator.identify(session.token)
        if entry is None or SIGN_IN_SCOPE not in entry.scopes:
            self.sessions.end(session.id)
            return None
        session.scopes = frozenset(entry.scopes)
        return session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        needed = required_scope(method, path)
        if needed is None:
            await self.app(scope, receive, send)
            return
        session = self.current(scope)
        response: Response
        if session is None:
            if method in ("GET", "HEAD") and not path.startswith("/api/"):
                response = RedirectResponse(f"/signin?next={quote(path, safe='/')}", 303)
            else:
                response = problem_response(
                    401,
                    "unauthenticated",
                    "Sign in first",
                    "this console needs a session: sign in at /signin with an eventledger "
                    "token (POST /api/session); yours may have ended (signed out, idle, revoked)",
                )
            await response(scope, receive, send)
            return
        if needed != ANY_SESSION and needed not in session.scopes:
            response = problem_response(
                403,
                "forbidden",
                "Forbidden",
                f"{session.name!r} lacks the scope {needed!r} that this request needs",
                missing_scope=needed,
            )
            await response(scope, receive, send)
            return
        scope[SESSION] = session
        scope[PRINCIPAL] = session.name
        await self.app(scope, receive, send)


class SignInBody(StrictModel):
    """`{"token": "…"}`: an eventledger token (the CLI's, or any with `ledger:read`)."""

    token: Annotated[str, Field(min_length=1, max_length=1024)]


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def add_signin_routes(
    app: FastAPI,
    *,
    sessions: Sessions | None,
    authenticator: Authenticator | None,
    limiter: SignInLimiter | None = None,
) -> None:
    """The session routes; `sessions` None: an open console, which has no sign-in."""
    limiter = limiter or SignInLimiter()

    @app.get("/api/session", include_in_schema=False)
    async def who(request: Request) -> JSONResponse:
        seen = viewer(request)
        return JSONResponse(
            {"auth": not seen.open, "name": seen.name, "scopes": sorted(seen.scopes)}
        )

    @app.post("/api/session", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        if sessions is None or authenticator is None:
            raise ProblemError(
                409,
                "no-sign-in",
                "No sign-in here",
                "this console has no auth file: it is open to whoever can reach it",
            )
        client = _client(request)
        wait = limiter.retry_after(client)
        if wait is not None:  # checked first: a blocked address learns nothing of its guess
            raise ProblemError(
                429,
                "too-many-sign-ins",
                "Too many failed sign-ins",
                f"{limiter.allowed} failed sign-ins from this address within "
                f"{limiter.window:.0f} s: wait before trying again",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        body = await read_model(request, SignInBody)
        entry = authenticator.identify(body.token) if _TOKEN.fullmatch(body.token) else None
        if entry is None:
            limiter.failed(client)
            log.warning("console: a sign-in from %s failed (not a valid token)", client)
            raise ProblemError(
                401,
                "unauthenticated",
                "Not a valid token",
                "the token is not valid (unknown, revoked or mistyped); under eventledger up, "
                "the CLI's is in <data-dir>/tokens/cli.token",
            )
        if SIGN_IN_SCOPE not in entry.scopes:
            raise ProblemError(
                403,
                "forbidden",
                "Forbidden",
                f"the token {entry.name!r} lacks the scope {SIGN_IN_SCOPE!r} the console needs",
                missing_scope=SIGN_IN_SCOPE,
            )
        previous = session_id(request.scope)
        if previous is not None:
            sessions.end(previous)
        session = sessions.create(entry.name, entry.scopes, body.token)
        log.info("console: %r signed in from %s", entry.name, client)
        response = JSONResponse({"name": session.name, "scopes": sorted(session.scopes)})
        response.set_cookie(
            SESSION_COOKIE,
            session.id,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.delete("/api/session", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        session: Session | None = request.scope.get(SESSION)
        if session is not None and sessions is not None:
            sessions.end(session.id)
            log.info("console: %r signed out", session.name)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


def install(app: FastAPI, authenticator: Authenticator | None) -> None:
    """Sign-in for `app` when there is an `authenticator` (an auth file); else it stays open."""
    sessions = Sessions() if authenticator is not None else None
    app.state.sessions = sessions
    add_signin_routes(app, sessions=sessions, authenticator=authenticator)
    if sessions is not None and authenticator is not None:
        app.add_middleware(SessionGuard, sessions=sessions, authenticator=authenticator)
