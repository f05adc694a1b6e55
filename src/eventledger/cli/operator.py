"""Operator tasks: follow the live log (`tail`) and rebuild a projection by replay.

`tail` follows `GET /events/subscribe` and, when the connection drops, reconnects after the
last position it printed, so no event is shown twice or skipped. `rebuild` asks a read
model to replay the log from position 0 and shows its progress from `/health`; with
`--blue-green` the new version is built beside the live one, which goes on serving, and the
progress comes from `GET /admin/rebuild` until the switch.
"""

from __future__ import annotations

import enum
import json
import signal
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from eventledger.cli.client import ServiceAnswered, ServiceClient, endpoints
from eventledger.cli.output import CliError, console, err_console
from eventledger.cli.serve import StreamUrlOpt

TYPE_STYLES = {
    "AccountOpened": "bold cyan",
    "MoneyDeposited": "green",
    "MoneyWithdrawn": "red",
    "TransferSent": "magenta",
    "TransferReceived": "blue",
    "AccountClosed": "yellow",
}
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
POLL_SECONDS = 0.2


def event_line(envelope: dict[str, Any]) -> Text:
    """One line per event: position, time, stream, type, data."""
    data = envelope.get("data") or {}
    # Sorted: PostgreSQL's jsonb keeps keys in its own order; a line must read the same on
    # every backend.
    fields = " ".join(f"{key}={json.dumps(value)}" for key, value in sorted(data.items()))
    event_type = str(envelope.get("type", "?"))
    return Text.assemble(
        (f"{envelope.get('position', '?'):>8} ", "bold"),
        (f"{envelope.get('recorded_at', '')} ", "dim"),
        f"{envelope.get('stream', '?')} ",
        (event_type, TYPE_STYLES.get(event_type, "bold")),
        f" {fields}",
    )


def tail(
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            help="Start after this position (0: the whole log; default: only new events)",
        ),
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only events of this type")
    ] = None,
    stream_prefix: Annotated[
        str | None, typer.Option("--stream-prefix", help="Only streams starting with this")
    ] = None,
    stream_url: StreamUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each envelope as JSON")] = False,
) -> None:
    """Follow the event log live, one line per event, until Ctrl-C."""
    url = endpoints({"stream": stream_url}).url("stream")
    # "Until Ctrl-C" even when started with SIGINT ignored (as a shell does for `… &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ServiceClient("stream", url) as stream:
        if after is None:
            after = int(stream.request("GET", "/health").body.get("head_position", 0))
        params: dict[str, str | int] = {}
        if event_type is not None:
            params["type"] = event_type
        if stream_prefix is not None:
            params["stream_prefix"] = stream_prefix
        err_console.print(f"[dim]following {url}/events/subscribe after position {after}…[/]")
        failures = 0
        try:
            while True:
                try:
                    for event_id, _, data in stream.events(
                        "/events/subscribe", params={**params, "after": after}
                    ):
                        failures = 0
                        envelope = json.loads(data)
                        after = int(envelope.get("position", event_id or after))
                        if as_json:
                            print(json.dumps(envelope, ensure_ascii=False), flush=True)
                        else:
                            console.print(event_line(envelope), soft_wrap=True)
                except CliError as exc:
                    refused = isinstance(exc, ServiceAnswered) and exc.status < 500
                    if refused or failures >= len(RECONNECT_DELAYS):
                        raise
                    err_console.print(f"[yellow]{exc}; reconnecting…[/]")
                    time.sleep(RECONNECT_DELAYS[failures])
                    failures += 1
                else:  # the server ended the stream (it is stopping): resume where we are
                    time.sleep(RECONNECT_DELAYS[0])
        except KeyboardInterrupt:
            return


class ReadModel(enum.StrEnum):
    accounting = "accounting"
    statistics = "statistics"


def rebuild(
    service: Annotated[ReadModel, typer.Argument(help="The read model to rebuild")],
    url: Annotated[
        str | None,
        typer.Option("--url", help="The service's URL (default from EVENTLEDGER_<NAME>_PORT)"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Show progress until caught up")
    ] = True,
    blue_green: Annotated[
        bool,
        typer.Option(
            "--blue-green",
            help="Build a new version beside the live one, which serves until the switch "
            "(no read answers 503 meanwhile)",
        ),
    ] = False,
) -> None:
    """Rebuild a read model by replaying the whole log, with a progress bar."""
    name = service.value
    base = endpoints({name: url}).url(name)
    if blue_green:
        _rebuild_blue_green(name, base, wait=wait)
        return
    with ServiceClient(name, base) as client:
        started = time.monotonic()
        accepted = client.request("POST", "/admin/rebuild", json={}, ok=(200, 202)).body
        console.print(f"The {name} service is replaying the log from position 0.")
        if not wait:
            return
        # The 202 answer is the health as of the reset; poll `/health` from there.
        health = accepted if isinstance(accepted, dict) else {}
        if "position" not in health:
            health = client.request("GET", "/health", ok=(200, 503)).body
        target = int(health.get("head_position") or 0)
        columns = (
            TextColumn(f"rebuilding {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(name, total=max(target, 1))
            while True:
                position = int(health.get("position") or 0)
                target = max(target, int(health.get("head_position") or 0))
                progress.update(task, completed=min(position, target), total=max(target, 1))
                if health.get("halted"):
                    raise CliError(f"the {name} projection halted: {health['halted']}")
                rebuilding = bool(health.get("rebuilding", False))
                if position >= target and not rebuilding:
                    progress.update(task, completed=max(target, 1))
                    break
                time.sleep(POLL_SECONDS)
                # 503 while rebuilding (reads are refused until the replay is done): expected.
                health = client.request("GET", "/health", ok=(200, 503)).body
    console.print(
        f"The {name} service has caught up at position {position} "
        f"({time.monotonic() - started:.1f} s)."
    )


def _rebuild_blue_green(name: str, base: str, *, wait: bool) -> None:
    """`rebuild --blue-green`: start the build, then show its progress until the switch."""
    with ServiceClient(name, base) as client:
        started = time.monotonic()
        answer = client.request(
            "POST", "/admin/rebuild", json={"mode": "blue-green"}, ok=(202,)
        ).body
        build = answer["blue_green"]
        console.print(
            f"The {name} service is building version {build['version']} of its read model "
            f"beside version {build['from_version']}, which goes on serving."
        )
        if not wait:
            return
        columns = (
            TextColumn(f"building {name} v{build['version']}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("building", total=max(int(build.get("head") or 0), 1))
            while True:
                head = max(int(build.get("head") or 0), 1)
                position = min(int(build.get("position") or 0), head)
                progress.update(task, completed=position, total=head, description=build["state"])
                if build["state"] in ("done", "failed"):
                    break
                time.sleep(POLL_SECONDS)
                status = client.request("GET", "/admin/rebuild").body
                build = status.get("blue_green") or build
    if build["state"] == "failed":
        raise CliError(
            f"the blue/green rebuild of {name} failed: {build.get('error')}; version "
            f"{build['from_version']} goes on serving"
        )
    console.print(
        f"Switched: version {build['version']} of the {name} read model is live at position "
        f"{build['position']} ({time.monotonic() - started:.1f} s); version "
        f"{build['from_version']} is dropped."
    )
