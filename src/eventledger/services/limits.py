"""Per-caller request rate limits: a token bucket per principal, 429 `rate-limited` past it.

The principal is the authenticated token's name (`scope["eventledger.principal"]`, set by the
auth middleware, which runs outside this one), or the client's address when the service runs
open. Each principal has a bucket of `burst` requests refilled at `per_second`; a request that
finds it empty is answered 429 `rate-limited` with `Retry-After` (whole seconds until a token
is back) and reaches nothing else. `GET /health` is never limited: probes must see the truth.

The limiter is off unless configured (`--rate-limit`, `EVENTLEDGER_RATE_LIMIT`), and on by
default only on a non-loopback address (`DEFAULT_RATE`). The buckets live in memory, one
process each, and at most `MAX_PRINCIPALS` of them (least recently used forgotten first), so
callers rotating addresses cannot grow the table without bound.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from eventledger.config import Limits

PRINCIPAL = "eventledger.principal"  # the ASGI scope key the auth middleware fills
MAX_PRINCIPALS = 10_000
UNLIMITED_PATHS = frozenset({"/health"})

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute))?")


def principal_of(scope: Scope) -> str:
    """Who makes this request: the token's name, or `client <address>` when running open."""
    principal = scope.get(PRINCIPAL)
    if isinstance(principal, str) and principal:
        return principal
    client = scope.get("client")
    host = client[0] if client else "unknown"
    return f"client {host}"


@dataclass(frozen=True)
class Rate:
    """`per_second` requests on average, up to `burst` at once."""

    per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str, *, burst: int | None = None) -> Rate | None:
        """`100/s`, `6000/min`, `100` (per second); `0` or `off` means no limit (None).
        Raises ValueError naming the expected form."""
        text = text.strip().lower()
        if text in ("0", "off", "none", ""):
            return None
        match = _RATE.fullmatch(text)
        if match is None or float(match.group(1)) <= 0:
            raise ValueError(f"a rate is N/s, N/min or N (per second), not {text!r}")
        per_second = float(match.group(1))
        if (match.group(2) or "s")[0] == "m":
            per_second /= 60
        if burst is None:
            burst = max(1, math.ceil(2 * per_second))
        if burst < 1:
            raise ValueError(f"a burst is at least 1, not {burst}")
        return cls(per_second, burst)

    def describe(self) -> str:
        return f"{self.per_second:g} requests per second (bursts of {self.burst})"


DEFAULT_RATE = Rate(1000.0, 2000)  # per principal, on a non-loopback address


class RateLimiter:
    """Token buckets by principal. `take(key)` spends one token: 0.0 when there was one,
    otherwise the seconds until there will be one."""

    def __init__(self, rate: Rate, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, key: str) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - stamp) * self.rate.per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate.per_second
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_PRINCIPALS:
            self._buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    """Pure ASGI middleware: 429 `rate-limited` past the app's `state.rate_limiter` (a
    `RateLimiter`, or None for no limit). Installed inside the auth middleware, so that the
    principal is known when it runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in UNLIMITED_PATHS:
            owner = scope.get("app")
            limiter = getattr(getattr(owner, "state", None), "rate_limiter", None)
            if isinstance(limiter, RateLimiter):
                wait = limiter.take(principal_of(scope))
                if wait > 0:
                    retry = max(1, math.ceil(wait))
                    # Written here, not with http.problem_response: http.py imports this module.
                    response = JSONResponse(
                        {
                            "type": "rate-limited",
                            "title": "Too many requests",
                            "status": 429,
                            "detail": f"at most {limiter.rate.describe()} per caller; "
                            f"retry in {retry} s",
                        },
                        status_code=429,
                        media_type="application/problem+json",
                        headers={"Retry-After": str(retry)},
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def rate_limiter_for(limits: Limits, host: str) -> RateLimiter | None:
    """The configured limiter: `limits.rate_limit` when given ("off" for none), otherwise
    none on a loopback address and `DEFAULT_RATE` on any other."""
    if limits.rate_limit is None:
        return None if is_loopback(host) else RateLimiter(DEFAULT_RATE)
    rate = Rate.parse(limits.rate_limit, burst=limits.rate_limit_burst)
    return None if rate is None else RateLimiter(rate)


def install_limits(app: FastAPI, limits: Limits, host: str) -> None:
    """Give a built app its configured limits: the rate limiter every service has, and the
    subscriber caps of a service with subscriptions (the stream service)."""
    app.state.rate_limiter = rate_limiter_for(limits, host)
    subscriptions = getattr(app.state, "subscriptions", None)
    if subscriptions is not None:
        subscriptions.max_total = limits.max_subscribers
        subscriptions.max_per_principal = limits.max_subscribers_per_caller
