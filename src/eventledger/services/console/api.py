"""The console's JSON routes, called by its own pages (same origin), answered server-side.

* `GET /api/events/recent`, `GET /api/events/live` (SSE, relayed from the stream service);
* `GET /api/accounts`, `/api/accounts/{id}` (`min_position` → `X-Min-Position`),
  `/api/accounts/{id}/history` (the balance after each transaction, oldest first);
* `GET /api/stats`, `/api/stats/daily`; `GET /api/readmodels` (position, lag, state, rebuild);
* `POST /api/readmodels/{name}/rebuild|skip|park|cancel-rebuild`: the read model's admin
  call (`rebuild` takes `{"mode": "blue-green"}` too; `cancel-rebuild` is its `DELETE
  /admin/rebuild`), made with the signed-in operator's token (kept server-side in the
  session; `signin.py` checked that it has `admin`), never the console's own;
* `POST /api/commands/open|deposit|withdraw|transfer`: the command, then the events it wrote.

Every input is validated here before anything is sent on (ids by the API's pattern, bodies by
strict models); a service's refusal comes back as its own problem document.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from eventledger.services.console.signin import operator_authorization
from eventledger.services.console.upstream import Answer, Upstream
from eventledger.services.http import ProblemError, StrictModel, problem_response, read_model
from eventledger.services.readside.admin import DecisionBody
from eventledger.services.readside.http import MAX_POS, int_param, invalid_param
from eventledger.services.transaction.schemas import (
    ACCOUNT_ID_PATTERN,
    AccountId,
    Amount,
    OpenAccountBody,
    Reference,
    TransferBody,
)

READ_MODELS = ("accounting", "statistics")
ACTIONS = ("rebuild", "skip", "park", "cancel-rebuild")
RECENT_EVENTS = 50
HISTORY_PAGE = 100
HISTORY_PAGES = 10  # the chart draws at most the last 1,000 transactions
MAX_LIVE_FEEDS = 32  # browser tabs following the log at once, each one upstream feed
EVENTS_WINDOW = 8  # a command writes at most this many events, ending at its position
_ACCOUNT_ID = re.compile(ACCOUNT_ID_PATTERN)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class MoneyCommand(StrictModel):
    """The form's deposit or withdrawal."""

    account_id: AccountId
    amount: Amount
    reference: Reference = None


class RebuildBody(StrictModel):
    """A rebuild: `{}` (in place) or `{"mode": "blue-green"}` (beside the live version)."""

    mode: Literal["in-place", "blue-green"] = "in-place"


class CancelBody(StrictModel):
    """Cancelling a blue/green rebuild takes no parameters: `{}`."""


def account_id(value: str, field: str = "account_id") -> str:
    if _ACCOUNT_ID.fullmatch(value) is None:
        raise invalid_param(field, "must be 1-64 letters, digits, '_', '.', '-'")
    return value


def relay(answer: Answer) -> Response:
    """A service's answer as the console's: the same status and JSON document."""
    if answer.ok:
        return JSONResponse(answer.body, status_code=answer.status)
    body = answer.body if isinstance(answer.body, dict) else {}
    headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail")}
    return problem_response(
        answer.status,
        str(body.get("type", "upstream-error")),
        str(body.get("title", f"HTTP {answer.status}")),
        str(body.get("detail", body.get("title", f"HTTP {answer.status}"))),
        headers,
        **extra,
    )


def summary(envelope: dict[str, Any]) -> dict[str, Any]:
    """What the console shows of an event (no hash, no metadata)."""
    return {
        key: envelope.get(key)
        for key in ("position", "stream", "stream_version", "type", "recorded_at", "data")
    }


def add_api_routes(app: FastAPI, upstream: Upstream) -> None:
    add_event_routes(app, upstream)
    add_query_routes(app, upstream)
    add_readmodel_routes(app, upstream)
    add_command_routes(app, upstream)


# -- the log ----------------------------------------------------------------------------------


