"""The CPU cost of each layer of a read over HTTP: `python -m bench.edge [--requests N]`.

`GET /accounts/{id}` of the accounting service, built as `eventledger serve` builds it (tokens,
Host/Origin guard, limits), on a SQLite read model of one account, driven as ASGI in this
process; each layer is timed alone (process CPU time per request, best of three):

* each middleware: its own cost around an app that answers at once;
* routing: the router finding the route among all the app's routes;
* the query: one read snapshot per request (`runner.snapshot`), and grouped (`GroupedReads`),
  one at a time and 32 at once;
* encoding: `JSONResponse` and `send_json`;
* the whole app, one request at a time and 32 at once, with the plain ASGI route in front
  of the documented one (services/asgi.py) and with the documented FastAPI route alone
  (dependency injection, `Request`, `JSONResponse`).

With `--server`, also the server alone: an app that answers the same bytes at once, under
uvicorn as `serve` runs it, read by 32 aiohttp clients from another process. Nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from eventledger import bootstrap
from eventledger.config import load_settings
from eventledger.credentials import add_token
from eventledger.services.accounting import queries
from eventledger.services.accounting.app import _account_json
from eventledger.services.accounting.store import ACCOUNT_COLUMNS
from eventledger.services.asgi import send_json
from eventledger.services.limits import install_limits
from eventledger.services.readside.http import Reads
from eventledger.services.readside.runner import ProjectionRunner

PORT = 8003
CONCURRENT = 32
ACCOUNT = (
    "acc-1", "EUR", 100, 0, None, "open", 2, "2026-01-01T00:00:00Z", 1,
    "2026-01-01T00:00:00Z", 2, 0, 0,
)  # fmt: skip

Call = Callable[[], Awaitable[Any]]


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(_: Message) -> None:
    return None


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def accounting(root: Path) -> tuple[FastAPI, ProjectionRunner, Scope]:
    """The service as `serve` builds it, started, with one account; a request's scope."""
    auth = root / "auth.json"
    token = add_token(auth, "bench", ["ledger:read"])
    flags = {
        "service": "accounting",
        "data_dir": str(root),
        "auth_file": str(auth),
        "stream_url": "http://127.0.0.1:9",  # nothing there: the read model stays as made
        "host": "127.0.0.1",
        "port": PORT,
    }
    settings = load_settings(flags, env={})
    app = bootstrap.build_app("accounting", settings)
    install_limits(app, settings.limits, settings.host)
    runner: ProjectionRunner = app.state.runner
    await runner.start()

    def insert() -> None:
        with runner.db.transaction() as tx:
            marks = ", ".join("?" * len(ACCOUNT))
            tx.execute(f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ({marks})", ACCOUNT)

    await asyncio.to_thread(insert)
    headers = [
        (b"host", f"127.0.0.1:{PORT}".encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"accept", b"*/*"),
    ]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/accounts/acc-1",
        "raw_path": b"/accounts/acc-1",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", PORT),
        "app": app,
    }
    return app, runner, scope


