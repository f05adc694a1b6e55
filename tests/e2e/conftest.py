"""Fixtures of the end-to-end suite: whole systems of real processes, shared where safe.

`system` is one system for the whole session, for tests that only add their own accounts
(unique ids, no cleanup). Tests that kill processes start their own. The suite's stream store,
`suite_store`, is SQLite unless `EVENTLEDGER_E2E_STORE=postgresql`; `store_system` runs a test
once per store backend, on PostgreSQL in a fresh database on the server of
`EVENTLEDGER_TEST_POSTGRES_URL` (skipped without it, a failure when
`EVENTLEDGER_REQUIRE_POSTGRES=1`: see tests/conftest.py).

Every test whose fixtures take `suite_store` (`system` does) is marked `suite_store`: only
those change with `EVENTLEDGER_E2E_STORE`, so the suite's pass on PostgreSQL (`make test`)
runs `-m suite_store`; the others pick their store themselves and ran once on each already.

When a test fails, the tail of the log of every service process it used is shown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.e2e.harness import STARTED, ServiceProcess, System, default_store, start_system


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "suite_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.suite_store)


@pytest.fixture(scope="session")
def suite_store() -> str:
    """The stream store of the suite's systems: "sqlite", or `EVENTLEDGER_E2E_STORE`."""
    return default_store()


@pytest.fixture(scope="session")
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[System]:
    with ExitStack() as stack:
        yield start_system(request, stack, tmp_path_factory.mktemp("system"), suite_store)


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def store_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """A system per store backend: the shared one for the default store, else a fresh one."""
    if request.param == default_store():
        yield request.getfixturevalue("system")
        return
    with ExitStack() as stack:
        yield start_system(request, stack, tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0), limits=limits) as http:
        yield http


_FIRST_STARTED = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def _remember_started(request: pytest.FixtureRequest) -> None:
    request.node.stash[_FIRST_STARTED] = len(STARTED)


def _processes(value: Any) -> list[ServiceProcess]:
    if isinstance(value, System):
        return value.services
    if isinstance(value, ServiceProcess):
        return [value]
    return []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        used = [p for value in getattr(item, "funcargs", {}).values() for p in _processes(value)]
        used += STARTED[item.stash.get(_FIRST_STARTED, len(STARTED)) :]
        for process in dict.fromkeys(used):
            report.sections.append((f"log of {process.name}", process.log_tail()))
    return report