def add_event_routes(app: FastAPI, upstream: Upstream) -> None:
    live = {"feeds": 0}

    @app.get("/api/events/recent", include_in_schema=False)
    async def recent(limit: str | None = None) -> Response:
        count = int_param("limit", limit, default=RECENT_EVENTS, minimum=1, maximum=500)
        health = await upstream.get("stream", "/health", timeout=2.0)
        if not health.ok:
            return relay(health)
        head = int(health.body.get("head_position") or 0)
        after = max(0, head - count)
        page = await upstream.get("stream", "/events", params={"after": after, "limit": count})
        if not page.ok:
            return relay(page)
        events = [summary(e) for e in page.body.get("events", [])]
        return JSONResponse({"events": events, "head_position": head})

    @app.get("/api/events/live", include_in_schema=False)
    async def follow(
        after: str | None = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """The stream service's feed, relayed as `id: position` and `data: summary`."""
        # A reconnecting EventSource says where it was in Last-Event-ID: that wins.
        start = int_param("after", after, default=0, minimum=0, maximum=MAX_POS)
        if last_event_id is not None:
            start = int_param("Last-Event-ID", last_event_id, default=0, minimum=0, maximum=MAX_POS)
        if live["feeds"] >= MAX_LIVE_FEEDS:
            raise ProblemError(
                503,
                "too-many-subscribers",  # as the stream service says it
                "Too many live logs",
                f"the console relays at most {MAX_LIVE_FEEDS} live logs at once: close a tab",
                headers={"Retry-After": "5"},
            )
        response = await upstream.subscribe(start)
        live["feeds"] += 1

        async def frames() -> AsyncIterator[bytes]:
            data: list[bytes] = []
            try:
                async for line in upstream.sse_lines(response):
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b":"):
                        yield b": heartbeat\n\n"
                    elif line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif not line and data:
                        try:
                            envelope = json.loads(b"\n".join(data))
                            position = int(envelope["position"])
                        except (ValueError, KeyError, TypeError):
                            return  # not an event: end, and let the browser reconnect
                        data = []
                        body = json.dumps(summary(envelope), separators=(",", ":"))
                        yield f"id: {position}\ndata: {body}\n\n".encode()
            finally:
                live["feeds"] -= 1

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


# -- the read models' queries -----------------------------------------------------------------


def add_query_routes(app: FastAPI, upstream: Upstream) -> None:
    @app.get("/api/accounts", include_in_schema=False)
    async def accounts(limit: str | None = None, after: str | None = None) -> Response:
        params: dict[str, str | int] = {
            "limit": int_param("limit", limit, default=100, minimum=1, maximum=1000)
        }
        if after is not None:
            params["after"] = account_id(after, "after")
        return relay(await upstream.get("accounting", "/accounts", params=params))

    @app.get("/api/accounts/{account}", include_in_schema=False)
    async def account(account: str, min_position: str | None = None) -> Response:
        floor = int_param("min_position", min_position, default=0, minimum=0, maximum=MAX_POS)
        headers = {"X-Min-Position": str(floor)} if floor else None
        return relay(
            await upstream.get("accounting", f"/accounts/{account_id(account)}", headers=headers)
        )

    @app.get("/api/accounts/{account}/history", include_in_schema=False)
    async def history(account: str) -> Response:
        """The balance after each transaction, oldest first (the last 1,000 at most)."""
        path = f"/accounts/{account_id(account)}/transactions"
        items: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"limit": HISTORY_PAGE}
        for _ in range(HISTORY_PAGES):
            page = await upstream.get("accounting", path, params=params)
            if not page.ok:
                return relay(page)
            items.extend(page.body.get("items", []))
            cursor = page.body.get("next")
            if not cursor:
                break
            params["before"] = str(cursor)
        points = [
            {
                "position": item.get("position"),
                "recorded_at": item.get("recorded_at"),
                "balance": item.get("balance_after"),
                "amount": item.get("amount"),
                "kind": item.get("kind"),
                "reference": item.get("reference"),
            }
            for item in reversed(items)
        ]
        return JSONResponse({"account_id": account, "points": points})

    @app.get("/api/stats", include_in_schema=False)
    async def stats() -> Response:
        return relay(await upstream.get("statistics", "/stats"))

    @app.get("/api/stats/daily", include_in_schema=False)
    async def daily(
        from_: Annotated[str | None, Query(alias="from")] = None, to: str | None = None
    ) -> Response:
        params: dict[str, str | int] = {}
        for name, value in (("from", from_), ("to", to)):
            if value is not None:
                if _DATE.fullmatch(value) is None:
                    raise invalid_param(name, "must be a date YYYY-MM-DD")
                params[name] = value
        return relay(await upstream.get("statistics", "/stats/daily", params=params))


# -- the read models' state and the operator's buttons ----------------------------------------


async def readmodel_state(upstream: Upstream, name: str) -> dict[str, Any]:
    """Position, lag and state of one read model, from its /health (200 or 503 alike)."""
    try:
        answer = await upstream.get(name, "/health", timeout=2.0)
    except ProblemError as exc:
        return {"name": name, "reachable": False, "state": "unreachable", "reason": exc.detail}
    return state_of(name, answer)


