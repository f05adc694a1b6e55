"""`eventledger forget ACCOUNT [--yes]`: erase an account's personal data (its owner and the
references of its transactions) by deleting its key (`POST /accounts/{id}/forget`, scope
`admin`). Amounts, balances, ids, times and the hash chain stay; it cannot be undone, so it
asks first unless `--yes`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from eventledger.cli.client import ledger
from eventledger.cli.options import JsonOpt, TransactionUrlOpt, service_urls
from eventledger.cli.output import console, print_json


def forget(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask: erasing cannot be undone")
    ] = False,
    transaction_url: TransactionUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase the personal data of ACCOUNT (owner, references) from the log and every read
    model, for good. Balances and the hash chain stay; forgetting twice erases once."""
    if not yes and not typer.confirm(
        f"Erase the personal data of {account_id} for good (owner, references)?"
    ):
        raise typer.Exit(1)
    with ledger(service_urls(transaction_url=transaction_url)) as client:
        erasure = client.forget(account_id)
    if as_json:
        print_json(asdict(erasure))
        return
    if erasure.replayed:
        console.print(
            f"Nothing new to erase: {account_id} was erased at position {erasure.position}",
            soft_wrap=True,
        )
        return
    console.print(
        f"Erased the personal data of {account_id} (PersonalDataErased at position "
        f"{erasure.position}, version {erasure.version})",
        soft_wrap=True,
    )
    if erasure.plaintext_fields:
        console.print(
            f"[yellow]{erasure.plaintext_fields} value(s) written before personal data was "
            "encrypted stay in the log as plaintext: an append-only log cannot erase them[/]",
            soft_wrap=True,
        )
