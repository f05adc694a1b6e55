"""`eventledger serve NAME`: one service in this process, under uvicorn.

Settings come from flags over environment variables (`config.load_settings`); a bad value is
one red line and exit code 2. SIGTERM and SIGINT start uvicorn's graceful shutdown: the app's
`begin_shutdown` hook (if it has one) ends live subscriptions at once, the wait for open
connections is bounded to a few seconds, and the process then exits with code 0.
"""

from __future__ import annotations

import enum
import gc
import importlib.util
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eventledger.cli.output import UsageProblem
from eventledger.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # imported when serving only: the client commands start faster without
    import socket

    import uvicorn
    from fastapi import FastAPI

GRACEFUL_SHUTDOWN_SECONDS = 3
# The cyclic collector's first threshold (Python's default: 700). A service allocates many
# short-lived containers per request, a bulk append several per event; at 700 the young
# collections and the older ones they trigger cost ~14% of the stream service's CPU on bulk
# appends (29.8 vs 25.7 µs an event, bench/bulk.py). Collections stay on, only rarer.
GC_THRESHOLDS = (20_000, 50, 50)
KEEP_ALIVE_SECONDS = 5


class ServiceName(enum.StrEnum):
    stream = "stream"
    transaction = "transaction"
    accounting = "accounting"
    statistics = "statistics"
    console = "console"


# Options shared by `serve` and `up`; None means "not given", so that the environment applies.
HostOpt = Annotated[
    str | None, typer.Option("--host", help="Address to listen on \\[env: EVENTLEDGER_HOST]")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where services keep their files (default ./eventledger-data) "
        "\\[env: EVENTLEDGER_DATA_DIR]",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="The event store: sqlite:///path/events.db or postgresql://user@host:port/db "
        "\\[env: EVENTLEDGER_STORE]",
    ),
]
SnapshotStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--snapshot-store",
        help="transaction: where account snapshots are kept, sqlite:///path or "
        "postgresql://… shared by instances (default SQLite under the data dir) "
        "\\[env: EVENTLEDGER_SNAPSHOT_STORE]",
    ),
]
SnapshotEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--snapshot-every",
        min=0,
        help="transaction: events of an account between two snapshots, 0: none (1000) "
        "\\[env: EVENTLEDGER_SNAPSHOT_EVERY]",
    ),
]
ReadModelStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--readmodel-store",
        help="The read models' store URL (default SQLite under the data dir) "
        "\\[env: EVENTLEDGER_READMODEL_STORE]",
    ),
]
StreamUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--stream-url",
        help="Where the other services find the stream service \\[env: EVENTLEDGER_STREAM_URL]",
    ),
]
AdvertiseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--advertise-url",
        help="stream on PostgreSQL: where the other stream instances reach this one; those "
        "that give it elect one writer and hand it their POST /appends "
        "\\[env: EVENTLEDGER_ADVERTISE_URL]",
    ),
]
UnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsafe-durability",
        help="Accept a PostgreSQL server without synchronous commit "
        "\\[env: EVENTLEDGER_ALLOW_UNSAFE_DURABILITY]",
    ),
]

# Limits against abuse (`config.Limits`); more of them by environment variable only.
RateLimitOpt = Annotated[
    str | None,
    typer.Option(
        "--rate-limit",
        help="Requests per caller: N/s, N/min or off (default: off on a loopback address, "
        "1000/s elsewhere) \\[env: EVENTLEDGER_RATE_LIMIT]",
    ),
]
MaxSubscribersOpt = Annotated[
    int | None,
    typer.Option(
        "--max-subscribers",
        help="Live subscriptions the stream service serves at once (default 256) "
        "\\[env: EVENTLEDGER_MAX_SUBSCRIBERS]",
    ),
]
MaxSubscribersPerCallerOpt = Annotated[
    int | None,
    typer.Option(
        "--max-subscribers-per-caller",
        help="Live subscriptions of one caller (token, or address when open; default 64) "
        "\\[env: EVENTLEDGER_MAX_SUBSCRIBERS_PER_CALLER]",
    ),
]
RequestTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--request-timeout",
        help="Seconds a client has to send a whole request (default 10) "
        "\\[env: EVENTLEDGER_REQUEST_TIMEOUT]",
    ),
]


