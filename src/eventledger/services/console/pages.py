"""The console's pages, rendered here, and its assets, served from the package.

Each page is one HTML document with the same header (who is signed in and a Sign out button,
or the banner of an open console); its data comes from the console's own `/api/…` routes,
fetched and drawn by `static/console.js` (plain JavaScript, no build step, no CDN: the console
works offline). A control the viewer's scopes do not allow is not rendered (the command form
without `ledger:write`) or not drawn (the read models' buttons without `admin`); the routes
refuse them anyway (`signin.py`). Every page is sent with a Content-Security-Policy that allows
scripts, styles and connections from the console's own origin only, and no framing.
"""

from __future__ import annotations

from html import escape
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from eventledger.services.console.api import account_id
from eventledger.services.console.signin import Viewer, viewer

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


OPEN_BANNER = """<p id="open-banner" class="banner" role="note">This console is
<strong>open</strong>: the installation has no auth file, so anyone who can reach this address
can read the ledger and send commands through it. Keep it on 127.0.0.1.</p>"""


def who(seen: Viewer) -> str:
    """The header's right end: the signed-in principal and Sign out, or nothing."""
    if seen.name is None:
        return ""
    return (
        f'<span id="principal" class="muted">signed in as <strong>{escape(seen.name)}</strong>'
        '</span> <button id="signout" type="button">Sign out</button>'
    )


def layout(
    page: str, title: str, body: str, seen: Viewer, *, nav_shown: bool = True, **data: str
) -> HTMLResponse:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == page else ""}>{label}</a>'
        for href, key, label in (NAV if nav_shown else ())
    )
    data["scopes"] = " ".join(sorted(seen.scopes))
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
<span id="connection" class="muted">connecting…</span> {who(seen)}</header>
{OPEN_BANNER if seen.open else ""}<main>
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

_FORM = LIVE[: LIVE.index('<section class="card">\n<h2>Accounts')]

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
<p id="admin-note" class="muted">Rebuilds (in place or blue/green), skip and park are made
with your own token, which needs the <code>admin</code> scope.</p>
<div id="readmodels"></div>
<div id="admin-result" aria-live="polite"></div>
</section>
"""


SIGNIN = """
<section class="card">
<h2>Sign in</h2>
<form id="signin-form" autocomplete="off">
<label>Token <input id="signin-token" type="password" autocomplete="off" maxlength="1024"
 placeholder="an eventledger token with ledger:read"></label>
<button id="signin-submit" type="submit">Sign in</button>
</form>
<div id="signin-result" aria-live="polite"></div>
<p class="muted">Under <code>eventledger up</code>, the CLI's token is in
<code>eventledger-data/tokens/cli.token</code>; any token of the auth file with
<code>ledger:read</code> will do (<code>eventledger token create --name NAME --scope
ledger:read --auth-file eventledger-data/auth.json</code>). The console checks it, keeps it on
the server for this session only and gives your browser a session cookie, never the token.</p>
</section>
"""

SIGNIN_OPEN = """
<section class="card">
<h2>No sign-in here</h2>
<p>This console has no auth file: there is nothing to sign in to. <a href="/">Go to the
console</a>.</p>
</section>
"""

READ_ONLY = """
<section id="commands" class="card">
<h2>Command</h2>
<p id="read-only" class="muted">You may read only: the command form needs the
<code>ledger:write</code> scope.</p>
</section>
"""


def add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def live(request: Request) -> HTMLResponse:
        seen = viewer(request)
        body = LIVE if "ledger:write" in seen.scopes else LIVE.replace(_FORM, READ_ONLY, 1)
        return layout("live", "Live", body, seen)

    @app.get("/accounts/{account}", include_in_schema=False)
    async def account(request: Request, account: str) -> HTMLResponse:
        name = account_id(account)
        return layout("account", f"Account {name}", ACCOUNT, viewer(request), account=account)

    @app.get("/statistics", include_in_schema=False)
    async def statistics(request: Request) -> HTMLResponse:
        return layout("statistics", "Statistics", STATISTICS, viewer(request))

    @app.get("/readmodels", include_in_schema=False)
    async def readmodels(request: Request) -> HTMLResponse:
        return layout("readmodels", "Read models", READMODELS, viewer(request))

    @app.get("/signin", include_in_schema=False)
    async def signin(request: Request) -> HTMLResponse:
        seen = viewer(request)
        body = SIGNIN_OPEN if seen.open else SIGNIN
        return layout("signin", "Sign in", body, seen, nav_shown=False)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            return Response("not found", status_code=404, media_type="text/plain")
        content = resources.files(__package__).joinpath("static", name).read_bytes()
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return Response(content, media_type=ASSETS[name], headers=headers)
