"""Settings, read once from flags and environment variables (flags win).

A bad value fails loudly, naming the flag or variable that carried it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SERVICES = ("stream", "transaction", "accounting", "statistics")
DEFAULT_PORTS = {"transaction": 8001, "stream": 8002, "accounting": 8003, "statistics": 8004}


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
    allow_unsafe_durability: bool = False

    def port(self, service: str) -> int:
        return self.ports[service]

    def url(self, service: str) -> str:
        """Where a client on this machine finds `service`."""
        if service == "stream" and self.stream_url:
            return self.stream_url.rstrip("/")
        return f"http://{self.host}:{self.port(service)}"

    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'events.db').resolve()}"

    def readmodel_url(self, service: str) -> str:
        return self.readmodel_store or f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"


def _port(value: str, key: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ConfigError(f"{key} must be a port number 0..65535, not {value!r}")
    return int(value)


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
    ports = dict(DEFAULT_PORTS)
    for service in SERVICES:
        var = f"EVENTLEDGER_{service.upper()}_PORT"
        if env.get(var):
            ports[service] = _port(env[var], var)
    service_flag = flags.get("service")
    if flags.get("port") is not None and isinstance(service_flag, str):
        ports[service_flag] = _port(str(flags["port"]), "--port")
    data_dir, _ = pick("data_dir", "EVENTLEDGER_DATA_DIR")
    store, store_key = pick("store", "EVENTLEDGER_STORE")
    readmodel, readmodel_key = pick("readmodel_store", "EVENTLEDGER_READMODEL_STORE")
    stream_url, stream_key = pick("stream_url", "EVENTLEDGER_STREAM_URL")
    if stream_url and urlsplit(stream_url).scheme not in ("http", "https"):
        raise ConfigError(f"{stream_key} must be an http:// URL, not {stream_url!r}")
    unsafe, _ = pick("allow_unsafe_durability", "EVENTLEDGER_ALLOW_UNSAFE_DURABILITY")
    return Settings(
        host=host or "127.0.0.1",
        ports=ports,
        data_dir=Path(data_dir or "eventledger-data"),
        store=check_store_url(store, store_key) if store else None,
        readmodel_store=check_store_url(readmodel, readmodel_key) if readmodel else None,
        stream_url=stream_url or None,
        allow_unsafe_durability=(unsafe or "").lower() in ("1", "true", "yes"),
    )
