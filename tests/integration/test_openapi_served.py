"""A real `eventledger serve stream --log-format json --log-requests` process, secured: its log
is JSON lines with timestamps and request ids and never a token, and its `/docs` renders in
Chromium with every request to any other host blocked (Swagger UI comes from the service).

The browser test is skipped with the reason shown without /usr/bin/chromium or the
`playwright` package, and fails for that in CI (`CI=true`), like tests/browser."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Credentials, ServiceProcess, make_credentials

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("EVENTLEDGER_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("auth"), users={"reader": ["events:read"]})


@pytest.fixture(scope="module")
def stream(
    tmp_path_factory: pytest.TempPathFactory, credentials: Credentials
) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("served")
    args = ["--auth-file", str(credentials.auth_file), "--log-format", "json", "--log-requests"]
    service = ServiceProcess("stream", root / "stream", root / "logs", args)
    try:
        yield service.start().wait_healthy()
    finally:
        service.stop()


def json_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = [line for line in service.log_text().splitlines() if not line.startswith("--- ")]
    return [json.loads(line) for line in lines if line.strip()]


def test_the_log_is_json_lines_with_times_and_request_ids_and_no_token(
    stream: ServiceProcess, credentials: Credentials
) -> None:
    token = credentials.tokens["reader"]
    with httpx.Client(base_url=stream.url, timeout=10) as http:
        read = http.get(
            "/events?after=0",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "served-read-1"},
        )
        refused = http.get("/events", headers={"Authorization": "Bearer not-a-valid-token-x"})
    assert read.status_code == 200 and read.headers["x-request-id"] == "served-read-1"
    assert refused.status_code == 401
    generated = refused.headers["x-request-id"]
    stream.stop()  # the log is complete once the process has exited
    stream.start().wait_healthy()
    lines = json_lines(stream)  # every line parses: nothing but JSON lines
    assert lines and all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines
    )
    assert {line["service"] for line in lines} == {"stream"}
    requests = {line["request_id"]: line for line in lines if line["message"] == "request"}
    assert requests["served-read-1"] | {"ms": 0} == {
        "time": requests["served-read-1"]["time"],
        "level": "INFO",
        "logger": "eventledger.requests",
        "service": "stream",
        "message": "request",
        "method": "GET",
        "path": "/events",
        "status": 200,
        "ms": 0,
        "request_id": "served-read-1",
    }
    assert requests[generated]["status"] == 401
    text = stream.log_text()
    assert token not in text and "not-a-valid-token-x" not in text


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def test_docs_render_in_a_browser_with_every_other_host_blocked(stream: ServiceProcess) -> None:
    why = _browser_missing()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the /docs browser test cannot run in CI: {why}")
        pytest.skip(f"browser test skipped: {why}")
    from playwright.sync_api import Route, sync_playwright

    document = httpx.get(f"{stream.url}/openapi.json", timeout=10).json()
    operations = sum(len(item) for item in document["paths"].values())
    elsewhere: list[str] = []
    failed: list[str] = []

    def only_the_service(route: Route) -> None:
        if route.request.url.startswith(f"{stream.url}/"):
            route.continue_()
        else:  # a CDN, a validator badge, fonts: none may be needed
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", only_the_service)
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(f"{stream.url}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            assert page.locator(".opblock").count() == operations
            assert page.locator("button.authorize").count() == 1  # the bearer scheme
            assert page.title() == "eventledger stream service - API docs"
        finally:
            browser.close()
    assert elsewhere == [] and failed == []
