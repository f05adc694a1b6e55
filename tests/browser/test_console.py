"""The console in a real browser (Playwright driving Debian's Chromium): signing in and out,
the command form, the live log, the balances, the balance chart, the statistics, and a
rebuild's progress.

Set EVENTLEDGER_CONSOLE_SCREENSHOT=path to save a screenshot of the live page (docs/console.png
is made that way)."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import httpx
import pytest

from tests.browser.conftest import ADMIN, READER, sign_in
from tests.e2e.harness import Credentials, ServiceProcess, System, new_id, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium_path")]  # skip before starting

SEED_ACCOUNTS = 10
SEED_DEPOSITS = 400  # per account: 4,010 events, so a rebuild's progress can be seen


def expect(page: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(page)


def send(page: Any, command: str, **fields: str) -> None:
    page.select_option("#command", command)
    for name, value in fields.items():
        page.fill(f"#{name.replace('_', '-')}", value)
    page.click("#submit")


def test_an_account_opened_and_funded_from_the_form_shows_in_the_log_and_the_balances(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    _, console = console_system
    account = new_id("web")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, console.url, credentials.tokens[ADMIN])
    expect(page.locator("#log-state")).to_have_text("live")
    # Offline-ready: the page asks nothing of any origin but the console's (no CDN).
    assert requested and all(
        url.startswith(console.url + "/") or url.startswith("data:") for url in requested
    ), requested

    send(page, "open", account_id=account, currency="EUR")
    expect(page.locator("#result-summary")).to_contain_text(f"open: {account}")
    expect(page.locator("#written")).to_contain_text("AccountOpened")
    opened = page.locator('#log tr[data-type="AccountOpened"]', has_text=f"account-{account}")
    expect(opened).to_have_count(1)

    send(page, "deposit", account_id=account, amount="1234", reference="from the browser")
    expect(page.locator("#result-summary")).to_contain_text("balance 1,234")
    written = page.locator("#written tbody tr")
    expect(written).to_have_count(1)
    expect(written).to_contain_text("MoneyDeposited")
    position = int(written.locator("td").nth(1).inner_text())
    # The read model catches up to the command's position (X-Min-Position), and says so.
    expect(page.locator("#catchup")).to_contain_text(f"has applied position {position}")
    expect(page.locator("#catchup")).to_contain_text("balance 1,234")
    # The event arrives in the live log (SSE) and the balance changes in the accounts table.
    deposited = page.locator(f'#log tr[data-position="{position}"]')
    expect(deposited).to_contain_text("MoneyDeposited")
    expect(deposited).to_contain_text(f"account-{account}")
    expect(page.locator(f'#accounts tr[data-account="{account}"] .balance')).to_have_text("1,234")

    if path := os.environ.get("EVENTLEDGER_CONSOLE_SCREENSHOT"):
        page.screenshot(path=path, full_page=True)

    # The account's page draws its balance over time.
    page.click(f'#accounts a:text-is("{account}")')
    expect(page.locator("#account-summary")).to_contain_text("balance 1,234")
    expect(page.locator("#chart svg circle")).to_have_count(1)


def test_a_refused_command_shows_the_problem_title_and_detail_and_writes_nothing(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    system, console = console_system
    account = new_id("web")
    sign_in(page, console.url, credentials.tokens[ADMIN])
    send(page, "open", account_id=account, currency="EUR")
    expect(page.locator("#result-summary")).to_contain_text(account)
    head = system.head_position()
    send(page, "withdraw", account_id=account, amount="5")
    expect(page.locator("#result [role=alert]")).to_contain_text("Insufficient funds: ")
    send(page, "deposit", account_id=account, amount="1.5")
    expect(page.locator("#result [role=alert]")).to_contain_text("whole number")
    assert system.head_position() == head


def test_the_statistics_page_draws_a_chart_per_currency(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    _, console = console_system
    sign_in(page, console.url, credentials.tokens[ADMIN])
    account = new_id("web")
    send(page, "open", account_id=account, currency="NOK")
    expect(page.locator("#result-summary")).to_contain_text(account)
    send(page, "deposit", account_id=account, amount="700")
    expect(page.locator("#catchup")).to_contain_text("has applied position")
    statistics = console.url + "/statistics"
    wait_for(  # asked with the page's session
        lambda: "NOK" in page.request.get(f"{console.url}/api/stats").text(),
        timeout=10.0,
        what="stats",
    )
    page.goto(statistics)
    figure = page.locator('#stats figure[data-currency="NOK"]')
    expect(figure.locator("svg rect")).to_have_count(3)
    expect(page.locator("#daily svg").first).to_be_visible()


def seed(system: System, credentials: Credentials) -> int:
    """Thousands of events written straight to the stream service; the head position."""
    with httpx.Client(timeout=30.0, headers=credentials.bearer("transaction")) as http:
        for _ in range(SEED_ACCOUNTS):
            account = new_id("seed")
            events: list[dict[str, Any]] = [
                {
                    "type": "AccountOpened",
                    "schema_version": 2,
                    "data": {
                        "account_id": account,
                        "currency": "EUR",
                        "overdraft_limit": 0,
                        "owner": None,
                    },
                }
            ]
            events += [
                {
                    "type": "MoneyDeposited",
                    "data": {
                        "account_id": account,
                        "transaction_id": str(uuid.uuid4()),
                        "amount": 1 + i,
                        "reference": None,
                    },
                }
                for i in range(SEED_DEPOSITS)
            ]
            answer = http.post(
                f"{system.stream.url}/streams/account-{account}",
                json={"expected_version": "no_stream", "events": events},
            )
            assert answer.status_code == 201, answer.text
    return system.head_position()


def test_a_rebuild_started_by_an_admin_shows_its_progress_until_caught_up(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    system, console = console_system
    head = seed(system, credentials)
    sign_in(page, console.url, credentials.tokens[ADMIN], then="/readmodels")
    card = page.locator("#rm-accounting")
    expect(card.locator("dd.position")).to_have_text(f"{head:,}", timeout=60_000)
    expect(page.locator("#admin-note")).to_be_hidden()  # an admin: nothing to explain

    # Made with the signed-in operator's own token, which the console keeps server-side.
    page.on("dialog", lambda dialog: dialog.accept())
    card.locator("button[data-action=rebuild]").click()
    expect(page.locator("#admin-ok")).to_contain_text("rebuild of accounting accepted")
    progress = page.locator("#rm-accounting progress.rebuild-progress")
    expect(progress).to_be_visible()
    expect(card.locator("dd.state")).to_have_text("rebuilding")
    assert int(progress.get_attribute("max") or 0) >= head
    assert int(progress.get_attribute("value") or 0) < head
    expect(card.locator("dd.state")).to_have_text("ok", timeout=120_000)
    expect(card.locator("dd.position")).to_have_text(re.compile(r"^[0-9,]+$"))
    assert int(card.locator("dd.position").inner_text().replace(",", "")) >= head
    expect(progress).to_have_count(0)
    # The token is nowhere in the console's log.
    assert credentials.tokens[ADMIN] not in console.log_text()


def test_a_blue_green_rebuild_started_by_an_admin_is_shown_until_its_version_is_live(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    system, console = console_system
    head = seed(system, credentials)
    sign_in(page, console.url, credentials.tokens[ADMIN], then="/readmodels")
    card = page.locator("#rm-statistics")
    expect(card.locator("dd.position")).to_have_text(f"{head:,}", timeout=60_000)
    expect(card.locator("button[data-action=cancel-rebuild]")).to_be_disabled()

    page.on("dialog", lambda dialog: dialog.accept())
    card.locator("button[data-action=rebuild-blue-green]").click()
    expect(page.locator("#admin-ok")).to_contain_text("rebuild blue/green of statistics accepted")
    # The live version serves all along (never "rebuilding"), then the new one takes over.
    line = card.locator("p.bluegreen")
    expect(line).to_have_attribute("data-state", "done", timeout=120_000)
    expect(line).to_contain_text(re.compile(r"blue/green: version \d+ live since "))
    expect(card.locator("dd.state")).to_have_text("ok")
    assert int(card.locator("dd.position").inner_text().replace(",", "")) >= head
    expect(card.locator("button[data-action=rebuild-blue-green]")).to_be_enabled()
    expect(card.locator("button[data-action=cancel-rebuild]")).to_be_disabled()


def test_the_console_asks_who_you_are_and_a_reader_sees_no_controls(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    _, console = console_system
    page.goto(console.url + "/statistics")
    expect(page).to_have_url(console.url + "/signin?next=/statistics")
    page.fill("#signin-token", "not-the-token-" + "x" * 40)
    page.click("#signin-submit")
    expect(page.locator("#signin-result [role=alert]")).to_contain_text("Not a valid token")
    assert page.locator("#signin-token").input_value() == ""  # no token left in the page

    page.fill("#signin-token", credentials.tokens[READER])
    page.click("#signin-submit")
    expect(page).to_have_url(console.url + "/statistics")
    expect(page.locator("#principal")).to_contain_text(f"signed in as {READER}")
    # The session is a cookie scripts cannot read, sent to this site only; never the token.
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert credentials.tokens[READER] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""
    # Read-only: no command form, no read model buttons.
    page.goto(console.url + "/")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#command-form")).to_have_count(0)
    expect(page.locator("#log-state")).to_have_text("live")
    page.goto(console.url + "/readmodels")
    expect(page.locator("#rm-accounting")).to_be_visible()
    expect(page.locator("#admin-note")).to_be_visible()
    expect(page.locator("#readmodels button")).to_have_count(0)

    page.click("#signout")
    expect(page).to_have_url(console.url + "/signin")
    page.goto(console.url + "/")
    expect(page).to_have_url(console.url + "/signin?next=/")


def test_a_sign_in_link_signs_in_and_leaves_no_token_in_the_address(
    console_system: tuple[System, ServiceProcess], credentials: Credentials, page: Any
) -> None:
    _, console = console_system
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{console.url}/signin?next=/readmodels#token={credentials.tokens[ADMIN]}")
    expect(page).to_have_url(console.url + "/readmodels")
    expect(page.locator("#principal")).to_contain_text(f"signed in as {ADMIN}")
    # The fragment never went to the server in a URL, and is out of the history.
    assert not any(credentials.tokens[ADMIN] in url for url in requested), requested
    page.go_back()
    assert credentials.tokens[ADMIN] not in page.url
