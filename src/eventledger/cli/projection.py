"""`eventledger projection skip|park|decisions NAME`: get a halted read model going again.

A projection halts at an event it cannot apply (see `/health`). `skip` moves past it and
forgets it; `park` moves past it and keeps the event aside in the read model's database for
inspection. Either needs the position it is halted at (`--position`), so a decision is never
taken about an event the operator did not see, and is kept as an audit record (who, when,
why) that a rebuild honours. `decisions` lists those records.
"""

from __future__ import annotations

import getpass
import json
import socket
from typing import Annotated, Any

import typer

from eventledger.cli.client import endpoints, ledger
from eventledger.cli.operator import ReadModel
from eventledger.cli.output import console, friendly_errors
from eventledger.cli.times import format_time

app = typer.Typer(
    name="projection",
    help="Get a halted read model past the event it halted on (skip or park), audited.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NameArg = Annotated[ReadModel, typer.Argument(help="The read model: accounting or statistics")]
PositionOpt = Annotated[
    int, typer.Option("--position", min=1, help="The position it is halted at (see /health)")
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit record)")]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="The service's URL (default from EVENTLEDGER_<NAME>_PORT)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer as it came")]


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


def _decide(action: str, name: ReadModel, position: int, reason: str, url: str | None) -> Any:
    service = name.value
    with ledger(endpoints({service: url})) as client:
        decide = client.skip if action == "skip" else client.park
        return decide(name.value, position=position, reason=reason, by=_who())


def _report(action: str, answer: dict[str, Any], name: str) -> None:
    decision = answer["decision"]
    console.print(
        f"{'Skipped' if action == 'skip' else 'Parked'} the event at position "
        f"{decision['position']} ({decision['type']} on {decision['stream']}) of the {name} "
        f"read model; it is now at position {answer['position']}."
    )
    halted = answer.get("halted")
    if halted:
        console.print(
            f"[yellow]It halted again at position {halted['position']}: {halted['reason']}[/]"
        )


def _decide_and_report(
    action: str, name: ReadModel, position: int, reason: str, url: str | None, *, as_json: bool
) -> None:
    answer = _decide(action, name, position, reason, url)
    if as_json:
        print(json.dumps(answer))
    else:
        _report(action, answer, name.value)


def skip(
    name: NameArg,
    position: PositionOpt,
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Skip the event a read model halted on: move past it and forget it (audited)."""
    _decide_and_report("skip", name, position, reason, url, as_json=as_json)


def park(
    name: NameArg,
    position: PositionOpt,
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Park the event a read model halted on: move past it and keep it aside (audited)."""
    _decide_and_report("park", name, position, reason, url, as_json=as_json)


def decisions(name: NameArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List every skip and park of a read model: position, event, who, when, why."""
    service = name.value
    with ledger(endpoints({service: url})) as client:
        items = client.decisions(name.value)
    if as_json:
        print(json.dumps({"items": [dict(d.raw) for d in items]}))
        return
    if not items:
        console.print(f"No event of the {service} read model was skipped or parked.")
    for d in items:
        console.print(
            f"{d.position:>8} {d.action:<4} {d.type} on {d.stream} "
            f"by {d.by} at {format_time(d.at)}: {d.reason or '(no reason given)'} "
            f"[dim](halted because: {d.raw.get('halt_reason')})[/]",
            soft_wrap=True,
        )


app.command("skip")(friendly_errors(skip))
app.command("park")(friendly_errors(park))
app.command("decisions")(friendly_errors(decisions))