def state_of(name: str, answer: Answer) -> dict[str, Any]:
    """What the page shows of a read model's health document (also a rebuild's 202)."""
    body = answer.body if isinstance(answer.body, dict) else {}
    checkpoint = body.get("checkpoint") or {}
    return {
        "name": name,
        "reachable": True,
        # a 200 says `status`; a 503 is a problem document, whose `status` is the HTTP code
        "state": next(
            (v for v in (body.get("state"), body.get("status")) if isinstance(v, str)),
            f"HTTP {answer.status}",
        ),
        "position": body.get("position"),
        "head_position": body.get("head_position"),
        "lag": body.get("lag"),
        "halted": body.get("halted"),
        "rebuilding": bool(body.get("rebuilding")),
        "rebuild_until": checkpoint.get("rebuild_until"),
        "blue_green": body.get("blue_green"),
        "decisions": body.get("decisions"),
        "reason": body.get("reason"),
    }


def add_readmodel_routes(app: FastAPI, upstream: Upstream) -> None:
    @app.get("/api/readmodels", include_in_schema=False)
    async def readmodels() -> JSONResponse:
        return JSONResponse({"items": [await readmodel_state(upstream, n) for n in READ_MODELS]})

    @app.post("/api/readmodels/{name}/{action}", include_in_schema=False)
    async def operate(name: str, action: str, request: Request) -> Response:
        if name not in READ_MODELS:
            raise invalid_param("name", f"must be one of {', '.join(READ_MODELS)}")
        if action not in ACTIONS:
            raise invalid_param("action", f"must be one of {', '.join(ACTIONS)}")
        kind: type[RebuildBody | CancelBody | DecisionBody] = DecisionBody
        if action in ("rebuild", "cancel-rebuild"):
            kind = RebuildBody if action == "rebuild" else CancelBody
        body: RebuildBody | CancelBody | DecisionBody = await read_model(request, kind)
        answer = await upstream.call(
            "DELETE" if action == "cancel-rebuild" else "POST",
            name,
            "/admin/rebuild" if action == "cancel-rebuild" else f"/admin/{action}",
            body=body.model_dump(exclude_defaults=True),
            # the operator's token (None on an open console, whose services need none)
            authorization=operator_authorization(request),
        )
        if not answer.ok:
            return relay(answer)
        if action == "rebuild" and "blue_green" not in (answer.body or {}):
            # an in-place rebuild's 202 is the health: the progress from 0
            return JSONResponse(state_of(name, answer), status_code=answer.status)
        if action in ("rebuild", "cancel-rebuild"):
            # a blue/green start or cancel: the health, which shows the build from now on
            return JSONResponse(await readmodel_state(upstream, name), status_code=answer.status)
        return relay(answer)


# -- the command form -------------------------------------------------------------------------

Command = Literal["open", "deposit", "withdraw", "transfer"]


async def events_written(upstream: Upstream, position: int) -> list[dict[str, Any]]:
    """The events of the command whose last event is at `position`: those just before it
    that share its causation id (the command's id)."""
    after = max(0, position - EVENTS_WINDOW)
    page = await upstream.get("stream", "/events", params={"after": after, "limit": EVENTS_WINDOW})
    if not page.ok:
        return []
    window = [e for e in page.body.get("events", []) if e.get("position", 0) <= position]
    last = next((e for e in window if e.get("position") == position), None)
    if last is None:
        return []
    cause = (last.get("metadata") or {}).get("causation_id")
    return [summary(e) for e in window if (e.get("metadata") or {}).get("causation_id") == cause]


def add_command_routes(app: FastAPI, upstream: Upstream) -> None:
    @app.post("/api/commands/{command}", include_in_schema=False)
    async def command(
        command: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Response:
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            if _KEY.fullmatch(idempotency_key) is None:
                raise invalid_param("Idempotency-Key", "must be 1-255 visible ASCII characters")
            headers["Idempotency-Key"] = idempotency_key
        body: StrictModel
        if command == "open":
            body = await read_model(request, OpenAccountBody)
            path = "/accounts"
        elif command in ("deposit", "withdraw"):
            money = await read_model(request, MoneyCommand)
            body = money
            kind = "deposits" if command == "deposit" else "withdrawals"
            path = f"/accounts/{account_id(money.account_id)}/{kind}"
        elif command == "transfer":
            body = await read_model(request, TransferBody)
            path = "/transfers"
        else:
            raise invalid_param("command", "must be one of open, deposit, withdraw, transfer")
        sent = body.model_dump(exclude_none=True)
        if command in ("deposit", "withdraw"):
            del sent["account_id"]  # it is in the path
        answer = await upstream.call(
            "POST", "transaction", path, body=sent, headers=headers or None
        )
        if not answer.ok:
            return relay(answer)
        result = answer.body
        position = int(result.get("position") or 0)
        return JSONResponse(
            {
                "command": command,
                "status": answer.status,
                "result": result,
                "position": position,
                "account_id": result.get("account_id") or result.get("from_account"),
                "events": await events_written(upstream, position) if position else [],
            },
            status_code=answer.status,
        )
