"""The CPU cost of authentication per request: `python -m bench.auth_cost [--requests N]`.

Drives the security middleware of a service (the Host/Origin guard and the bearer-token check,
as `bootstrap.secure` installs them) directly as ASGI, around an app that answers at once, and
the same app without them; the difference in process CPU time per request is what the security
adds to every request. Also the token check alone (`Authenticator.identify`) against auth files
of several sizes. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from eventledger.credentials import TokenEntry, new_token, token_digest
from eventledger.services.auth import Authenticator, AuthMiddleware
from eventledger.services.browser import BrowserGuard, loopback_hosts


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _tokens(count: int) -> tuple[Authenticator, str]:
    tokens = [new_token() for _ in range(count)]
    entries = [
        TokenEntry(f"caller-{n}", token_digest(token), frozenset({"events:read", "metrics"}))
        for n, token in enumerate(tokens)
    ]
    return Authenticator(entries), tokens[-1]


def _cpu_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count * 1e6


async def _asgi_cpu(
    app: Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]],
    count: int,
    headers: list[tuple[bytes, bytes]],
) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        return None

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/events",
        "headers": headers,
        "query_string": b"",
    }
    started = time.process_time()
    for _ in range(count):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / count * 1e6


async def main(requests: int) -> None:
    for size in (4, 16, 100):
        authenticator, token = _tokens(size)
        micros = _cpu_per_call(functools.partial(authenticator.identify, token), requests)
        print(f"token check, auth file of {size:>3} tokens: {micros:6.2f} µs CPU per request")
    authenticator, token = _tokens(16)
    secured = BrowserGuard(
        AuthMiddleware(_answer, service="stream", authenticator=authenticator),
        service="stream",
        allowed_hosts=loopback_hosts("127.0.0.1", 8002),
    )
    headers = [(b"host", b"127.0.0.1:8002"), (b"authorization", f"Bearer {token}".encode())]
    bare = min([await _asgi_cpu(_answer, requests, headers) for _ in range(3)])
    guarded = min([await _asgi_cpu(secured, requests, headers) for _ in range(3)])
    print(f"an app that answers at once:           {bare:6.2f} µs CPU per request")
    print(f"the same behind Host/Origin + token:   {guarded:6.2f} µs CPU per request")
    print(f"what security adds to every request:   {guarded - bare:6.2f} µs CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().requests))
