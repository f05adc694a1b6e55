"""The console's pages, rendered here, and its assets, served from the package.

Each page is one HTML document with the same header; its data comes from the console's own
`/api/…` routes, fetched and drawn by `static/console.js` (plain JavaScript, no build step, no
CDN: the console works offline). Every page is sent with a Content-Security-Policy that allows
scripts, styles and connections from the console's own origin only, and no framing.
"""

from __future__ import annotations

from html import escape
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from eventledger.services.console.api import account_id

ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = (
    ("/", "live", "Live"),
    ("/statistics", "statistics", "Statistics"),
    ("/readmodels", "readmodels", "Read models"),
)


def layout(page: str, title: str, body: str, **data: str) -> HTMLResponse:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == page else ""}>{label}</a>'
        for href, key, label in NAV
    )
    attributes = "".join(f' data-{k.replace("_", "-")}="{escape(v)}"' for k, v in data.items())
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · eventledger console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script>
</head>
<body data-page="{page}"{attributes}>
<header><strong>eventledger</strong> console <nav>{nav}</nav>
<span id="connection" class="muted">connecting…</span></header>
<main>
{body}
</main>
</body>
</html>
"""
    return HTMLResponse(html, headers=SECURITY_HEADERS)


LIVE = """
<section id="commands" class="card">
<h2>Command</h2>
<form id="command-form" autocomplete="off">
<label>Command <select id="command" name="command">
<option value="open">open an account</option>
<option value="deposit">deposit</option>
<option value="withdraw">withdraw</option>
<option value="transfer">transfer</option>
</select></label>
<label data-for="open deposit withdraw transfer">Account <input id="account-id"
 name="account_id" maxlength="64" placeholder="generated when empty"></label>
<label data-for="transfer">To account <input id="to-account" name="to_account"
 maxlength="64"></label>
<label data-for="open">Currency <input id="currency" name="currency" maxlength="3"
 value="EUR"></label>
<label data-for="open">Overdraft limit <input id="overdraft" name="overdraft_limit"
 inputmode="numeric" value="0"></label>
<label data-for="deposit withdraw transfer">Amount (minor units) <input id="amount"
 name="amount" inputmode="numeric"></label>
<label data-for="deposit withdraw transfer">Reference <input id="reference" name="reference"
 maxlength="256"></label>
<button id="submit" type="submit">Send</button>
</form>
<div id="result" aria-live="polite"></div>
</section>
<section class="card">
<h2>Accounts</h2>
<table id="accounts"><thead><tr><th>account</th><th>currency</th><th class="num">balance
 (minor units)</th><th>status</th><th class="num">version</th></tr></thead><tbody></tbody>
</table>
</section>
<section class="card wide">
<h2>Live event log <small id="log-state" class="muted"></small></h2>
<table id="log"><thead><tr><th class="num">position</th><th>stream</th>
<th class="num">version</th><th>type</th><th>recorded at</th></tr></thead><tbody></tbody>
</table>
</section>
"""

ACCOUNT = """
<section class="card wide">
<h2>Account <span id="account-name"></span></h2>
<p id="account-summary" class="muted">loading…</p>
<h3>Balance over time</h3>
<div id="chart" class="chart"></div>
<h3>Transactions</h3>
<table id="transactions"><thead><tr><th class="num">position</th><th>recorded at</th>
<th>kind</th><th class="num">amount</th><th class="num">balance after</th><th>reference</th>
</tr></thead><tbody></tbody></table>
</section>
"""

STATISTICS = """
<section class="card wide">
<h2>Per currency</h2>
<div id="stats" class="charts"><p class="muted">loading…</p></div>
</section>
<section class="card wide">
<h2>The last 30 days (volume per day)</h2>
<div id="daily" class="charts"><p class="muted">loading…</p></div>
</section>
"""

READMODELS = """
<section class="card wide">
<h2>Read models</h2>
<form id="token-form" autocomplete="off">
<label>Admin token <input id="admin-token" type="password" autocomplete="off"
 placeholder="a token with the admin scope"></label>
<button type="submit">Keep for this tab</button>
<button id="forget-token" type="button">Forget</button>
<span id="token-state" class="muted"></span>
</form>
<p class="muted">The token stays in this tab (sessionStorage) and is sent to the console
with each button's request only; the console passes it on and never keeps it.</p>
<div id="readmodels"></div>
<div id="admin-result" aria-live="polite"></div>
</section>
"""


def add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def live() -> HTMLResponse:
        return layout("live", "Live", LIVE)

    @app.get("/accounts/{account}", include_in_schema=False)
    async def account(account: str) -> HTMLResponse:
        return layout("account", f"Account {account_id(account)}", ACCOUNT, account=account)

    @app.get("/statistics", include_in_schema=False)
    async def statistics() -> HTMLResponse:
        return layout("statistics", "Statistics", STATISTICS)

    @app.get("/readmodels", include_in_schema=False)
    async def readmodels() -> HTMLResponse:
        return layout("readmodels", "Read models", READMODELS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            return Response("not found", status_code=404, media_type="text/plain")
        content = resources.files(__package__).joinpath("static", name).read_bytes()
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return Response(content, media_type=ASSETS[name], headers=headers)