# Security (API.md, "Security"; docs/security.md).
AuthFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--auth-file",
        help="The tokens' hashes and scopes (default <data-dir>/auth.json when it exists) "
        "\\[env: EVENTLEDGER_AUTH_FILE]",
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Run without tokens even on a non-loopback address (something else must "
        "protect it) \\[env: EVENTLEDGER_INSECURE_NO_AUTH]",
    ),
]
StreamTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--stream-token-file",
        help="A file holding the token this service presents to the stream service "
        "(default <data-dir>/tokens/<name>.token when it exists) \\[env: "
        "EVENTLEDGER_STREAM_TOKEN_FILE, or the token itself in EVENTLEDGER_STREAM_TOKEN]",
    ),
]
CorsOriginOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cors-origin",
        help="A web origin (scheme://host:port) whose pages may call this service; repeat for "
        "more. Default: none \\[env: EVENTLEDGER_CORS_ORIGINS, comma-separated]",
    ),
]


def tls_options(certfile: Path | None, keyfile: Path | None) -> dict[str, Any]:
    """uvicorn's TLS arguments: both files or neither; each must be readable."""
    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        raise UsageProblem("give --ssl-certfile and --ssl-keyfile together")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not path.is_file():
            raise UsageProblem(f"{flag}: {path} is not a readable file")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def settings_from_flags(**flags: object) -> Settings:
    """`load_settings` over the given flags, a `ConfigError` turned into a usage problem."""
    for switch in ("allow_unsafe_durability", "insecure_no_auth", "log_requests"):
        if flags.get(switch) is False:
            flags[switch] = None  # a flag not given: the environment decides
    try:
        return load_settings(flags)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from exc


