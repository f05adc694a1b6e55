"""The console service: pages, assets and its JSON API over the four services' public APIs.

It holds a token of its own (`<data-dir>/tokens/console.token`, made by `eventledger up`) and
calls the services server-side with it: the browser talks only to the console, same origin.
With an auth file the operator signs in first (`signin.py`: an eventledger token with
`ledger:read`, checked as the services check it, gives a session cookie) and each route needs
the session's scope: the command form `ledger:write`, the read models' buttons `admin` (for
which the console presents the operator's own token, kept server-side in the session). No
other origin may call it (`services/browser.py`, with no CORS origin ever), the cookie is
`SameSite=Strict`, and a state-changing request must be JSON (`JsonBodyGuard`), which a foreign
page cannot send without asking first. It binds loopback (bootstrap refuses another address
without `--insecure-no-auth`). Without an auth file it is open, and its pages say so.

`/health` answers 200 while the console runs, with whether each service answered within half
a second; `/metrics` needs the `metrics` scope when the installation has an auth file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from eventledger.services.auth import Authenticator, AuthFileAuthenticator
from eventledger.services.console.api import add_api_routes
from eventledger.services.console.pages import add_page_routes
from eventledger.services.console.signin import install as install_signin
from eventledger.services.console.upstream import Upstream
from eventledger.services.http import create_service_app, problem_response

SERVICE = "console"
HEALTH_PROBE_SECONDS = 0.5


class MetricsGuard:
    """Pure ASGI middleware: `/metrics` needs a bearer token with the `metrics` scope (the
    console's only route that takes a token; see the module docstring)."""

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                token = given.strip() if scheme.lower() == "bearer" else None
        entry = self.authenticator.identify(token) if token else None
        if entry is None or "metrics" not in entry.scopes:
            status, slug, title = (
                (401, "unauthenticated", "Authentication required")
                if entry is None
                else (403, "forbidden", "Forbidden")
            )
            response = problem_response(
                status,
                slug,
                title,
                "GET /metrics needs a token with the scope 'metrics'",
                {"WWW-Authenticate": 'Bearer realm="eventledger"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    *, urls: Mapping[str, str], token: str | None, auth_file: Path | None = None
) -> FastAPI:
    """The console, calling the services at `urls` (name: base URL) with `token`."""
    upstream = Upstream(urls, token)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await upstream.open()
        try:
            yield
        finally:
            await upstream.close()

    app, _ = create_service_app(
        service=SERVICE,
        title="eventledger console",
        description="The browser console: live log, balances, statistics, read models.",
        lifespan=lifespan,
    )
    app.state.upstream = upstream
    app.state.begin_shutdown = upstream.end_subscriptions  # live logs end at once on SIGTERM

    @app.get("/health", tags=["operations"], summary="Whether the console runs; the services")
    async def health() -> JSONResponse:
        async def probe(name: str) -> str:
            try:
                answer = await upstream.get(name, "/health", timeout=HEALTH_PROBE_SECONDS)
            except Exception:  # any failure means: it did not answer
                return "down"
            return "up" if answer.ok else f"HTTP {answer.status}"

        names = list(upstream.urls)
        states = await asyncio.gather(*(probe(name) for name in names))
        return JSONResponse(
            {"status": "ok", "service": SERVICE, "services": dict(zip(names, states, strict=True))}
        )

    authenticator = AuthFileAuthenticator(auth_file) if auth_file is not None else None
    install_signin(app, authenticator)  # the session routes and, with an auth file, the guard
    add_api_routes(app, upstream)
    add_page_routes(app)
    if authenticator is not None:
        app.add_middleware(MetricsGuard, authenticator=authenticator)
    return app
