"""`eventledger stream NAME`: one stream's events, its versions beside their global positions.

A stream's version counts its own events (1, 2, 3… no gaps: what a writer's
`expected_version` refers to); the position orders every event of every stream. Seeing both
side by side is the quickest way to tell them apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from eventledger.cli.client import endpoints, ledger
from eventledger.cli.operator import TYPE_STYLES
from eventledger.cli.output import console, print_json
from eventledger.cli.serve import StreamUrlOpt
from eventledger.cli.times import format_api, format_time
from eventledger.client import RecordedEvent

MAX_LIMIT = 10_000  # the stream service's own bound


def event_json(event: RecordedEvent) -> dict[str, Any]:
    """An event as the API writes it."""
    return asdict(event) | {
        "id": str(event.id),
        "recorded_at": format_api(event.recorded_at),
    }


def stream(
    name: Annotated[str, typer.Argument(metavar="NAME", help="e.g. account-alice")],
    from_version: Annotated[
        int, typer.Option("--from-version", min=1, help="The first version to show")
    ] = 1,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_LIMIT, help="How many events at most")
    ] = 100,
    stream_url: StreamUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
) -> None:
    """Show a stream's events: its version beside each event's global position."""
    with ledger(endpoints({"stream": stream_url})) as client:
        page = client.read_stream(name, from_version=from_version, limit=limit)
    if as_json:
        events = [event_json(e) for e in page.events]
        print_json({"stream": page.stream, "version": page.version, "events": events})
        return
    table = Table(
        title=f"Stream {page.stream} (version {page.version})",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("position", justify="right", no_wrap=True)
    table.add_column("recorded at", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("data", overflow="fold")
    for event in page.events:
        # Sorted: the stores keep an object's keys in different orders (PostgreSQL's jsonb
        # by length), and the same event must read the same on every backend.
        data = " ".join(
            f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(event.data.items())
        )
        table.add_row(
            str(event.stream_version),
            str(event.position),
            format_time(event.recorded_at),
            Text(event.type, style=TYPE_STYLES.get(event.type, "bold")),
            Text(data),  # stored text is shown as it is, never read as markup
        )
    console.print(table)
    last = page.events[-1].stream_version if page.events else from_version - 1
    if last < page.version:
        console.print(f"[dim]more: --from-version {last + 1}[/]")