def _server(config: uvicorn.Config, app: FastAPI) -> uvicorn.Server:
    """A uvicorn server that tells the app it is shutting down *before* waiting for open
    connections: a service with live subscriptions (`app.state.begin_shutdown`) ends them
    at once, instead of holding the process until the graceful-shutdown timeout."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            begin_shutdown = getattr(app.state, "begin_shutdown", None)
            if callable(begin_shutdown):
                begin_shutdown()
            await super().shutdown(sockets)

    return Server(config)


def server_limits(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """Install the app's limits against abuse (rate limit, subscriber caps) and return the
    `uvicorn.Config` arguments that bound connections: the httptools protocol with a
    request deadline and bounded headers (`services.connections`). Idle keep-alive
    connections close after uvicorn's `timeout_keep_alive`. `limit_concurrency` stays unset:
    it counts connections, so idle ones would make the server refuse everyone."""
    from eventledger.services.connections import guarded_protocol
    from eventledger.services.limits import install_limits

    limits = settings.limits
    install_limits(app, limits, settings.host)
    return {
        "http": guarded_protocol(
            request_timeout=limits.request_timeout,
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
        ),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }


def event_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def serve(
    service: Annotated[ServiceName, typer.Argument(help="Which service to run")],
    host: HostOpt = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Port to listen on \\[env: EVENTLEDGER_<NAME>_PORT]"),
    ] = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    readmodel_store: ReadModelStoreOpt = None,
    stream_url: StreamUrlOpt = None,
    advertise_url: AdvertiseUrlOpt = None,
    allow_unsafe_durability: UnsafeOpt = False,
    snapshot_store: SnapshotStoreOpt = None,
    snapshot_every: SnapshotEveryOpt = None,
    rate_limit: RateLimitOpt = None,
    max_subscribers: MaxSubscribersOpt = None,
    max_subscribers_per_caller: MaxSubscribersPerCallerOpt = None,
    request_timeout: RequestTimeoutOpt = None,
    auth_file: AuthFileOpt = None,
    insecure_no_auth: InsecureOpt = False,
    stream_token_file: StreamTokenFileOpt = None,
    cors_origin: CorsOriginOpt = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            "--ssl-certfile",
            help="Serve HTTPS with this certificate (PEM, chain included); needs --ssl-keyfile",
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option("--ssl-keyfile", help="The private key of --ssl-certfile (PEM)"),
    ] = None,
    transaction_url: Annotated[
        str | None,
        typer.Option(
            "--transaction-url",
            help="console: where it finds the transaction service \\[env: "
            "EVENTLEDGER_TRANSACTION_URL]",
        ),
    ] = None,
    accounting_url: Annotated[
        str | None,
        typer.Option(
            "--accounting-url",
            help="console: where it finds the accounting service \\[env: "
            "EVENTLEDGER_ACCOUNTING_URL]",
        ),
    ] = None,
    statistics_url: Annotated[
        str | None,
        typer.Option(
            "--statistics-url",
            help="console: where it finds the statistics service \\[env: "
            "EVENTLEDGER_STATISTICS_URL]",
        ),
    ] = None,
    supervised_by: Annotated[
        int | None,
        typer.Option(
            "--supervised-by",
            hidden=True,
            help="The pid of the `up` that started it: exit when it dies (cli/child.py)",
        ),
    ] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--instance-id",
            hidden=True,
            help="An id given by `up`, sent back in /health's X-Eventledger-Instance header",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="text (default: timestamped lines) or json (one object per line) "
            "\\[env: EVENTLEDGER_LOG_FORMAT]",
        ),
    ] = None,
    log_requests: Annotated[
        bool,
        typer.Option(
            "--log-requests",
            help="Log a line per request: method, path, status, ms, request id (default: "
            "only answers of 5xx) \\[env: EVENTLEDGER_LOG_REQUESTS]",
        ),
    ] = False,
    log_prefix: Annotated[
        bool,
        typer.Option(
            "--log-prefix/--no-log-prefix",
            hidden=True,
            help="Prefix log lines with the service name (`up` prefixes them itself)",
        ),
    ] = True,
) -> None:
    """Run one service until SIGTERM or Ctrl-C."""
    if supervised_by is not None:  # first: `up` may already be gone
        from eventledger.cli.child import die_with_parent

        die_with_parent(supervised_by)
    import uvicorn

    from eventledger import bootstrap
    from eventledger.logging import logging_config

    name = service.value
    settings = settings_from_flags(
        service=name,
        host=host,
        port=port,
        data_dir=data_dir,
        store=store,
        readmodel_store=readmodel_store,
        stream_url=stream_url,
        advertise_url=advertise_url,
        allow_unsafe_durability=allow_unsafe_durability,
        snapshot_store=snapshot_store,
        snapshot_every=snapshot_every,
        rate_limit=rate_limit,
        max_subscribers=max_subscribers,
        max_subscribers_per_caller=max_subscribers_per_caller,
        request_timeout=request_timeout,
        auth_file=auth_file,
        insecure_no_auth=insecure_no_auth,
        stream_token_file=stream_token_file,
        cors_origin=cors_origin,
        transaction_url=transaction_url,
        accounting_url=accounting_url,
        statistics_url=statistics_url,
        log_format=log_format,
        log_requests=log_requests,
    )
    try:
        # Before anything is bound: an open service on a reachable address never listens.
        exposure_warning = bootstrap.check_exposure(settings)
    except ConfigError as exc:
        raise UsageProblem(f"cannot start the {name} service: {exc}") from exc
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageProblem(f"cannot use the data dir {settings.data_dir}: {exc}") from exc
    try:
        app = bootstrap.build_app(name, settings)
    except (ConfigError, ValueError) as exc:
        raise UsageProblem(f"cannot start the {name} service: {exc}") from exc
    served: Any = app
    if instance_id is not None:
        from eventledger.cli.child import InstanceHeader

        if not instance_id.isascii() or not instance_id.isalnum() or len(instance_id) > 64:
            raise UsageProblem("--instance-id: 1-64 letters and digits")
        served = InstanceHeader(app, instance_id=instance_id)
    config = uvicorn.Config(
        served,
        host=settings.host,
        port=settings.port(name),
        loop=event_loop(),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=logging_config(
            name,
            prefix=f"{name} | " if log_prefix else "",
            log_format=settings.log_format,
            log_requests=settings.log_requests,
        ),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        **server_limits(app, settings),
        **tls_options(ssl_certfile, ssl_keyfile),
    )
    if exposure_warning is not None:  # logged once uvicorn's logging is configured
        logging.getLogger("eventledger.security").warning(exposure_warning)
    server = _server(config, app)
    gc.set_threshold(*GC_THRESHOLDS)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these no-op
    # handlers in place that re-raise is harmless, and a requested stop exits with code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise typer.Exit(3)
