"""The browser console (`eventledger serve console`, started by `up` on 8005).

* `app.py` — the service: its token, its lifespan, /health, /metrics behind the `metrics` scope;
* `signin.py` — who is at the console: sign-in with a token, the session guard, scopes per route;
* `sessions.py` — the server-side sessions and the failed sign-ins' limiter (bounded, timed);
* `upstream.py` — its client of the four services (aiohttp, server-side, its own token);
* `api.py` — the JSON routes its pages call: the live log (SSE relayed), accounts, statistics,
  read models and the operator's buttons, the command form;
* `pages.py` — the server-rendered pages and the assets in `static/` (no CDN, no build step).
"""
