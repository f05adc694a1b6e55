"""The console's account page shows what two-phase transfers hold: the available balance
and the sums pending out and in, once a hold is placed (and nothing of it before)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.browser.conftest import ADMIN, sign_in
from tests.e2e.harness import Credentials, ServiceProcess, System, new_id

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium_path")]  # skip before starting


def expect(page: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(page)


def test_the_account_page_shows_what_is_available_while_a_transfer_is_held(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    system, console = console_system
    payer, payee = new_id("web-payer"), new_id("web-payee")
    position = 0
    with httpx.Client(timeout=30.0, headers=credentials.bearer(ADMIN)) as http:

        def command(path: str, body: dict[str, Any]) -> None:
            nonlocal position
            response = http.post(
                f"{system.transaction.url}{path}",
                json=body,
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert response.status_code == 201, response.text
            position = max(position, response.json()["position"])
            # The page reads the accounting service as it is: let it apply the command first.
            applied = http.get(
                f"{system.accounting.url}/accounts/{payer}",
                headers={"X-Min-Position": str(position)},
            )
            assert applied.status_code in (200, 404), applied.text

        for account in (payer, payee):
            command("/accounts", {"account_id": account, "currency": "EUR"})
        command(f"/accounts/{payer}/deposits", {"amount": 1000})
        sign_in(page, console.url, credentials.tokens[ADMIN])
        page.goto(f"{console.url}/accounts/{payer}")
        expect(page.locator("#account-summary")).to_contain_text("balance 1,000")
        expect(page.locator("#account-summary")).not_to_contain_text("available")

        command(
            "/transfers",
            {"from_account": payer, "to_account": payee, "amount": 400, "pending": True},
        )
    page.goto(f"{console.url}/accounts/{payer}")
    summary = page.locator("#account-summary")
    expect(summary).to_contain_text("balance 1,000")
    expect(summary).to_contain_text("available 600 (held: 400 out, 0 in)")
    page.goto(f"{console.url}/accounts/{payee}")
    expect(page.locator("#account-summary")).to_contain_text("available 0 (held: 0 out, 400 in)")
