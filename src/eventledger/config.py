"""Settings, read once from flags and environment variables (flags win).

A bad value fails loudly, naming the flag or variable that carried it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SERVICES = ("stream", "transaction", "accounting", "statistics")
CONSOLE = "console"  # the browser console: a client of the four, started by `up` after them
UP_SERVICES = (*SERVICES, CONSOLE)
DEFAULT_PORTS = {
    "transaction": 8001,
    "stream": 8002,
    "accounting": 8003,
    "statistics": 8004,
    "console": 8005,
}
# `--port-base N` / EVENTLEDGER_PORT_BASE: every service at N + its offset (API.md's order).
PORT_OFFSETS = {"transaction": 1, "stream": 2, "accounting": 3, "statistics": 4, "console": 5}


class ConfigError(ValueError):
    """Raised when a flag or environment variable has a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    data_dir: Path = Path("eventledger-data")
    store: str | None = None  # the event store URL; None: SQLite under data_dir
    readmodel_store: str | None = None  # read models' store URL; None: SQLite under data_dir
    stream_url: str | None = None  # None: the local stream service
    # Where the other stream instances of a shared PostgreSQL store reach this one: given,
    # the instance takes part in the writer lease (eventstore/postgres_lease.py).
    advertise_url: str | None = None
    # Where the console finds the other services (`--transaction-url`, EVENTLEDGER_…_URL);
    # a service missing here is on this host at its port.
    service_urls: Mapping[str, str] = field(default_factory=dict)
    allow_unsafe_durability: bool = False
    # Security (API.md, "Security"). None: `<data_dir>/auth.json` when it exists, else open
    # (which only a loopback bind or `insecure_no_auth` allows).
    auth_file: Path | None = None
    insecure_no_auth: bool = False
    # What this service presents to the stream service: a token (EVENTLEDGER_STREAM_TOKEN) or
    # a file holding one; None for both: `<data_dir>/tokens/<service>.token` when it exists.
    stream_token: str | None = field(default=None, repr=False)
    stream_token_file: Path | None = None
    cors_origins: tuple[str, ...] = ()
    idempotency_secret: str | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=lambda: Limits())  # against abuse (`Limits`)
    # The transaction service's account snapshots (services/transaction/snapshots.py).
    snapshot_store: str | None = None  # None: SQLite under data_dir
    snapshot_every: int = 1000  # events of an account between two snapshots; 0: none
    log_format: str = "text"  # or "json": one JSON object per line (eventledger/logging.py)
    log_requests: bool = False  # a log line per request (services/requestlog.py)

    def port(self, service: str) -> int:
        return self.ports[service]

    def url(self, service: str) -> str:
        """Where a client on this machine finds `service`."""
        if service == "stream" and self.stream_url:
            return self.stream_url.rstrip("/")
        if service in self.service_urls:
            return self.service_urls[service].rstrip("/")
        return f"http://{self.host}:{self.port(service)}"

    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'events.db').resolve()}"

    def snapshot_url(self) -> str:
        path = self.data_dir / "transaction-snapshots.db"
        return self.snapshot_store or f"sqlite:///{path.resolve()}"

    def readmodel_url(self, service: str) -> str:
        return self.readmodel_store or f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def default_auth_file(self) -> Path:
        """Where `eventledger up` keeps the auth file: `<data_dir>/auth.json`."""
        return self.data_dir / "auth.json"

    def token_file(self, name: str) -> Path:
        """Where `eventledger up` keeps the token of caller `name`."""
        return self.data_dir / "tokens" / f"{name}.token"

    def idempotency_secret_file(self) -> Path:
        return self.data_dir / "idempotency.secret"


