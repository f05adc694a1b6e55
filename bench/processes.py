"""The systems under test, as real processes: eventledger's four services and the HTTP peer.

Ours is started only through the command line (`python -m eventledger serve NAME`) and
watched only through public HTTP (`/health`), so the bench keeps working while the services
change inside. Every service requires tokens, as under `eventledger up`: the bench writes an
auth file with the internal callers' tokens and one for its own user (`bench`, ledger
read and write), each service presenting its own to the stream service.

Each process is one pid: its CPU time (utime + stime of all its threads, from
/proc/<pid>/stat) and resident memory (VmRSS) are read between phases.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
START_SECONDS = 60.0
STOP_SECONDS = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_USER = "bench"
BENCH_SCOPES = ("ledger:write", "ledger:read", "events:read", "events:append", "admin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """Ours, minus settings that would leak into the services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    # The peer runs as `python -m bench.peer_app`: the repository root must be importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass(eq=False)
class Process:
    """One server process on a free port of 127.0.0.1, its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        return self

    def health(self) -> dict[str, Any] | None:
        """The /health document while it answers 200, else None; fails if the process died."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}"
            )
        try:
            response = httpx.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_healthy(self, timeout: float = START_SECONDS) -> Process:
        deadline = time.monotonic() + timeout
        while self.health() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no healthy /health in {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all threads)."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(text)


@dataclass(frozen=True)
class Tokens:
    auth_file: Path
    files: dict[str, Path]  # caller name -> token file (0600)


def make_tokens(root: Path) -> Tokens:
    """An auth file with the internal callers' tokens and the bench user's."""
    from eventledger.credentials import INTERNAL_CALLERS, add_token, write_private

    auth_file = root / "auth.json"
    files: dict[str, Path] = {}
    for name, scopes in {**INTERNAL_CALLERS, BENCH_USER: BENCH_SCOPES}.items():
        files[name] = root / "tokens" / f"{name}.token"
        write_private(files[name], add_token(auth_file, name, scopes) + "\n")
    return Tokens(auth_file, files)


def serve(
    name: str, root: Path, tokens: Tokens, *, stream_url: str | None, extra: Sequence[str] = ()
) -> Process:
    """A `python -m eventledger serve NAME` process, not started yet."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "eventledger",
        "serve",
        name,
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(root / name),
        "--auth-file",
        str(tokens.auth_file),
        *extra,
    ]
    if stream_url is not None:
        argv += ["--stream-url", stream_url, "--stream-token-file", str(tokens.files[name])]
    return Process(name, argv, root / "logs" / f"{name}.log", port)


@dataclass(eq=False)
class Ours:
    """eventledger's four services on a fresh data dir; the stream on `store` (None: SQLite)."""

    root: Path
    store: str | None = None
    stream_args: Sequence[str] = ()
    tokens: Tokens = field(init=False)
    stream: Process = field(init=False)
    readers: dict[str, Process] = field(init=False)  # the services the stream feeds

    def __post_init__(self) -> None:
        self.tokens = make_tokens(self.root)
        extra = [*(["--store", self.store] if self.store else []), *self.stream_args]
        self.stream = serve("stream", self.root, self.tokens, stream_url=None, extra=extra)
        self.readers = {
            name: serve(name, self.root, self.tokens, stream_url=self.stream.url)
            for name in ("transaction", "accounting", "statistics")
        }

    @property
    def services(self) -> list[Process]:
        return [self.stream, *self.readers.values()]

    @property
    def token_file(self) -> Path:
        return self.tokens.files[BENCH_USER]

    def start(self, names: Sequence[str] = ("transaction", "accounting", "statistics")) -> Ours:
        self.stream.start().wait_healthy()
        started = [self.readers[n].start() for n in names]
        for process in started:
            process.wait_healthy()
        return self

    def stop(self) -> None:
        for process in reversed(self.services):
            process.stop()


@dataclass(eq=False)
class Peer:
    """The FastAPI + eventsourcing peer (bench/peer_app.py), one uvicorn worker."""

    root: Path
    postgres: str | None = None  # server URL; None: SQLite under root
    schema: str | None = None
    tokens: Tokens = field(init=False)
    process: Process = field(init=False)

    def __post_init__(self) -> None:
        from eventledger.credentials import token_digest

        self.root.mkdir(parents=True, exist_ok=True)
        token = os.urandom(24).hex()
        token_file = self.root / "bench.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        self.tokens = Tokens(self.root / "none", {BENCH_USER: token_file})
        port = free_port()
        store = ["--postgres", self.postgres] if self.postgres else ["--sqlite", str(self.db)]
        schema = ["--schema", self.schema] if self.schema else []
        argv = [sys.executable, "-m", "bench.peer_app", "--port", str(port), *store, *schema]
        argv += ["--token-sha256", token_digest(token)]
        self.process = Process("peer", argv, self.root / "peer.log", port)

    @property
    def db(self) -> Path:
        return self.root / "peer.db"

    @property
    def token_file(self) -> Path:
        return self.tokens.files[BENCH_USER]

    @property
    def services(self) -> list[Process]:
        return [self.process]

    def start(self) -> Peer:
        self.process.start().wait_healthy()
        return self

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def running(system: Ours | Peer) -> Iterator[Ours | Peer]:
    try:
        yield system.start()
    finally:
        system.stop()
