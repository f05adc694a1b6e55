"""The console's session table and sign-in limiter (pure logic, a fixed clock): bounded in
number, idle sessions end, failures age out of their window; and its scope table."""

from __future__ import annotations

import pytest

from eventledger.services.console.sessions import Sessions, SignInLimiter
from eventledger.services.console.signin import ANY_SESSION, required_scope


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_random_id_until_it_ends() -> None:
    sessions = Sessions(clock=Clock())
    one = sessions.create("cli", ["ledger:read"], "token-one")
    two = sessions.create("cli", ["ledger:read"], "token-one")
    assert one.id != two.id and len(one.id) >= 43
    assert sessions.get(one.id) is one
    assert sessions.end(one.id) and not sessions.end(one.id)
    assert sessions.get(one.id) is None and sessions.get(two.id) is two
    assert "token-one" not in repr(two) and two.id not in repr(two)


def test_a_session_idle_too_long_ends_and_a_used_one_lives_on() -> None:
    clock = Clock()
    sessions = Sessions(idle_seconds=60.0, clock=clock)
    idle = sessions.create("a", ["ledger:read"], "t")
    used = sessions.create("b", ["ledger:read"], "t")
    for _ in range(3):
        clock.now += 40.0
        assert sessions.get(used.id) is used
    assert sessions.get(idle.id) is None
    assert len(sessions) == 1


def test_a_full_table_evicts_the_session_idle_the_longest() -> None:
    clock = Clock()
    sessions = Sessions(limit=3, clock=clock)
    first, second, third = (sessions.create(n, ["ledger:read"], "t") for n in "abc")
    clock.now += 1.0
    sessions.get(first.id)  # seen again: now the second is the one idle the longest
    fourth = sessions.create("d", ["ledger:read"], "t")
    assert len(sessions) == 3
    assert sessions.get(second.id) is None
    assert all(sessions.get(s.id) is s for s in (first, third, fourth))


def test_failures_past_the_allowance_block_until_the_oldest_ages_out() -> None:
    clock = Clock()
    limiter = SignInLimiter(allowed=3, window=60.0, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 10.0
    assert limiter.retry_after("10.0.0.1") == 30.0  # the first failed at 1000, now is 1030
    assert limiter.retry_after("10.0.0.2") is None  # per address
    clock.now += 30.0
    assert limiter.retry_after("10.0.0.1") is None


def test_the_limiter_tracks_a_bounded_number_of_addresses() -> None:
    limiter = SignInLimiter(allowed=1, max_clients=100, clock=Clock())
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._failures) == 100
    assert limiter.retry_after("10.0.3.231") is not None  # the newest is still counted
    assert limiter.retry_after("10.0.0.0") is None  # the oldest was forgotten


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/health", None),
        ("GET", "/static/console.js", None),
        ("GET", "/signin", None),
        ("GET", "/metrics", None),  # a bearer token with `metrics`, checked by its own guard
        ("POST", "/api/session", None),
        ("GET", "/api/session", ANY_SESSION),
        ("DELETE", "/api/session", ANY_SESSION),
        ("GET", "/", "ledger:read"),
        ("HEAD", "/readmodels", "ledger:read"),
        ("GET", "/api/events/live", "ledger:read"),
        ("POST", "/api/commands/transfer", "ledger:write"),
        ("POST", "/api/readmodels/accounting/rebuild", "admin"),
        ("PUT", "/api/accounts/a", "admin"),  # no such route: the strictest, by default
        ("POST", "//api/commands/open", "admin"),
        ("GET", "/unknown", "ledger:read"),
    ],
)
def test_each_request_needs_the_scope_of_the_table(
    method: str, path: str, needed: str | None
) -> None:
    assert required_scope(method, path) == needed
