"""`eventledger reverse TX_ID [--reason TEXT]`: undo a transaction with new events on every
account it touched (`POST /transactions/{id}/reverse`).

Prints each account's change and balance after, or the API's JSON with `--json`. Refusals
(already reversed, money spent, account closed, ...) are one line with the problem's slug,
like every command's.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from eventledger.cli.client import ledger
from eventledger.cli.options import (
    AccountingUrlOpt,
    JsonOpt,
    KeyOpt,
    TransactionUrlOpt,
    service_urls,
)
from eventledger.cli.output import amount_and_money, console, print_json
from eventledger.cli.queries import currency_of


def reverse(
    transaction_id: Annotated[str, typer.Argument(metavar="TX_ID")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept as the reversal's reference)")
    ] = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reverse transaction TX_ID: new events give back what it moved, on every account it
    touched (the original stays in the log). A transaction is reversed at most once."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        result = client.reverse(transaction_id, reason=reason, idempotency_key=idempotency_key)
        if as_json:
            body = asdict(result)
            body.pop("replayed", None)
            print_json(body)
            return
        currencies = [currency_of(client, a.account_id, result.position) for a in result.accounts]
    replayed = " [dim](replayed: already done earlier with this key)[/]" if result.replayed else ""
    console.print(
        f"Reversed transaction {result.reverses} (reversal {result.transaction_id}, "
        f"position {result.position}){replayed}",
        soft_wrap=True,
    )
    for account, currency in zip(result.accounts, currencies, strict=True):
        console.print(
            f"  [bold]{account.account_id}[/]: {amount_and_money(account.amount, currency)}, "
            f"balance {amount_and_money(account.balance, currency)}",
            soft_wrap=True,
        )
