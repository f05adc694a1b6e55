"""What a service started by `eventledger up` does as its child (`serve --supervised-by`).

* **It names itself.** `up` gives each child a random instance id; the child's `/health`
  answers carry it in the `X-Eventledger-Instance` header (`InstanceHeader`), so `up` trusts a
  `/health` only from its own child, never from another server that holds the port.
* **It dies with `up`, whatever kills `up`** (kill -9 included), two ways: on Linux the kernel
  sends it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`); everywhere, a thread reads
  its stdin, a pipe whose other end only `up` holds, and EOF there means `up` is gone. Either
  starts the service's graceful shutdown; if that has not ended the process in
  `HARD_EXIT_SECONDS`, it exits at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports this module without loading a web framework
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

INSTANCE_HEADER = "X-Eventledger-Instance"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
HARD_EXIT_SECONDS = 10.0
RESIGNAL_SECONDS = 1.0


class InstanceHeader:
    """Pure ASGI middleware: `/health` answers carry this process's instance id."""

    def __init__(self, app: ASGIApp, *, instance_id: str) -> None:
        self.app = app
        self.header = (INSTANCE_HEADER.lower().encode(), instance_id.encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/health":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def die_with_parent(parent_pid: int) -> None:
    """Stop this process when `parent_pid` (the `up` that started it) dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the line above: we were re-parented
        _stop()
        return
    threading.Thread(target=_watch_stdin, name="parent-watch", daemon=True).start()


def _watch_stdin() -> None:
    try:
        while os.read(sys.stdin.fileno(), 1024):
            pass  # `up` writes nothing; anything read is ignored
    except OSError:
        pass
    _stop()


def _stop() -> None:
    """SIGTERM to ourselves (again each second, in case it came before the server's handler
    was in place), then a hard exit if the graceful shutdown does not end us in time."""

    def keep_stopping() -> None:
        deadline = time.monotonic() + HARD_EXIT_SECONDS
        while time.monotonic() < deadline:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(RESIGNAL_SECONDS)
        os._exit(1)

    threading.Thread(target=keep_stopping, name="parent-gone", daemon=True).start()
