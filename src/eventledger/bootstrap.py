"""The composition root: the one place that picks concrete adapters and wires services.

Nothing is connected at import time; `build_app` returns an app whose lifespan opens
what it needs, secured as the settings say (`secure`): tokens when there is an auth file,
the Host and Origin rules always.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI

from eventledger.config import CONSOLE, SERVICES, ConfigError, Settings
from eventledger.domain.upcasters import UPCASTERS
from eventledger.eventstore.store import EventStore
from eventledger.eventstore.upcasting import UpcasterRegistry


def build_upcasters() -> UpcasterRegistry:
    registry = UpcasterRegistry()
    for event_type, from_version, upcaster in UPCASTERS:
        registry.register(event_type, from_version, upcaster)
    return registry


async def open_event_store(
    url: str, *, allow_unsafe_durability: bool = False, advertise_url: str | None = None
) -> EventStore:
    """Open the event store named by `url` (sqlite:///…, postgresql://…, memory://);
    `advertise_url`: a PostgreSQL store's instance takes part in the writer lease."""
    scheme = urlsplit(url).scheme
    upcasters = build_upcasters()
    if scheme == "memory":
        from eventledger.eventstore.memory import MemoryEventStore

        return MemoryEventStore(upcasters=upcasters)
    if scheme == "sqlite":
        from eventledger.eventstore.sqlite import SqliteEventStore

        return SqliteEventStore.from_url(url, upcasters=upcasters)
    from eventledger.eventstore.postgres import PostgresEventStore

    return await PostgresEventStore.open(
        url,
        upcasters=upcasters,
        allow_unsafe_durability=allow_unsafe_durability,
        advertise_url=advertise_url,
    )


def auth_file_of(settings: Settings) -> Path | None:
    """The auth file a service uses: `--auth-file`, else `<data-dir>/auth.json` when it
    exists (so a service started by hand in `up`'s data dir is as closed as under `up`);
    None with `--insecure-no-auth` or when there is none: the service runs open."""
    if settings.insecure_no_auth:
        return None
    if settings.auth_file is not None:
        return settings.auth_file
    default = settings.default_auth_file()
    return default if default.exists() else None


def check_exposure(settings: Settings) -> str | None:
    """Whether a service with these settings may start: None when it has an auth file, a
    warning to log when it may run open (a loopback bind, or `--insecure-no-auth`), and a
    ConfigError when it would run open on an address others can reach. Checked before
    anything is bound."""
    from eventledger.services.browser import is_loopback

    if auth_file_of(settings) is not None:
        return None
    if settings.insecure_no_auth:
        return (
            f"running WITHOUT AUTHENTICATION on {settings.host} (--insecure-no-auth): anyone "
            "who can reach this address can do anything"
        )
    if not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without an auth file: anyone who can "
            "reach it could append events and read every balance. Give --auth-file (see "
            "`eventledger token create`), or --insecure-no-auth if something else protects it"
        )
    return (
        f"no auth file: running open on the loopback address {settings.host}; every local "
        "program may call this service (give --auth-file, or use `eventledger up`, to require "
        "tokens)"
    )


def stream_token(service: str, settings: Settings) -> str | None:
    """The token `service` presents to the stream service: `--stream-token-file`, else
    EVENTLEDGER_STREAM_TOKEN, else `<data-dir>/tokens/<service>.token` when it exists."""
    from eventledger.credentials import read_token_file

    if settings.stream_token_file is not None:
        return read_token_file(settings.stream_token_file, what="stream token file")
    if settings.stream_token is not None:
        return settings.stream_token
    default = settings.token_file(service)
    return read_token_file(default) if default.exists() else None


