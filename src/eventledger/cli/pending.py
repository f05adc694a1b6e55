"""`eventledger pending ACCOUNT`: the two-phase transfers pending on an account, from the
accounting service (`GET /accounts/{id}/pending`), with what the account has available.

A table by default, the API's JSON with `--json`; oldest first, one page (`--after` the
cursor it prints for more). Money is shown as the integer of minor units and formatted.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from eventledger.cli.client import ledger
from eventledger.cli.options import AccountingUrlOpt, JsonOpt, service_urls
from eventledger.cli.output import amount_and_money, console, money, print_json
from eventledger.cli.times import format_api, format_time
from eventledger.client import PendingTransfer


def transfer_json(transfer: PendingTransfer) -> dict[str, Any]:
    """A pending transfer as the API writes it (times RFC 3339 with microseconds and `Z`)."""
    expires = transfer.expires_at
    return asdict(transfer) | {
        "expires_at": None if expires is None else format_api(expires),
        "recorded_at": format_api(transfer.recorded_at),
    }


def pending(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many")] = 50,
    after: Annotated[
        str | None, typer.Option("--after", help="The `next` cursor of a previous page")
    ] = None,
    min_position: Annotated[
        int | None, typer.Option("--min-position", min=0, help="Wait until this is applied")
    ] = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the two-phase transfers pending on ACCOUNT (held out or coming in), oldest first,
    and what the account has available."""
    urls = service_urls(accounting_url=accounting_url)
    with ledger(urls) as client:
        account = client.account(account_id, min_position=min_position)
        page = client.pending_transfers(
            account_id, limit=limit, after=after, min_position=min_position
        )
    if as_json:
        print_json(
            {
                "account_id": account_id,
                "pending_debits": account.pending_debits,
                "pending_credits": account.pending_credits,
                "items": [transfer_json(t) for t in page.items],
                "next": page.next,
            }
        )
        return
    currency = account.currency
    console.print(
        f"[bold]{account_id}[/]: balance {amount_and_money(account.balance, currency)}, "
        f"available [bold]{amount_and_money(account.available, currency)}[/] "
        f"(held out {amount_and_money(account.pending_debits, currency)}, "
        f"coming in {amount_and_money(account.pending_credits, currency)})",
        soft_wrap=True,
    )
    if not page.items:
        console.print("[dim]no pending transfers[/]")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("transaction", overflow="fold")
    table.add_column("dir", no_wrap=True)
    table.add_column("with", min_width=8, overflow="fold")
    table.add_column("amount", justify="right", no_wrap=True)
    table.add_column("expires at", no_wrap=True)
    table.add_column("reference", min_width=9, overflow="fold")
    for transfer in page.items:
        table.add_row(
            transfer.transaction_id,
            transfer.direction,
            transfer.counterparty,
            money(transfer.amount, currency).removesuffix(f" {currency}"),
            "never" if transfer.expires_at is None else format_time(transfer.expires_at),
            Text(transfer.reference or ""),  # free text: shown as it is, never read as markup
        )
    console.print(table)
    if page.next:
        console.print(f"[dim]more: --after {page.next}[/]")
