"""How the command line reaches the services: `ledger()` gives the typed client
(`eventledger.client.Client`) pointed at them with the CLI's token, and turns whatever it
raises into a `CliError` of one line: the problem document's `title: detail`, or "cannot
reach the transaction service at …".

Every request presents the CLI's token (`cli_token`): EVENTLEDGER_TOKEN, else the token file
`eventledger up` made for the command line, `<data-dir>/tokens/cli.token` (data dir from
EVENTLEDGER_DATA_DIR, default ./eventledger-data); none when neither exists (an open service).

The client retries a command with its `Idempotency-Key` where the outcome is unknown
(connection dropped, timeout, 503); when it gives up, the error says which key to resend.

`ServiceClient` is the older raw client, kept for `tail` and `rebuild` (operator.py) until
they move to `Client.subscribe` and `Client.rebuild`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from eventledger.cli.output import CliError, UsageProblem
from eventledger.client import (
    Client,
    EventLedgerError,
    ProblemError,
    TransportError,
    Unavailable,
    core,
)
from eventledger.client.calls import segment
from eventledger.config import SERVICES, ConfigError, check_token, load_settings

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
RETRIES = 3  # after the first attempt


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the four services."""

    urls: Mapping[str, str]

    def url(self, service: str) -> str:
        return self.urls[service]


def endpoints(overrides: Mapping[str, str | None]) -> Endpoints:
    """URLs from `--<service>-url` options over settings (`EVENTLEDGER_*_PORT`, …)."""
    try:
        settings = load_settings({"stream_url": overrides.get("stream")})
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    urls: dict[str, str] = {}
    for service in SERVICES:
        given = overrides.get(service)
        if given and not given.startswith(("http://", "https://")):
            raise UsageProblem(f"--{service}-url must be an http:// URL, not {given!r}")
        urls[service] = (given or settings.url(service)).rstrip("/")
    return Endpoints(urls)


@dataclass(frozen=True)
class CliToken:
    """The token the command line presents, and where it came from (for messages; the
    token itself is never shown)."""

    value: str | None = field(repr=False)
    source: str


def cli_token() -> CliToken:
    """EVENTLEDGER_TOKEN, else `<data-dir>/tokens/cli.token` when it exists, else none."""
    env_token = os.environ.get("EVENTLEDGER_TOKEN", "").strip()
    try:
        if env_token:
            return CliToken(check_token(env_token, "EVENTLEDGER_TOKEN"), "EVENTLEDGER_TOKEN")
        path = load_settings({}).token_file("cli")
        if path.exists():
            from eventledger.credentials import read_token_file

            return CliToken(read_token_file(path), str(path))
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    return CliToken(None, f"EVENTLEDGER_TOKEN is not set and there is no {path}")


class ServiceAnswered(CliError):
    """Raised when a service answers with an error status (its problem document's line)."""

    def __init__(self, status: int, line: str, problem_type: str = "") -> None:
        super().__init__(line)
        self.status = status
        self.problem_type = problem_type


def _token_hint(token: CliToken) -> str:
    if token.value:
        return f" (the command line sends the token of {token.source})"
    return f" ({token.source}: set EVENTLEDGER_TOKEN)"


def cli_error(exc: EventLedgerError, token: CliToken) -> CliError:
    """One line for what the client raised, with what to do about it when we know."""
    retry = f" (retry safely with --idempotency-key {exc.idempotency_key})"
    if isinstance(exc, ProblemError):
        line = exc.line + (_token_hint(token) if exc.status == 401 else "")
        if isinstance(exc, Unavailable) and exc.idempotency_key:
            line += retry  # the command may or may not have been written
        return ServiceAnswered(exc.status, line, exc.type)
    if isinstance(exc, TransportError) and exc.maybe_applied:
        return CliError(f"{exc}{retry}")
    return CliError(str(exc))


@contextmanager
def ledger(urls: Endpoints, *, token: CliToken | None = None) -> Iterator[Client]:
    """The typed client for the services at `urls`, with the CLI's token; whatever it
    raises inside the block comes out as a `CliError` of one line."""
    token = cli_token() if token is None else token
    try:
        with Client(
            transaction_url=urls.url("transaction"),
            accounting_url=urls.url("accounting"),
            statistics_url=urls.url("statistics"),
            stream_url=urls.url("stream"),
            token=token.value or "",  # "": none, even when EVENTLEDGER_TOKEN is set
            timeout=TIMEOUT,
            retries=RETRIES,
        ) as client:
            yield client
    except EventLedgerError as exc:
        raise cli_error(exc, token) from exc


@dataclass
class Reply:
    status: int
    body: Any
    headers: httpx.Headers = field(default_factory=httpx.Headers)


def problem_line(response: httpx.Response) -> str:
    """`title: detail` from a problem document, or the status and a bit of the body."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and ("title" in doc or "detail" in doc):
        title = str(doc.get("title") or response.reason_phrase)
        detail = str(doc.get("detail") or "")
        return f"{title}: {detail}" if detail and detail != title else title
    text = response.text.strip().replace("\n", " ")[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


class ServiceClient:
    """Requests to one service, with every failure turned into one line."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        timeout: httpx.Timeout = TIMEOUT,
        token: CliToken | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url
        self.token = cli_token() if token is None else token
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token.value else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> CliError:
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the {self.service} service at {self.base_url} did not answer in time")
        return CliError(f"cannot reach the {self.service} service at {self.base_url}")

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Reply:
        """One request; a 4xx/5xx or a network failure raises `CliError`. A request that may
        change state is sent as application/json even without a body, as services require."""
        if method not in ("GET", "HEAD") and json is None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return self._reply(response, ok)

    def _refused(self, response: httpx.Response) -> ServiceAnswered:
        line = problem_line(response)
        if response.status_code == 401:
            line += _token_hint(self.token)
        return ServiceAnswered(response.status_code, line)

    def _reply(self, response: httpx.Response, ok: tuple[int, ...]) -> Reply:
        if response.status_code not in ok:
            raise self._refused(response)
        try:
            body = response.json() if response.content else None
        except ValueError as exc:
            raise CliError(
                f"the {self.service} service at {self.base_url} answered with something "
                "that is not JSON"
            ) from exc
        return Reply(response.status_code, body, response.headers)

    def events(
        self, path: str, *, params: Mapping[str, str | int], last_event_id: int | None = None
    ) -> Iterator[tuple[str | None, str | None, str]]:
        """Follow a Server-Sent Events stream: yields `(id, event, data)` per event."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(10.0, read=None)
        try:
            with self._http.stream(
                "GET", path, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refused(response)
                yield from parse_sse(response.iter_lines())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str | None, str]]:
    """Events of a text/event-stream: `(id, event, data)`."""
    return core.parse_sse(lines)


__all__ = [
    "CliToken",
    "Endpoints",
    "Reply",
    "ServiceAnswered",
    "ServiceClient",
    "cli_error",
    "cli_token",
    "endpoints",
    "ledger",
    "parse_sse",
    "problem_line",
    "segment",  # bench.py's
]