def secure(app: FastAPI, service: str, settings: Settings) -> None:
    """Install the security of `app` (before it starts): tokens and scopes when there is an
    auth file, and the Host and Origin rules (services/browser.py) outermost."""
    from eventledger.services.auth import AuthFileAuthenticator, secure_app
    from eventledger.services.browser import BrowserGuard, loopback_hosts
    from eventledger.services.http import Metrics

    auth_file = auth_file_of(settings)
    # The console checks sessions itself (services/console/signin.py: a sign-in with a token
    # of this auth file); its /metrics takes a bearer token, checked there too.
    if auth_file is not None and service != CONSOLE:
        secure_app(app, service=service, authenticator=AuthFileAuthenticator(auth_file))
    port = settings.port(service)
    metrics = getattr(app.state, "metrics", None)
    app.add_middleware(
        BrowserGuard,
        service=service,
        allowed_hosts=loopback_hosts(settings.host, port),
        any_port=port == 0,
        # No other origin may ever use the console: it would act with the console's token.
        cors_origins=() if service == CONSOLE else settings.cors_origins,
        metrics=metrics if isinstance(metrics, Metrics) else None,
    )


def build_app(service: str, settings: Settings) -> FastAPI:
    """The ASGI app of one service, wired to its adapters and secured (`secure`)."""
    app = _build_service(service, settings)
    secure(app, service, settings)
    return app


def _build_service(service: str, settings: Settings) -> FastAPI:
    if service == "stream":
        from eventledger.services.stream.app import create_app as create_stream

        store_url = settings.store_url()
        unsafe = settings.allow_unsafe_durability
        advertise = settings.advertise_url

        async def open_store() -> EventStore:
            return await open_event_store(
                store_url, allow_unsafe_durability=unsafe, advertise_url=advertise
            )

        from eventledger.services.stream.guard_snapshots import GuardSnapshotStore

        # The guard's facts every `snapshot_every` events, in a file of this instance's own.
        guard_snapshots = settings.data_dir / "guard-snapshots.db"
        return create_stream(
            open_store=open_store,
            guard_snapshot_store=(
                GuardSnapshotStore(guard_snapshots) if settings.snapshot_every else None
            ),
            guard_snapshot_every=settings.snapshot_every,
        )
    if service == "transaction":
        from eventledger.credentials import idempotency_secret
        from eventledger.services.transaction.app import create_app as create_transaction
        from eventledger.services.transaction.snapshots import open_snapshot_store

        return create_transaction(
            stream_url=settings.url("stream"),
            stream_token=stream_token(service, settings),
            idempotency_secret=idempotency_secret(settings),
            follow_log=True,  # several instances decide on current state (issue 12)
            snapshot_store=(
                open_snapshot_store(settings.snapshot_url()) if settings.snapshot_every else None
            ),
            snapshot_every=settings.snapshot_every,
        )
    if service in ("accounting", "statistics"):
        from eventledger.services.readside.db import ReadModelDB, open_readmodel_db

        url = settings.readmodel_url(service)

        def open_db() -> ReadModelDB:
            return open_readmodel_db(url, namespace=service)

        if service == "accounting":
            from eventledger.services.accounting.app import create_app as create_accounting

            return create_accounting(
                stream_url=settings.url("stream"),
                open_db=open_db,
                stream_token=stream_token(service, settings),
            )
        from eventledger.services.statistics.app import create_app as create_statistics

        return create_statistics(
            stream_url=settings.url("stream"),
            open_db=open_db,
            stream_token=stream_token(service, settings),
        )
    if service == CONSOLE:
        return _build_console(settings)
    raise ValueError(f"unknown service {service!r}")


def _build_console(settings: Settings) -> FastAPI:
    """The browser console: a client of the four services with a token of its own."""
    from eventledger.services.browser import is_loopback
    from eventledger.services.console.app import create_app as create_console

    # Its operators sign in, but it acts with its own token and is not yet meant to be
    # exposed: loopback only, unless the operator says.
    if not is_loopback(settings.host) and not settings.insecure_no_auth:
        raise ConfigError(
            f"the console acts with its own token (its operators sign in, but it is not yet meant "
            f"to be exposed): refusing to "
            f"listen on {settings.host}; keep it on 127.0.0.1 (reach it through an SSH tunnel "
            "or a reverse proxy that authenticates), or give --insecure-no-auth"
        )
    return create_console(
        urls={name: settings.url(name) for name in SERVICES},
        token=stream_token(CONSOLE, settings),
        auth_file=auth_file_of(settings),
    )