async def cpu_us(call: Call, requests: int, concurrent: int = 1) -> float:
    """Process CPU µs per call of `call`, `concurrent` callers at once; best of three."""
    each = max(requests // concurrent, 1)

    async def caller() -> None:
        for _ in range(each):
            await call()

    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        await asyncio.gather(*(caller() for _ in range(concurrent)))
        best = min(best, (time.process_time() - started) / (each * concurrent) * 1e6)
    return best


def asgi(app: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope) -> Call:
    return lambda: app(dict(scope), _receive, _drop)


async def rows(requests: int) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory(prefix="eventledger-bench-edge-") as directory:
        app, runner, scope = await accounting(Path(directory))
        try:
            return await _layers(app, runner, scope, requests)
        finally:
            await runner.stop()


async def _layers(
    app: FastAPI, runner: ProjectionRunner, scope: Scope, requests: int
) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    await app(dict(scope), _receive, _drop)  # builds the middleware stack
    bare = await cpu_us(asgi(_answer, scope), requests)
    layer: Any = app.middleware_stack
    while layer is not None and layer is not app.router:
        inner, layer.app = layer.app, _answer
        try:
            own = await cpu_us(asgi(layer, scope), requests) - bare
        finally:
            layer.app = inner
        out.append((f"middleware {type(layer).__name__}", own))
        layer = inner

    def match() -> None:
        for route in app.router.routes:
            if route.matches(scope)[0] is Match.FULL:
                return

    async def routing() -> None:
        match()

    out.append(("routing: find the route among all of the app's", await cpu_us(routing, requests)))

    def query(session: Any) -> Any:
        return queries.get_account(session, "acc-1")

    reads = Reads(runner, min_position_wait=5.0)
    for concurrent in (1, CONCURRENT):
        alone = await cpu_us(lambda: runner.snapshot(query, min_position=0), requests, concurrent)
        grouped = await cpu_us(lambda: reads.answer(query, grouped=True), requests, concurrent)
        out.append((f"query: a snapshot each, {concurrent} at once", alone))
        out.append((f"query: grouped snapshots, {concurrent} at once", grouped))
    account = await reads.answer(query, grouped=True)

    async def plain() -> None:
        await JSONResponse(_account_json(account))(scope, _receive, _drop)

    async def lean() -> None:
        await send_json(_drop, _account_json(account))

    out.append(("encoding: JSONResponse", await cpu_us(plain, requests)))
    out.append(("encoding: send_json (orjson)", await cpu_us(lean, requests)))
    front = app.router.routes[0]  # services/asgi.py's, in front of the documented route
    for concurrent in (1, CONCURRENT):
        whole = await cpu_us(asgi(app, scope), requests, concurrent)
        out.append((f"whole app in-process, {concurrent} at once", whole))
    app.router.routes.remove(front)
    try:
        for concurrent in (1, CONCURRENT):
            whole = await cpu_us(asgi(app, scope), requests, concurrent)
            out.append((f"whole app, documented route only, {concurrent} at once", whole))
    finally:
        app.router.routes.insert(0, front)
    return out


BODY = (
    b'{"account_id":"acc-1","currency":"EUR","balance":100,"available":100,"pending_debits":0,'
    b'"pending_credits":0,"overdraft_limit":0,"owner":null,"status":"open","version":2,'
    b'"opened_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","position":2}'
)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that answers every request at once with an account's bytes."""
    if scope["type"] == "http":
        headers = [(b"content-length", b"%d" % len(BODY)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})


def serve_hello(port: int) -> None:
    """`hello` under uvicorn with the arguments `eventledger serve` gives it."""
    import uvicorn

    from eventledger.cli.serve import event_loop
    from eventledger.services.connections import guarded_protocol

    uvicorn.run(
        hello,
        host="127.0.0.1",
        port=port,
        loop=event_loop(),
        ws="none",
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="warning",
        http=guarded_protocol(),
    )


def server_row(seconds: float = 5.0) -> tuple[str, float]:
    """Server CPU per request of `hello` under uvicorn, read by bench.load's reads phase."""
    import json
    import subprocess

    from bench.processes import REPO, Process, child_env, free_port

    with tempfile.TemporaryDirectory(prefix="eventledger-bench-edge-") as directory:
        root = Path(directory)
        port = free_port()
        argv = [sys.executable, "-m", "bench.edge", "--serve-hello", str(port)]
        server = Process("hello", argv, root / "hello.log", port).start()
        try:
            server.wait_healthy()
            state = root / "state.json"
            state.write_text(json.dumps({"accounts": ["acc-1"], "accepted": {}, "max_position": 0}))
            load = [sys.executable, "-m", "bench.load", "reads", "--reads-url", server.url]
            load += ["--state", str(state), "--seconds", str(seconds), "--warmup", "1"]
            before = server.cpu_seconds()
            done = subprocess.run(load, capture_output=True, env=child_env(), cwd=REPO, check=True)
            used = server.cpu_seconds() - before
        finally:
            server.stop()
    result = json.loads(done.stdout)
    requests = int(result.get("all_ops", result["ops"]))
    return (f"server alone: uvicorn as served, {CONCURRENT} clients", used / requests * 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--server", action="store_true", help="also the server alone")
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_hello:
        serve_hello(args.serve_hello)
        return
    try:
        import uvloop

        table = uvloop.run(rows(args.requests))
    except ImportError:
        table = asyncio.run(rows(args.requests))
    if args.server:
        table.append(server_row())
    print("| layer of GET /accounts/{id} | CPU µs per request |")
    print("|---|---:|")
    for name, micros in table:
        print(f"| {name} | {micros:.1f} |")


if __name__ == "__main__":
    main()
