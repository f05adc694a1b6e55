"""`eventledger token create | list | revoke`: the tokens of an auth file.

`create` prints the new token once, on stdout alone (so `TOKEN=$(eventledger token create …)`
keeps it), or writes it to a 0600 file with `--token-file`; the auth file keeps only its
SHA-256. Running services pick a change up within a second (they watch their auth file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from eventledger.cli.output import CliError, UsageProblem, console, err_console, friendly_errors
from eventledger.config import ConfigError, load_settings
from eventledger.credentials import (
    SCOPES,
    AuthFileError,
    add_token,
    load_auth_file,
    revoke_token,
    write_private,
)

app = typer.Typer(
    name="token",
    help="Issue, list and revoke the bearer tokens of an auth file.",
    no_args_is_help=True,
    add_completion=False,
)

AuthFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--auth-file",
        help="The auth file (default <data-dir>/auth.json, as `eventledger up` makes it) "
        "\\[env: EVENTLEDGER_AUTH_FILE]",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the default auth file is (default ./eventledger-data) "
        "\\[env: EVENTLEDGER_DATA_DIR]",
    ),
]
NameOpt = Annotated[str, typer.Option("--name", help="Who holds the token, e.g. payroll-2026")]


def _auth_file(auth_file: Path | None, data_dir: Path | None) -> Path:
    try:
        settings = load_settings({"auth_file": auth_file, "data_dir": data_dir})
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from exc
    return settings.auth_file or settings.default_auth_file()


def create(
    name: NameOpt,
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"A scope to grant (repeat for more): {', '.join(SCOPES)}"),
    ],
    auth_file: AuthFileOpt = None,
    data_dir: DataDirOpt = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Write the token to this file (mode 0600) instead of printing it",
        ),
    ] = None,
) -> None:
    """Add a new random token with the given scopes and show it once."""
    path = _auth_file(auth_file, data_dir)
    try:
        token = add_token(path, name, scope)
    except AuthFileError as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise UsageProblem(str(exc)) from exc
    if token_file is not None:
        write_private(token_file, token + "\n")
        where = f"written to {token_file} (mode 0600)"
    else:
        print(token, flush=True)
        where = "printed above, once: store it now, it cannot be shown again"
    err_console.print(
        f"token [bold]{name}[/] ({', '.join(sorted(set(scope)))}) added to {path}; {where}. "
        "Services using this auth file accept it within a second.",
        soft_wrap=True,
    )


def list_tokens(auth_file: AuthFileOpt = None, data_dir: DataDirOpt = None) -> None:
    """List the tokens of an auth file: names and scopes (the tokens themselves are not kept)."""
    path = _auth_file(auth_file, data_dir)
    if not path.exists():
        raise CliError(f"there is no auth file {path}")
    try:
        entries = load_auth_file(path)
    except AuthFileError as exc:
        raise CliError(str(exc)) from exc
    table = Table(title=str(path))
    table.add_column("name")
    table.add_column("scopes")
    table.add_column("sha256 (first 12)")
    for entry in entries:
        table.add_row(entry.name, " ".join(sorted(entry.scopes)), entry.sha256[:12])
    console.print(table)


def revoke(name: NameOpt, auth_file: AuthFileOpt = None, data_dir: DataDirOpt = None) -> None:
    """Remove a token from an auth file; services refuse it within a second."""
    path = _auth_file(auth_file, data_dir)
    try:
        revoke_token(path, name)
    except AuthFileError as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    err_console.print(
        f"token [bold]{name}[/] revoked in {path}: services using this auth file refuse it "
        "within a second (a live subscription it opened ends at its next reconnection)."
    )


app.command("create")(friendly_errors(create))
app.command("list")(friendly_errors(list_tokens))
app.command("revoke")(friendly_errors(revoke))
