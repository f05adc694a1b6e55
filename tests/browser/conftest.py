"""Fixtures of the browser suite: the four services and the console as real processes, with
tokens as under `eventledger up`, and Playwright driving Debian's Chromium. The console asks
who you are: `sign_in` (a page) and `signed_in_client` (httpx) sign in with a token first.

Without /usr/bin/chromium or the `playwright` package the suite is skipped with the reason
shown; in CI (`CI=true`, where `.ci/run` installs Chromium) either one missing is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Credentials, ServiceProcess, System, make_credentials, start_system

CHROMIUM = Path(os.environ.get("EVENTLEDGER_CHROMIUM", "/usr/bin/chromium"))
ADMIN = "operator"  # may read, command and rebuild: what `up`'s CLI token may, but metrics
READER = "reader"  # may only read


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    why = _missing()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run in CI: {why}")
        pytest.skip(f"browser tests skipped: {why}")
    return CHROMIUM


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(
        tmp_path_factory.mktemp("auth"),
        users={ADMIN: ["ledger:read", "ledger:write", "admin"], READER: ["ledger:read"]},
    )


def sign_in(page: Any, console_url: str, token: str, then: str = "/") -> None:
    """Sign `page` in at the console through its sign-in form, landing on `then`."""
    from playwright.sync_api import expect

    page.goto(f"{console_url}/signin?next={then}")
    page.fill("#signin-token", token)
    page.click("#signin-submit")
    expect(page).to_have_url(console_url + then)


@contextmanager
def signed_in_client(console_url: str, token: str, **kwargs: Any) -> Iterator[httpx.Client]:
    """An httpx client holding a session of the console's (its cookie)."""
    with httpx.Client(base_url=console_url, **kwargs) as http:
        answer = http.post("/api/session", json={"token": token})
        assert answer.status_code == 200, answer.text
        yield http


def start_console(
    system: System, credentials: Credentials, root: Path, stack: ExitStack
) -> ServiceProcess:
    args = [
        "--stream-url",
        system.stream.url,
        "--transaction-url",
        system.transaction.url,
        "--accounting-url",
        system.accounting.url,
        "--statistics-url",
        system.statistics.url,
        "--auth-file",
        str(credentials.auth_file),
        "--stream-token-file",
        str(credentials.token_files["console"]),
    ]
    console = ServiceProcess("console", root / "console", root / "logs", args)
    stack.callback(console.stop)
    return console.start().wait_healthy()


@pytest.fixture(scope="session")
def console_system(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    credentials: Credentials,
) -> Iterator[tuple[System, ServiceProcess]]:
    root = tmp_path_factory.mktemp("console")
    with ExitStack() as stack:
        system = start_system(request, stack, root, "sqlite", credentials=credentials)
        yield system, start_console(system, credentials, root, stack)


# Package scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it lives, and every asyncio test after it would fail ("Runner.run() cannot be
# called from a running event loop"). It must stop before the next package's tests start.
@pytest.fixture(scope="package")
def browser(chromium_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(chromium_path),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: Any) -> None:
        # Chromium logs every 4xx answer to fetch as an error; a refused command is one.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"
