"""`eventledger up`'s ports: every one checked free before anything starts, and how to move one.

A taken port is named with the service it was for and the flags and variables that choose
another (`--<name>-port`, `EVENTLEDGER_<NAME>_PORT`, `--port-base`): the usual cause is a stale
instance, and the usual fix is a port elsewhere.
"""

from __future__ import annotations

import errno
import socket

from eventledger.cli.output import CliError, UsageProblem
from eventledger.config import CONSOLE, Settings


def host_of(settings: Settings, name: str) -> str:
    """Where `name` listens: `--host`, except that the console stays on loopback unless
    `--insecure-no-auth` (loopback only: bootstrap refuses it elsewhere)."""
    from eventledger.services.browser import is_loopback  # only `up` needs it: lazily

    if name == CONSOLE and not is_loopback(settings.host) and not settings.insecure_no_auth:
        return "127.0.0.1"
    return settings.host


def port_hint(name: str) -> str:
    return (
        f"--{name}-port P (or EVENTLEDGER_{name.upper()}_PORT), or every port at once with "
        "--port-base N (services at N+1..N+5; EVENTLEDGER_PORT_BASE)"
    )


def _port_taken(host: str, port: int) -> OSError | None:
    """Whether `port` on `host` cannot be bound now (as uvicorn binds: SO_REUSEADDR, so a
    socket in TIME_WAIT does not count); the error, or None when it is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


def check_ports(settings: Settings, names: list[str]) -> None:
    """Fail before anything starts when two services share a port or one is taken, naming
    the port, the service and how to choose another."""
    seen: dict[int, str] = {}
    for name in names:
        port = settings.port(name)
        if port in seen:
            raise UsageProblem(
                f"the {seen[port]} and {name} services are both given port {port}: choose "
                f"another with {port_hint(name)}"
            )
        seen[port] = name
        host = host_of(settings, name)
        taken = _port_taken(host, port)
        if taken is None:
            continue
        if taken.errno == errno.EADDRINUSE:
            why = "is already in use (another eventledger still running? `ss -ltnp` shows who)"
        else:
            why = f"cannot be used ({taken.strerror or taken})"
        raise CliError(
            f"port {port} on {host}, for the {name} service, {why}; nothing was "
            f"started. Choose another with {port_hint(name)}"
        )
