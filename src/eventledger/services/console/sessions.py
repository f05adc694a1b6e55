"""The console's sign-in state, kept server-side: sessions, and the failed sign-ins' limiter.

A session is what the browser holds instead of a token: a random id (`secrets.token_urlsafe`,
256 bits) in an `HttpOnly; SameSite=Strict` cookie, naming an entry here with the principal's
name and scopes. The operator's token stays in this process's memory only (never in the
browser, never logged), because the console checks it again on every request (a token revoked
in the auth file ends its sessions within a second) and presents it for the admin buttons.

Both tables are bounded: at most `MAX_SESSIONS` sessions (a new one evicts the one idle the
longest) each ending after `IDLE_SECONDS` without a request, and at most `MAX_CLIENTS` client
addresses tracked by the limiter. Time is an input (`clock`), so the tests need no sleeps.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SESSION_COOKIE = "eventledger_console"
MAX_SESSIONS = 64
IDLE_SECONDS = 30 * 60.0
FAILURES_ALLOWED = 10  # failed sign-ins per client address ...
FAILURE_WINDOW_SECONDS = 60.0  # ... within this window; then 429 until the oldest ages out
MAX_CLIENTS = 4096


@dataclass(slots=True)
class Session:
    """A signed-in operator: the principal's name and scopes (as of the last check)."""

    id: str = field(repr=False)
    name: str
    scopes: frozenset[str]
    token: str = field(repr=False)  # server-side only: re-checked per request, forwarded for admin
    last_seen: float


class Sessions:
    """The sessions of one console process, by id; bounded in number and idle time."""

    def __init__(
        self,
        *,
        limit: int = MAX_SESSIONS,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        self._expire()
        return len(self._by_id)

    def _expire(self) -> None:
        cutoff = self._clock() - self.idle_seconds
        while self._by_id:
            oldest = next(iter(self._by_id.values()))
            if oldest.last_seen > cutoff:
                break
            del self._by_id[oldest.id]

    def create(self, name: str, scopes: Iterable[str], token: str) -> Session:
        """A new session; when the table is full, the one idle the longest ends."""
        self._expire()
        while len(self._by_id) >= self.limit:
            self._by_id.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), name, frozenset(scopes), token, self._clock())
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, seen now; None when unknown or idle too long."""
        self._expire()
        session = self._by_id.get(session_id)
        if session is None:
            return None
        session.last_seen = self._clock()
        self._by_id.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> bool:
        """Forget a session (sign-out, or its token no longer valid); whether there was one."""
        return self._by_id.pop(session_id, None) is not None


class SignInLimiter:
    """Failed sign-ins per client address in a sliding window: past `allowed` failures within
    `window` seconds, that address may not try again until the oldest one ages out."""

    def __init__(
        self,
        *,
        allowed: int = FAILURES_ALLOWED,
        window: float = FAILURE_WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        cutoff = self._clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        failures = self._recent(client)
        if failures is None or len(failures) < self.allowed:
            return None
        return max(0.0, failures[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        """Count one failed sign-in of `client`."""
        failures = self._recent(client)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=self.allowed)
            while len(self._failures) > self.max_clients:  # bounded: forget the oldest address
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        failures.append(self._clock())
