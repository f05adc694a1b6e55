"""A halted read model in the console: its halt shown, skip and park enabled, and a click of
an operator signed in with the admin scope gets each read model past the event, audited with
the reason."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ADMIN, sign_in, start_console
from tests.e2e.harness import (
    HTTP,
    Credentials,
    ServiceProcess,
    System,
    new_id,
    start_system,
    wait_for,
)
from tests.e2e.test_halts import halted_at, write_behind_the_stream_service

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium_path")]  # skip before starting


@pytest.fixture
def halted(
    request: pytest.FixtureRequest, tmp_path: Path, credentials: Credentials
) -> Iterator[tuple[System, ServiceProcess, int]]:
    """A system whose read models halted on an event at the returned position."""
    with ExitStack() as stack:
        # SQLite: the bad event is written into the stopped stream service's file.
        system = start_system(request, stack, tmp_path, "sqlite", credentials=credentials)
        console = start_console(system, credentials, tmp_path, stack)
        bearer = credentials.bearer("cli")
        account = new_id("halt")
        for path, body in (
            ("/accounts", {"account_id": account, "currency": "EUR"}),
            (f"/accounts/{account}/deposits", {"amount": 100}),
        ):
            answer = HTTP.post(f"{system.transaction.url}{path}", json=body, headers=bearer)
            assert answer.status_code == 201, answer.text
        # In a thread: Playwright's sync API keeps an event loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            bad = pool.submit(write_behind_the_stream_service, system).result()
        for service in (system.accounting, system.statistics):
            wait_for(lambda s=service: halted_at(s.url, bad), timeout=30, what="a halt")
        yield system, console, bad


def test_skip_and_park_from_the_console_get_the_read_models_past_a_halt(
    halted: tuple[System, ServiceProcess, int], credentials: Credentials, page: Any
) -> None:
    from playwright.sync_api import expect

    system, console, bad = halted
    sign_in(page, console.url, credentials.tokens[ADMIN], then="/readmodels")
    page.on("dialog", lambda dialog: dialog.accept("a deposit to an account never opened"))
    for name, action in (("accounting", "skip"), ("statistics", "park")):
        card = page.locator(f"#rm-{name}")
        expect(card.locator("dd.halted")).to_contain_text(str(bad), timeout=30_000)
        button = card.locator(f"button[data-action={action}]")
        expect(button).to_be_enabled()
        button.click()
        expect(page.locator("#admin-ok")).to_contain_text(f"{action} of {name} accepted")
        expect(card.locator("dd.halted")).to_have_count(0, timeout=30_000)
        expect(card.locator("button[data-action=skip]")).to_be_disabled()
        decisions = HTTP.get(
            f"{getattr(system, name).url}/admin/decisions",
            headers=credentials.bearer("operator"),
        ).json()["items"]
        assert [(d["action"], d["position"], d["reason"]) for d in decisions] == [
            (action, bad, "a deposit to an account never opened")
        ]
        assert decisions[0]["by"].startswith("operator")
