"""`eventledger up`: the four services and the console, one process each, until Ctrl-C or SIGTERM.

Secure by default: on its first start `up` creates the auth file `<data-dir>/auth.json` and a
token per internal caller in `<data-dir>/tokens/` (mode 0600; `credentials.provision`), and
gives each service its auth file and the token it presents to the stream service; later starts
reuse them. The command line finds its token there. `--insecure-no-auth` runs all open.

Ports: API.md's defaults 8001-8005, `--port-base N` (N+1..N+5) or one `--<name>-port` each
(EVENTLEDGER_PORT_BASE, EVENTLEDGER_<NAME>_PORT). `up` never lies about them: before starting
anything it checks that every port is free, and fails naming the port, the service and the
flag that moves it (cli/ports.py); it trusts a `/health` answer only from its own live child
(the instance id it gave the child comes back in a header, cli/child.py). Its children exit
when it dies, whatever the signal, kill -9 included (PR_SET_PDEATHSIG, and a stdin pipe they
watch).

The stream service starts first and must answer `/health` before the others start: they
subscribe to it; the console starts last. Every line a service logs is shown prefixed with its
name in its own colour. On Ctrl-C or SIGTERM every service gets SIGTERM and a bounded time to
stop, then SIGKILL (a second Ctrl-C kills them at once). If a service dies on its own, the
others are stopped and `up` exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Annotated, Any

import httpx
import typer
from rich.table import Table
from rich.text import Text

from eventledger.cli.child import INSTANCE_HEADER
from eventledger.cli.output import CliError, UsageProblem, console
from eventledger.cli.ports import check_ports, host_of, port_hint
from eventledger.cli.serve import (
    AuthFileOpt,
    CorsOriginOpt,
    DataDirOpt,
    HostOpt,
    InsecureOpt,
    ReadModelStoreOpt,
    StoreOpt,
    StreamUrlOpt,
    UnsafeOpt,
    settings_from_flags,
)
from eventledger.config import (
    CONSOLE,
    DEFAULT_PORTS,
    SERVICES,
    UP_SERVICES,
    ConfigError,
    Settings,
)
from eventledger.credentials import AuthFileError, Installation, idempotency_secret, provision

COLOURS = {
    "stream": "cyan",
    "transaction": "magenta",
    "accounting": "green",
    "statistics": "yellow",
    "console": "blue",
}
HEALTH_POLL_SECONDS = 0.1
HEALTH_WAIT_SECONDS = 30.0
STOP_WAIT_SECONDS = 10.0
WIDTH = max(len(name) for name in UP_SERVICES)
PORT_IN_USE_EXIT = 3  # what `serve` exits with when uvicorn could not bind


@dataclass
class Child:
    name: str
    url: str
    port: int
    instance_id: str
    process: subprocess.Popen[str]
    pump: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.pump = threading.Thread(
            target=_pump, args=(self.name, self.process.stdout), daemon=True
        )
        self.pump.start()


def _prefix(name: str) -> Text:
    return Text(f"{name:<{WIDTH}} │ ", style=f"bold {COLOURS.get(name, 'white')}")


def say(message: str, style: str = "bold") -> None:
    console.print(Text.assemble(Text(f"{'up':<{WIDTH}} │ ", style="bold"), (message, style)))


def _pump(name: str, stream: IO[str] | None) -> None:
    """Copy a child's output to ours, each line prefixed with the child's name."""
    if stream is None:
        return
    for line in stream:
        console.print(Text.assemble(_prefix(name), Text(line.rstrip("\n"))), soft_wrap=True)


def _child_argv(
    name: str, settings: Settings, installation: Installation | None, instance_id: str
) -> list[str]:
    argv = [sys.executable, "-m", "eventledger", "serve", name, "--no-log-prefix"]
    argv += ["--supervised-by", str(os.getpid()), "--instance-id", instance_id]
    argv += ["--host", host_of(settings, name), "--port", str(settings.port(name))]
    argv += ["--data-dir", str(settings.data_dir)]
    if name == "stream" and settings.store:
        argv += ["--store", settings.store]
    if name in ("accounting", "statistics") and settings.readmodel_store:
        argv += ["--readmodel-store", settings.readmodel_store]
    if name != "stream":
        argv += ["--stream-url", settings.url("stream")]
    if settings.allow_unsafe_durability:
        argv.append("--allow-unsafe-durability")
    if name != CONSOLE:  # no other origin may ever use the console (bootstrap)
        for origin in settings.cors_origins:
            argv += ["--cors-origin", origin]
    if installation is None:
        argv.append("--insecure-no-auth")
        return argv
    argv += ["--auth-file", str(installation.auth_file)]
    if name != "stream":  # paths only: a token on a command line would show in `ps`
        if settings.stream_token_file is not None:
            argv += ["--stream-token-file", str(settings.stream_token_file)]
        elif settings.stream_token is None:  # else EVENTLEDGER_STREAM_TOKEN, inherited
            argv += ["--stream-token-file", str(installation.token_files[name])]
    return argv


def _secure(settings: Settings) -> Installation | None:
    """The auth file and the internal callers' tokens, made on the first start and reused
    after (None with --insecure-no-auth); the idempotency secret likewise."""
    try:
        idempotency_secret(settings)  # made once here rather than by a transaction instance
        if settings.insecure_no_auth:
            say("--insecure-no-auth: every service runs WITHOUT AUTHENTICATION", "bold red")
            return None
        installation = provision(settings)
    except (AuthFileError, ConfigError, OSError) as exc:
        raise UsageProblem(f"cannot set up the credentials in {settings.data_dir}: {exc}") from exc
    if installation.created:
        say(
            f"tokens for {', '.join(installation.created)} written to "
            f"{installation.token_files['cli'].parent} (mode 0600); auth file "
            f"{installation.auth_file}"
        )
    return installation


def _client_url(settings: Settings, name: str) -> str:
    """The URL to reach a service on: a wildcard listen address is reached on loopback."""
    url = settings.url(name)
    if name == CONSOLE:
        url = f"http://{host_of(settings, name)}:{settings.port(name)}"
    if name != "stream" or not settings.stream_url:
        for wildcard in ("0.0.0.0", "[::]", "::"):
            url = url.replace(f"//{wildcard}:", "//127.0.0.1:")
    return url


class Supervisor:
    def __init__(self, settings: Settings, installation: Installation | None) -> None:
        self.settings = settings
        self.installation = installation
        self.children: list[Child] = []
        self.stop_requested = threading.Event()

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_requested.is_set():  # asked twice: do not wait any longer
            say("stopping now", "bold red")
            for child in self.children:
                if child.process.poll() is None:
                    child.process.kill()
            return
        say(f"{signal.Signals(signum).name} received: stopping every service", "bold yellow")
        self.stop_requested.set()

    def _child_env(self, name: str) -> dict[str, str] | None:
        """The console finds the others by variables, not flags: a service's name on its
        command line would make `ps` and `pgrep` find the console for that service."""
        if name != CONSOLE:
            return None
        env = dict(os.environ)
        for other in ("transaction", "accounting", "statistics"):
            env[f"EVENTLEDGER_{other.upper()}_URL"] = _client_url(self.settings, other)
        return env

    def start(self, name: str) -> Child:
        instance_id = uuid.uuid4().hex
        process = subprocess.Popen(
            _child_argv(name, self.settings, self.installation, instance_id),
            # A pipe that only we hold open: the child reads EOF on it when we die, however
            # we die (cli/child.py). We never write to it.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._child_env(name),
            text=True,
            errors="replace",
            bufsize=1,
        )
        url = _client_url(self.settings, name)
        child = Child(name, url, self.settings.port(name), instance_id, process)
        self.children.append(child)
        return child

    def wait_healthy(self, children: list[Child]) -> None:
        """Poll each child's /health until it answers 200 *as that child* (its instance id
        in the header); fail if it dies, if another server answers, or if it takes too long."""
        deadline = time.monotonic() + HEALTH_WAIT_SECONDS
        pending = list(children)
        with httpx.Client(timeout=1.0) as http:
            while pending:
                for child in list(pending):
                    self.check_alive()
                    try:
                        response = http.get(f"{child.url}/health")
                    except httpx.HTTPError:
                        continue
                    answered_by = response.headers.get(INSTANCE_HEADER)
                    if answered_by != child.instance_id:
                        self.check_alive()  # it may have just failed to bind
                        raise CliError(
                            f"something else answers on port {child.port}, where the "
                            f"{child.name} service should be; choose another port with "
                            f"{port_hint(child.name)}"
                        )
                    if response.status_code == 200:
                        pending.remove(child)
                if not pending:
                    return
                if self.stop_requested.wait(HEALTH_POLL_SECONDS):
                    raise KeyboardInterrupt
                if time.monotonic() > deadline:
                    names = ", ".join(child.name for child in pending)
                    raise CliError(
                        f"{names} did not become healthy within {HEALTH_WAIT_SECONDS:.0f} s"
                    )

    def check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None and not self.stop_requested.is_set():
                why = f"exit code {code}"
                if code == PORT_IN_USE_EXIT:
                    why += f": could it listen on port {child.port}? see its last lines above"
                raise CliError(f"the {child.name} service stopped unexpectedly ({why})")

    def stop_all(self) -> None:
        running = [c for c in self.children if c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {STOP_WAIT_SECONDS:.0f} s: killing it")
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.pump.join(timeout=1.0)
            if child.process.stdin is not None:
                child.process.stdin.close()

    def addresses(self) -> Table:
        table = Table(title="eventledger is up", title_style="bold")
        table.add_column("service")
        table.add_column("address")
        table.add_column("docs")
        for child in self.children:
            table.add_row(
                Text(child.name, style=f"bold {COLOURS[child.name]}"),
                child.url,
                f"{child.url}/docs",
            )
        return table


def _port_option(name: str) -> Any:
    return typer.Option(
        f"--{name}-port",
        help=f"Port of the {name} service (default {DEFAULT_PORTS[name]}) "
        f"\\[env: EVENTLEDGER_{name.upper()}_PORT]",
        show_default=False,
    )


PortBaseOpt = Annotated[
    int | None,
    typer.Option(
        "--port-base",
        help="Put the services on N+1..N+5: transaction, stream, accounting, statistics, "
        "console (default: 8000, i.e. 8001-8005) \\[env: EVENTLEDGER_PORT_BASE]",
    ),
]


def up(
    host: HostOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    readmodel_store: ReadModelStoreOpt = None,
    stream_url: StreamUrlOpt = None,
    allow_unsafe_durability: UnsafeOpt = False,
    auth_file: AuthFileOpt = None,
    insecure_no_auth: InsecureOpt = False,
    cors_origin: CorsOriginOpt = None,
    port_base: PortBaseOpt = None,
    transaction_port: Annotated[int | None, _port_option("transaction")] = None,
    stream_port: Annotated[int | None, _port_option("stream")] = None,
    accounting_port: Annotated[int | None, _port_option("accounting")] = None,
    statistics_port: Annotated[int | None, _port_option("statistics")] = None,
    console_port: Annotated[int | None, _port_option("console")] = None,
) -> None:
    """Start the four services and the console (one process each) and stop them all on
    Ctrl-C. Every port is checked free first; `--port-base` or `--<name>-port` choose others."""
    settings = settings_from_flags(
        host=host,
        data_dir=data_dir,
        store=store,
        readmodel_store=readmodel_store,
        stream_url=stream_url,
        allow_unsafe_durability=allow_unsafe_durability,
        auth_file=auth_file,
        insecure_no_auth=insecure_no_auth,
        cors_origin=cors_origin,
        port_base=port_base,
        transaction_port=transaction_port,
        stream_port=stream_port,
        accounting_port=accounting_port,
        statistics_port=statistics_port,
        console_port=console_port,
    )
    names = [name for name in UP_SERVICES if name != "stream" or not settings.stream_url]
    check_ports(settings, names)  # before anything is made or started
    installation = _secure(settings)
    supervisor = Supervisor(settings, installation)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, supervisor.request_stop)
    where = settings.store or f"SQLite under {settings.data_dir.resolve()}"
    say(f"starting eventledger: events in {where}")
    failure: CliError | None = None
    try:
        if not settings.stream_url:
            supervisor.wait_healthy([supervisor.start("stream")])
        others = [supervisor.start(name) for name in SERVICES if name != "stream"]
        supervisor.wait_healthy(others)
        supervisor.wait_healthy([supervisor.start(CONSOLE)])
        console.print(supervisor.addresses())
        # The console asks who you are (services/console/signin.py): say with what. The
        # token itself is not printed: terminals and their logs keep what they show.
        signin = (
            f"sign in with the token in {installation.token_files['cli']}"
            if installation is not None
            else "open: no auth file, no sign-in"
        )
        say(f"the console: {_client_url(settings, CONSOLE)}/ ({signin}) — press Ctrl-C to stop")
        while not supervisor.stop_requested.wait(0.2):
            supervisor.check_alive()
    except KeyboardInterrupt:
        pass
    except CliError as exc:
        failure = exc
        say(f"error: {exc}: stopping the other services", "bold red")
    supervisor.stop_all()
    if failure is not None:
        raise CliError(str(failure))
    say("stopped", "bold green")
