"""The console's client of the four services: one aiohttp session, the console's own token.

Every call goes server-side, so no token ever reaches the browser. An answer of the service is
given back as it came (status and JSON body: a problem document keeps its `type`, `title` and
`detail`); a service that does not answer becomes a 502 `upstream-unavailable` naming it. For
the admin buttons the signed-in operator's token (from its server-side session) is presented
instead (`authorization=`), never logged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from eventledger.services.http import ProblemError

TIMEOUT_SECONDS = 10.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # an answer larger than this is not one the console shows
MAX_SSE_LINE_BYTES = 1024 * 1024 + 4096  # an event is at most 1 MiB of body, plus its framing


@dataclass(frozen=True, slots=True)
class Answer:
    """A service's answer: its status, its JSON body (None when it sent none) and the
    headers a caller may pass on."""

    status: int
    body: Any
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def unavailable(service: str, why: str) -> ProblemError:
    return ProblemError(
        502,
        "upstream-unavailable",
        f"The {service} service does not answer",
        f"the console could not reach the {service} service: {why}",
        headers={"Retry-After": "1"},
        service=service,
    )


class Upstream:
    """The four services at `urls` (name: base URL), called with `token` when there is one."""

    def __init__(self, urls: Mapping[str, str], token: str | None) -> None:
        self.urls = dict(urls)
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self._live: set[aiohttp.ClientResponse] = set()

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.open() first"
        return self._session

    def _headers(
        self, extra: Mapping[str, str] | None, authorization: str | None
    ) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization  # the operator's, for this call only
        elif self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    async def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        timeout: float = TIMEOUT_SECONDS,  # noqa: ASYNC109 - a per-call bound, given to aiohttp
    ) -> Answer:
        """One request to `service`; its answer, or a 502 problem when it does not answer."""
        url = self.urls[service] + path
        sent = self._headers(headers, authorization)
        data = None
        if body is not None:
            sent["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            async with self.session.request(
                method,
                url,
                params=dict(params or {}),
                data=data,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(raw) > MAX_ANSWER_BYTES:
                    raise unavailable(service, "its answer is too large to show")
                parsed = json.loads(raw) if raw else None
                return Answer(response.status, parsed, response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise unavailable(service, type(exc).__name__) from exc

    async def get(self, service: str, path: str, **kwargs: Any) -> Answer:
        return await self.call("GET", service, path, **kwargs)

    async def subscribe(self, after: int) -> aiohttp.ClientResponse:
        """The stream service's live feed after `after`, opened (read it with `sse_lines`);
        a 502 problem when it cannot be opened. `end_subscriptions` closes every one."""
        url = self.urls["stream"] + "/events/subscribe"
        headers = self._headers({"Accept": "text/event-stream"}, None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT_SECONDS)
        try:
            response = await self.session.get(
                url,
                params={"after": str(after)},
                headers=headers,
                timeout=timeout,
                read_bufsize=MAX_SSE_LINE_BYTES,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unavailable("stream", type(exc).__name__) from exc
        if response.status != 200:
            try:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                body = json.loads(raw) if raw else None
            except (aiohttp.ClientError, ValueError):
                body = None
            finally:
                response.release()
            if isinstance(body, dict) and 400 <= response.status < 500:
                # e.g. the stream service's own 429/403: its document, as it came
                raise ProblemError(
                    response.status,
                    str(body.get("type", "upstream-error")),
                    str(body.get("title", "Refused by the stream service")),
                    str(body.get("detail", "")),
                )
            raise unavailable("stream", f"HTTP {response.status}")
        self._live.add(response)
        return response

    def end_subscriptions(self) -> None:
        """Close every live feed now (shutdown): their readers see the end at once."""
        for response in list(self._live):
            response.close()
        self._live.clear()

    async def sse_lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The lines of an opened feed, until it ends or is closed."""
        try:
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, ValueError, asyncio.IncompleteReadError):
                    return
                if not line:
                    return
                yield line
        finally:
            self._live.discard(response)
            response.close()