def _port(value: str, key: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ConfigError(f"{key} must be a port number 0..65535, not {value!r}")
    return int(value)


def _port_base(value: str, key: str) -> dict[str, int]:
    top = 65535 - max(PORT_OFFSETS.values())
    if not value.isdigit() or not 1 <= int(value) <= top:
        raise ConfigError(f"{key} must be a number 1..{top} (services at N+1..N+5), not {value!r}")
    return {service: int(value) + offset for service, offset in PORT_OFFSETS.items()}


def _ports(flags: Mapping[str, object | None], env: Mapping[str, str]) -> dict[str, int]:
    """Each service's port: the defaults, under EVENTLEDGER_PORT_BASE, under each
    EVENTLEDGER_<NAME>_PORT, under `--port-base`, under each `--<name>-port` (flags win)."""
    ports = dict(DEFAULT_PORTS)
    if env.get("EVENTLEDGER_PORT_BASE"):
        ports.update(_port_base(env["EVENTLEDGER_PORT_BASE"], "EVENTLEDGER_PORT_BASE"))
    for service in UP_SERVICES:
        var = f"EVENTLEDGER_{service.upper()}_PORT"
        if env.get(var):
            ports[service] = _port(env[var], var)
    if flags.get("port_base") is not None:
        ports.update(_port_base(str(flags["port_base"]), "--port-base"))
    for service in UP_SERVICES:
        given = flags.get(f"{service}_port")
        if given is not None:
            ports[service] = _port(str(given), f"--{service}-port")
    service_flag = flags.get("service")
    if flags.get("port") is not None and isinstance(service_flag, str):
        ports[service_flag] = _port(str(flags["port"]), "--port")
    return ports


def _service_urls(flags: Mapping[str, object | None], env: Mapping[str, str]) -> dict[str, str]:
    urls: dict[str, str] = {}
    for service in ("transaction", "accounting", "statistics"):
        value, key = flags.get(f"{service}_url"), f"--{service}-url"
        if value is None:
            value, key = (
                env.get(f"EVENTLEDGER_{service.upper()}_URL") or None,
                (f"EVENTLEDGER_{service.upper()}_URL"),
            )
        if value is None:
            continue
        if urlsplit(str(value)).scheme not in ("http", "https"):
            raise ConfigError(f"{key} must be an http:// URL, not {value!r}")
        urls[service] = str(value)
    return urls


def check_store_url(url: str, key: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("sqlite", "postgresql", "postgres", "memory"):
        raise ConfigError(
            f"{key} must be sqlite:///path/file.db or postgresql://user@host:port/db, not {url!r}"
        )
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise ConfigError(f"{key}: a SQLite URL is sqlite:///path/to/file.db, not {url!r}")
    return url


def load_settings(
    flags: Mapping[str, object | None] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from `flags` (CLI option values; None means not given) over `env`."""
    flags = flags or {}
    env = os.environ if env is None else env

    def pick(flag: str, var: str) -> tuple[str | None, str]:
        value = flags.get(flag)
        if value is not None:
            return str(value), f"--{flag.replace('_', '-')}"
        return env.get(var), var

    host, _ = pick("host", "EVENTLEDGER_HOST")
    ports = _ports(flags, env)
    data_dir, _ = pick("data_dir", "EVENTLEDGER_DATA_DIR")
    store, store_key = pick("store", "EVENTLEDGER_STORE")
    readmodel, readmodel_key = pick("readmodel_store", "EVENTLEDGER_READMODEL_STORE")
    stream_url, stream_key = pick("stream_url", "EVENTLEDGER_STREAM_URL")
    if stream_url and urlsplit(stream_url).scheme not in ("http", "https"):
        raise ConfigError(f"{stream_key} must be an http:// URL, not {stream_url!r}")
    advertise, advertise_key = pick("advertise_url", "EVENTLEDGER_ADVERTISE_URL")
    if advertise:
        parts = urlsplit(advertise)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ConfigError(
                f"{advertise_key} must be the http:// URL of this service "
                f"(scheme, host, port), not {advertise!r}"
            )
        if not store or urlsplit(store).scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"{advertise_key} is for stream instances sharing a PostgreSQL store "
                "(--store postgresql://...)"
            )
    unsafe, _ = pick("allow_unsafe_durability", "EVENTLEDGER_ALLOW_UNSAFE_DURABILITY")
    auth_file, auth_key = pick("auth_file", "EVENTLEDGER_AUTH_FILE")
    insecure, _ = pick("insecure_no_auth", "EVENTLEDGER_INSECURE_NO_AUTH")
    insecure_no_auth = _truthy(insecure)
    if auth_file and insecure_no_auth:
        raise ConfigError(
            f"{auth_key} and --insecure-no-auth contradict each other: give one of them"
        )
    token_file, _ = pick("stream_token_file", "EVENTLEDGER_STREAM_TOKEN_FILE")
    stream_token = None if token_file else env.get("EVENTLEDGER_STREAM_TOKEN") or None
    if stream_token is not None:
        stream_token = check_token(stream_token.strip(), "EVENTLEDGER_STREAM_TOKEN")
    secret = env.get("EVENTLEDGER_IDEMPOTENCY_SECRET") or None
    if secret is not None and len(secret) < 32:
        raise ConfigError(
            "EVENTLEDGER_IDEMPOTENCY_SECRET must be at least 32 characters "
            "(e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    log_format, log_format_key = pick("log_format", "EVENTLEDGER_LOG_FORMAT")
    if log_format and log_format not in ("text", "json"):
        raise ConfigError(f"{log_format_key} must be text or json, not {log_format!r}")
    log_requests, _ = pick("log_requests", "EVENTLEDGER_LOG_REQUESTS")
    return Settings(
        host=host or "127.0.0.1",
        ports=ports,
        data_dir=Path(data_dir or "eventledger-data"),
        store=check_store_url(store, store_key) if store else None,
        readmodel_store=check_store_url(readmodel, readmodel_key) if readmodel else None,
        stream_url=stream_url or None,
        advertise_url=advertise.rstrip("/") if advertise else None,
        service_urls=_service_urls(flags, env),
        allow_unsafe_durability=_truthy(unsafe),
        auth_file=Path(auth_file) if auth_file else None,
        insecure_no_auth=insecure_no_auth,
        stream_token=stream_token,
        stream_token_file=Path(token_file) if token_file else None,
        cors_origins=_origins(flags.get("cors_origin"), env.get("EVENTLEDGER_CORS_ORIGINS")),
        idempotency_secret=secret,
        limits=load_limits(flags, env),
        snapshot_store=_snapshot_store(*pick("snapshot_store", "EVENTLEDGER_SNAPSHOT_STORE")),
        snapshot_every=_count(*pick("snapshot_every", "EVENTLEDGER_SNAPSHOT_EVERY"), 1000),
        log_format=log_format or "text",
        log_requests=_truthy(log_requests),
    )


def _snapshot_store(url: str | None, key: str) -> str | None:
    if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(f"{key} must be sqlite:///path/file.db or postgresql://…, not {url!r}")
    return url or None


def _count(value: str | None, key: str, default: int) -> int:
    if not value:
        return default
    if not value.isdigit() or int(value) > 10**9:
        raise ConfigError(f"{key} must be a whole number 0..1000000000, not {value!r}")
    return int(value)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{16,512}=*")


def check_token(token: str, source: str) -> str:
    """A bearer token read from `source`; ConfigError naming the source (never the token)."""
    if _TOKEN.fullmatch(token) is None:
        raise ConfigError(
            f"{source} does not hold a bearer token (16-512 characters of letters, digits "
            "and -._~+/)"
        )
    return token


def _origins(flag: object | None, env_value: str | None) -> tuple[str, ...]:
    """CORS origins from repeated `--cors-origin` (a list) over EVENTLEDGER_CORS_ORIGINS
    (comma-separated), each `scheme://host[:port]`."""
    if isinstance(flag, (list, tuple)) and flag:
        given, key = [str(o) for o in flag], "--cors-origin"
    elif env_value:
        given, key = [o for o in env_value.split(",") if o.strip()], "EVENTLEDGER_CORS_ORIGINS"
    else:
        return ()
    return tuple(dict.fromkeys(normalise_origin(o, key) for o in given))


def normalise_origin(origin: str, key: str = "origin") -> str:
    """A web origin as browsers send it, `scheme://host[:port]` in lower case, no path;
    ConfigError naming `key` otherwise."""
    text = origin.strip().rstrip("/").lower()
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ConfigError(
            f"{key}: a CORS origin is scheme://host[:port] (e.g. http://127.0.0.1:8005), "
            f"not {origin!r}"
        )
    return text


# -- limits against abuse ---------------------------------------------------------------------

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Limits:
    """Limits against abuse (flag / variable; see `load_limits`)."""

    max_subscribers: int = 256  # --max-subscribers / EVENTLEDGER_MAX_SUBSCRIBERS (stream)
    max_subscribers_per_caller: int = 64  # --max-subscribers-per-caller / EVENTLEDGER_… (stream)
    # --rate-limit / EVENTLEDGER_RATE_LIMIT: "N/s", "N/min" or "off"; None: the default, off on
    # a loopback address and `limits.DEFAULT_RATE` on any other.
    rate_limit: str | None = None
    rate_limit_burst: int | None = None  # EVENTLEDGER_RATE_LIMIT_BURST; None: twice the rate
    request_timeout: float = 10.0  # --request-timeout / EVENTLEDGER_REQUEST_TIMEOUT (seconds)
    max_header_bytes: int = 32 * 1024  # EVENTLEDGER_MAX_HEADER_BYTES
    max_headers: int = 100  # EVENTLEDGER_MAX_HEADERS


def load_limits(flags: Mapping[str, object | None], env: Mapping[str, str]) -> Limits:
    """`Limits` from flags over environment variables; ConfigError naming a bad one."""
    default = Limits()

    def number(flag: str | None, var: str, low: float, high: float, fallback: float) -> float:
        value, key = (flags.get(flag), f"--{flag.replace('_', '-')}") if flag else (None, "")
        if value is None:
            value, key = env.get(var) or None, var
        if value is None:
            return fallback
        try:
            result = float(str(value))
        except ValueError:
            result = float("nan")
        if not low <= result <= high:
            raise ConfigError(f"{key} must be a number from {low:g} to {high:g}, not {value!r}")
        return result

    rate = flags.get("rate_limit")
    rate_key = "--rate-limit"
    if rate is None:
        rate, rate_key = env.get("EVENTLEDGER_RATE_LIMIT") or None, "EVENTLEDGER_RATE_LIMIT"
    burst = env.get("EVENTLEDGER_RATE_LIMIT_BURST") or None
    burst_value = None
    if burst is not None:
        if not burst.isdigit() or not 1 <= int(burst) <= 1_000_000:
            raise ConfigError(f"EVENTLEDGER_RATE_LIMIT_BURST must be 1..1000000, not {burst!r}")
        burst_value = int(burst)
    if rate is not None:
        from eventledger.services.limits import Rate  # only when given: keeps the CLI light

        try:
            Rate.parse(str(rate), burst=burst_value)
        except ValueError as exc:
            raise ConfigError(f"{rate_key}: {exc}") from exc
    return Limits(
        max_subscribers=int(
            number(
                "max_subscribers",
                "EVENTLEDGER_MAX_SUBSCRIBERS",
                1,
                100_000,
                default.max_subscribers,
            )
        ),
        max_subscribers_per_caller=int(
            number(
                "max_subscribers_per_caller",
                "EVENTLEDGER_MAX_SUBSCRIBERS_PER_CALLER",
                1,
                100_000,
                default.max_subscribers_per_caller,
            )
        ),
        rate_limit=None if rate is None else str(rate),
        rate_limit_burst=burst_value,
        request_timeout=number(
            "request_timeout", "EVENTLEDGER_REQUEST_TIMEOUT", 0.1, 3600, default.request_timeout
        ),
        max_header_bytes=int(
            number(
                None,
                "EVENTLEDGER_MAX_HEADER_BYTES",
                1024,
                1024 * 1024,
                default.max_header_bytes,
            )
        ),
        max_headers=int(number(None, "EVENTLEDGER_MAX_HEADERS", 8, 10_000, default.max_headers)),
    )
