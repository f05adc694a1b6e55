"""`POST /appends` handed to the stream instance that writes (eventstore/postgres_lease.py).

Stream instances of one PostgreSQL store that are started with `--advertise-url` elect one
writer; the others pass it their `POST /appends` requests as they came (same body, same
`Authorization`, same request id) and answer with what it answered. One instance then makes
every group commit, and the others read no rows back for it: on 2 cores this is what a second
stream instance no longer costs (bench/scale.py). It is transparent to clients: the answer is
the writer's, byte for byte.

An instance appends itself, as before, whenever handing over could lose or stall an append:

- the request is not plainly an `appends` envelope whose every event has an `id` (only
  appends with ids can be appended again safely when the writer's answer is lost);
- the writer did not answer in time, could not be reached, or answered anything but 200 or a
  problem with the request itself (400, 413, 415, 422): 401/403 (the writer's tokens
  differ), 429 (its rate limit), 5xx. Then this instance appends the same items itself (the
  event ids make an append the writer did commit an idempotent re-send) and stops handing
  over for `SUSPEND` seconds;
- the request was handed over already (`FORWARDED_HEADER`): never twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import aiohttp
from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter

from eventledger.services.requestlog import HEADER as REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

FORWARDED_HEADER = "x-eventledger-forwarded"  # set on a handed-over request: append here
# On a handed-over request's answer: the writer's URL, for clients that may send there
# themselves (the transaction service does: services/transaction/stream_client.py).
WRITER_HEADER = "x-eventledger-writer"
TIMEOUT = aiohttp.ClientTimeout(total=10.0, sock_connect=1.0)
SUSPEND = 5.0  # seconds of appending here after the writer failed us
RELAYED = frozenset({200, 400, 413, 415, 422})  # the writer's answers that are the answer
# An answer to at most 1,000 items of at most 1 MiB in all is far below this; past it the
# "writer" is not one of ours, and this instance appends itself.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_PASSED = ("authorization", "content-type", REQUEST_ID_HEADER.decode())


class Forwarder:
    """Hands `POST /appends` to the writer named by `writer()` (None: append here)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._suspended_until = 0.0
        counter = Counter(
            "eventledger_stream_forwarded_appends",
            "POST /appends requests handed to the writing stream instance, by outcome: "
            "answered by it, or appended here after it failed",
            ["outcome"],
            registry=registry,
        )
        self._answered = counter.labels("answered")
        self._fallback = counter.labels("appended_here")

    def target(self, request: Request, writer: str | None) -> str | None:
        """The writer to hand this request to, or None."""
        if writer is None or FORWARDED_HEADER in request.headers:
            return None
        if time.monotonic() < self._suspended_until:
            return None
        return writer

    async def forward(self, request: Request, writer: str, body: bytes) -> Response | None:
        """The writer's answer to `body`, or None: append it here (counted, and handing over
        suspended for a while)."""
        headers = {name: value for name in _PASSED if (value := request.headers.get(name))}
        headers[FORWARDED_HEADER] = "1"
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                timeout=TIMEOUT,
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=3.0),
                skip_auto_headers=("User-Agent",),
            )
        try:
            async with session.post(
                writer.rstrip("/") + "/appends", data=body, headers=headers
            ) as answer:
                status = answer.status
                media = answer.headers.get("content-type", "application/json")
                chunks: list[bytes] = []
                size = 0
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise ValueError(f"an answer of over {MAX_ANSWER_BYTES} bytes")
                    chunks.append(chunk)
                content = b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failed(writer, f"{type(exc).__name__}: {exc}")
            return None
        if status not in RELAYED:
            self._failed(writer, f"answered {status}")
            return None
        self._answered.inc()
        return Response(
            content, status_code=status, media_type=media, headers={WRITER_HEADER: writer}
        )

    def _failed(self, writer: str, why: str) -> None:
        self._fallback.inc()
        self._suspended_until = time.monotonic() + SUSPEND
        logger.warning(
            "the writing stream instance %s failed a hand-over (%s): appending here for %.0f s",
            writer,
            why,
            SUSPEND,
        )
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            # aiohttp's connections close on the next turn of the loop.
            await asyncio.sleep(0)


def writer_of(header: str) -> str | None:
    """The writer's URL a `WRITER_HEADER` names: an http(s) URL of a host (and port), without
    a path; None for anything else."""
    if len(header) > 2048:
        return None
    try:
        parts = urlsplit(header.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not one
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def every_event_has_an_id(items: list[object]) -> bool:
    """Whether each item (`{"appends": [...]}`) has events that all carry an `id`: the only
    appends that can be made again here without writing twice."""
    for item in items:
        appends = item.get("appends") if type(item) is dict else None
        if type(appends) is not list or not appends:
            return False
        for one in appends:
            events = one.get("events") if type(one) is dict else None
            if type(events) is not list or not events:
                return False
            for event in events:
                if type(event) is not dict or type(event.get("id")) is not str:
                    return False
    return True
