"""The command line: `eventledger up | serve | open | deposit | … | stream | tail | rebuild`.

Each command parses its options, reads settings once and calls a service or the composition
root (`bootstrap`); nothing here knows the domain. Errors are one line: exit code 1 for a
refused or failed request, 2 for a bad flag or setting.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from eventledger import __version__
from eventledger.cli import (
    bench,
    commands,
    holds,
    operator,
    projection,
    queries,
    streams,
    tokens,
    verify,
)
from eventledger.cli.forget import forget
from eventledger.cli.output import friendly_errors, print_error
from eventledger.cli.pending import pending
from eventledger.cli.reversals import reverse
from eventledger.cli.serve import serve
from eventledger.cli.up import up

app = typer.Typer(
    name="eventledger",
    help="An event-sourced, CQRS accounting ledger: run the services and drive the API.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_RUN = "Run the services"
_API = "Drive the API"
_OPERATE = "Operate"

app.command("up", rich_help_panel=_RUN)(friendly_errors(up))
app.command("serve", rich_help_panel=_RUN)(friendly_errors(serve))
app.command("open", rich_help_panel=_API)(friendly_errors(commands.open_account))
app.command("deposit", rich_help_panel=_API)(friendly_errors(commands.deposit))
app.command("withdraw", rich_help_panel=_API)(friendly_errors(commands.withdraw))
app.command("transfer", rich_help_panel=_API)(friendly_errors(commands.transfer))
app.command("close", rich_help_panel=_API)(friendly_errors(commands.close))
app.command("reverse", rich_help_panel=_API)(friendly_errors(reverse))
app.command("forget", rich_help_panel=_OPERATE)(friendly_errors(forget))
app.command("balance", rich_help_panel=_API)(friendly_errors(queries.balance))
app.command("history", rich_help_panel=_API)(friendly_errors(queries.history))
app.command("pending", rich_help_panel=_API)(friendly_errors(pending))
app.command("accounts", rich_help_panel=_API)(friendly_errors(queries.accounts))
app.command("stats", rich_help_panel=_API)(friendly_errors(queries.stats))
app.command("stream", rich_help_panel=_API)(friendly_errors(streams.stream))
app.command("tail", rich_help_panel=_OPERATE)(friendly_errors(operator.tail))
app.command("rebuild", rich_help_panel=_OPERATE)(friendly_errors(operator.rebuild))
app.command("bench", rich_help_panel=_OPERATE)(friendly_errors(bench.bench))
app.add_typer(holds.app, name="hold", rich_help_panel=_API)
app.add_typer(projection.app, name="projection", rich_help_panel=_OPERATE)
app.command("verify", rich_help_panel=_OPERATE)(friendly_errors(verify.verify))
app.add_typer(tokens.app, name="token", rich_help_panel=_OPERATE)


def _print_version(value: bool) -> None:
    if value:
        print(f"eventledger {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """An event-sourced, CQRS accounting ledger: run the services and drive the API."""


def main() -> None:
    """The `eventledger` console script."""
    try:
        # One name however started (`python -m eventledger` too): usage lines and the shell
        # completion script name the command a user types.
        app(prog_name="eventledger")
    except Exception as exc:  # a bug outside any command: still one line, not a traceback
        if os.environ.get("EVENTLEDGER_DEBUG"):
            raise
        print_error(f"unexpected {type(exc).__name__}: {exc} (EVENTLEDGER_DEBUG=1 shows more)")
        sys.exit(1)


__all__ = ["app", "main"]
