"""Real service processes for end-to-end tests: start, wait for health, kill, restart.

Every service runs as `python -m eventledger serve NAME` on a free port of 127.0.0.1, with
its output in a log file that the e2e conftest shows when a test fails. A `System` runs open
(loopback, no auth file) unless given `Credentials` (`make_credentials`): then every service
requires tokens, as under `eventledger up`. Waits poll a
condition until a deadline; there are no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PROBLEM_JSON = "application/problem+json"

T = TypeVar("T")

# One synchronous client for the harness's own polling: a new client per request would
# build an SSL context each time, which costs more than the request.
HTTP = httpx.Client(timeout=5.0)

# Every service process started in this session, in order: the conftest shows the logs of
# those a failed test started or used.
STARTED: list[ServiceProcess] = []


BIND_FAILED = "error while attempting to bind on address"


class PortTaken(AssertionError):
    """The service could not bind its port: another process took it after `free_port`."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} was taken by another process")


def free_port() -> int:
    """A port that nothing listens on now, on 127.0.0.1 only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: ours, minus settings that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass(eq=False)
class ServiceProcess:
    """One `eventledger serve NAME` process; restartable on the same port and data dir."""

    name: str
    data_dir: Path
    log_dir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    advertise: bool = False  # stream: take part in the writer lease at its own URL

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.port}.log"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "eventledger",
            "serve",
            self.name,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
            *(["--advertise-url", self.url] if self.advertise else []),
        ]

    def start(self) -> ServiceProcess:
        assert not self.running, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        if self.starts == 1:
            STARTED.append(self)
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def this_start_log(self) -> str:
        """The log written since the last start."""
        text = self.log_text()
        return text[text.rfind(f"--- start #{self.starts}:") :]

    def healthy(self) -> bool:
        if self.process is None:
            return False
        log = self.this_start_log()
        if BIND_FAILED in log:
            raise PortTaken(self.port)
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with code {self.process.returncode} while starting\n"
                + self.log_tail()
            )
        # Ours only once this process says it listens: until then, whatever else took the
        # port meanwhile (another test's service, a bench) could answer /health.
        if f"running on {self.url}" not in log:
            return False
        try:
            return HTTP.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> ServiceProcess:
        moves = 2 if self.starts == 1 else 0  # a restart must keep its port
        while True:
            try:
                wait_for(self.healthy, timeout=timeout, what=f"{self.name} /health")
                return self
            except PortTaken:
                # free_port() found the port free; another process bound it before this one
                # did. A first start moves to another free port.
                if moves == 0:
                    raise AssertionError(f"port {self.port} taken\n{self.log_tail()}") from None
                moves -= 1
                assert self.process is not None
                self.process.wait(timeout=30)
                self.port = free_port()
                self.start()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` and wait for the process to end; its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> ServiceProcess:
        self.stop()
        return self.start().wait_healthy(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(tail)


@dataclass(frozen=True)
class Credentials:
    """An auth file and the tokens in it, for a system that requires tokens: one per internal
    caller (with the scopes `eventledger up` gives them) and one per user asked for."""

    auth_file: Path
    tokens: Mapping[str, str]  # name -> token
    token_files: Mapping[str, Path]

    def bearer(self, name: str) -> dict[str, str]:
        """The `Authorization` header of the token `name`."""
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def make_credentials(root: Path, users: Mapping[str, Sequence[str]] | None = None) -> Credentials:
    """An auth file under `root` with the internal callers' tokens and `users` (name: scopes),
    each token also in a 0600 file."""
    from eventledger.credentials import INTERNAL_CALLERS, add_token, write_private

    auth_file = root / "auth.json"
    tokens: dict[str, str] = {}
    files: dict[str, Path] = {}
    for name, scopes in {**INTERNAL_CALLERS, **(users or {})}.items():
        tokens[name] = add_token(auth_file, name, scopes)
        files[name] = root / "tokens" / f"{name}.token"
        write_private(files[name], tokens[name] + "\n")
    return Credentials(auth_file, tokens, files)


@dataclass(eq=False)
class System:
    """The four services, the others pointed at this stream service; with `credentials`,
    every service requires tokens and each presents its own to the stream service."""

    root: Path
    store: str | None = None  # the stream's --store URL; None: SQLite under its data dir
    credentials: Credentials | None = None
    extra_args: Sequence[str] = ()  # given to every service
    stream: ServiceProcess = field(init=False)
    transaction: ServiceProcess = field(init=False)
    accounting: ServiceProcess = field(init=False)
    statistics: ServiceProcess = field(init=False)

    def __post_init__(self) -> None:
        logs = self.root / "logs"
        secured = list(self.extra_args)
        if self.credentials is not None:
            secured += ["--auth-file", str(self.credentials.auth_file)]
        stream_args = ["--store", self.store] if self.store else []
        self.stream = ServiceProcess("stream", self.root / "stream", logs, stream_args + secured)

        def other(name: str) -> ServiceProcess:
            args = ["--stream-url", self.stream.url, *secured]
            if self.credentials is not None:
                args += ["--stream-token-file", str(self.credentials.token_files[name])]
            return ServiceProcess(name, self.root / name, logs, args)

        self.transaction = other("transaction")
        self.accounting = other("accounting")
        self.statistics = other("statistics")

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.stream, self.transaction, self.accounting, self.statistics]

    def start(self) -> System:
        self.stream.start().wait_healthy()
        for service in self.services[1:]:  # the stream's port may have moved (PortTaken)
            args = service.extra_args
            args[args.index("--stream-url") + 1] = self.stream.url
        others = [s.start() for s in self.services[1:]]
        for service in others:
            service.wait_healthy()
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def logs(self) -> str:
        return "\n".join(service.log_tail() for service in self.services)

    def head_position(self) -> int:
        response = HTTP.get(f"{self.stream.url}/health", timeout=5.0)
        assert response.status_code == 200, response.text
        return int(response.json()["head_position"])


@contextmanager
def running(system: System) -> Iterator[System]:
    try:
        yield system.start()
    finally:
        system.stop()


# -- PostgreSQL: a fresh database per system ------------------------------------------------


def _admin_connection(server_url: str) -> Any:
    """An autocommit connection to the server: to the database of the URL, or, when that
    one does not exist, to the `postgres` maintenance database."""
    import psycopg

    try:
        return psycopg.connect(server_url, autocommit=True)
    except psycopg.OperationalError:
        fallback = urlunsplit(urlsplit(server_url)._replace(path="/postgres"))
        return psycopg.connect(fallback, autocommit=True)


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url`; dropped afterwards."""
    from psycopg import sql

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    with _admin_connection(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with _admin_connection(server_url) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def default_store() -> str:
    """The stream store of the suite's systems: `EVENTLEDGER_E2E_STORE`, else SQLite. Tests
    take it through the `suite_store` fixture (tests/e2e/conftest.py), which marks them."""
    return os.environ.get("EVENTLEDGER_E2E_STORE", "sqlite")


def start_system(
    request: pytest.FixtureRequest,
    stack: ExitStack,
    root: Path,
    store: str,
    *,
    credentials: Credentials | None = None,
    extra_args: Sequence[str] = (),
) -> System:
    """A running system whose stream service uses `store` ("sqlite" or "postgresql"; the
    suite's own is the `suite_store` fixture), stopped when `stack` closes. PostgreSQL: a fresh
    database on the server of the `postgres_url` fixture (which skips, or fails in CI, without
    a server). With `credentials`, every service requires tokens."""
    assert store in ("sqlite", "postgresql"), f"unknown store {store!r}"
    store_url = None
    if store == "postgresql":
        server = request.getfixturevalue("postgres_url")
        store_url = stack.enter_context(fresh_postgres_database(server))
    system = System(root, store=store_url, credentials=credentials, extra_args=extra_args)
    return stack.enter_context(running(system))


# -- HTTP helpers ------------------------------------------------------------------------------


def new_id(prefix: str = "acc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def assert_problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A 4xx problem document with `type`, `title` and `detail` (and one of `statuses`)."""
    request = response.request
    what = f"{request.method} {request.url} → {response.status_code}: {response.text[:300]}"
    assert 400 <= response.status_code < 500, what
    if statuses:
        assert response.status_code in statuses, what
    assert response.headers.get("content-type", "").startswith(PROBLEM_JSON), what
    body = response.json()
    assert isinstance(body, dict), what
    for key in ("type", "title", "detail"):
        assert isinstance(body.get(key), str) and body[key], f"{what}: no {key}"
    return body


def problem_type(response: httpx.Response) -> str:
    """The problem `type` slug, whether given bare or as a URI ending in the slug."""
    return str(assert_problem(response)["type"]).rstrip("/").rsplit("/", 1)[-1]


def min_position(position: int) -> dict[str, str]:
    return {"X-Min-Position": str(position)}


async def all_pages(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str | int] | None = None,
    headers: Mapping[str, str] | None = None,
    cursor: str = "after",
) -> list[dict[str, Any]]:
    """Every item of a paged listing (`items` + `next`) followed to the end."""
    items: list[dict[str, Any]] = []
    query: dict[str, str | int] = dict(params or {})
    for _ in range(10_000):
        response = await client.get(url, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        if not body.get("next"):
            return items
        query[cursor] = body["next"]
    raise AssertionError(f"{url}: paging did not end")


async def log_events(
    client: httpx.AsyncClient, stream_url: str, **filters: str
) -> list[dict[str, Any]]:
    """The whole global log (optionally filtered), read page by page with `GET /events`."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await client.get(
            f"{stream_url}/events", params={"after": after, "limit": 1000, **filters}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        events.extend(body["events"])
        if not body["events"]:
            return events
        after = body["last_position"]


async def sse_events(
    client: httpx.AsyncClient, url: str, params: Mapping[str, str | int]
) -> AsyncIterator[tuple[str | None, str | None, dict[str, Any]]]:
    """Follow a Server-Sent Events endpoint: `(id, event, envelope)` per event."""
    timeout = httpx.Timeout(10.0, read=None)
    async with client.stream(
        "GET", url, params=params, headers={"Accept": "text/event-stream"}, timeout=timeout
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id: str | None = None
        event_type: str | None = None
        data: list[str] = []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    yield event_id, event_type, json.loads("\n".join(data))
                event_type, data = None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event_type = value
                elif name == "id":
                    event_id = value


async def gather_bounded(limit: int, *coros: Any) -> list[Any]:
    """Run coroutines concurrently, at most `limit` at a time; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))
