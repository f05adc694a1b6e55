"""The commands from the command line: open, deposit, withdraw, transfer, close.

Each goes to the transaction service through the typed client (`eventledger.client`), with
an `Idempotency-Key` (one generated per invocation unless `--idempotency-key` is given), so
the client's own retries are safe. The position a command returns is passed as
`X-Min-Position` to the read that follows it, so the balance shown (formatted in the
account's currency) already includes the command.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from eventledger.cli.client import ledger
from eventledger.cli.options import (
    AccountingUrlOpt,
    AmountArg,
    JsonOpt,
    KeyOpt,
    ReferenceOpt,
    TransactionUrlOpt,
    minor_units,
    service_urls,
)
from eventledger.cli.output import amount_and_money, console, money, print_json
from eventledger.cli.queries import currency_of


def _replayed(replayed: bool) -> str:
    return " [dim](replayed: already done earlier with this key)[/]" if replayed else ""


def _body(result: Any) -> dict[str, Any]:
    """The API's answer as `--json` prints it: the result's fields but `replayed`."""
    body = asdict(result)
    body.pop("replayed", None)
    return body


def open_account(
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. EUR")],
    account_id: Annotated[
        str | None, typer.Option("--id", help="The account id (default: generated)")
    ] = None,
    overdraft: Annotated[
        int,
        typer.Option("--overdraft", parser=minor_units, help="Overdraft limit in minor units"),
    ] = 0,
    owner: Annotated[str | None, typer.Option("--owner", help="Who holds the account")] = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open an account."""
    urls = service_urls(transaction_url=transaction_url)
    with ledger(urls) as client:
        result = client.open_account(
            currency,
            account_id=account_id,
            overdraft_limit=overdraft,
            owner=owner,
            idempotency_key=idempotency_key,
        )
    if as_json:
        print_json(_body(result))
        return
    limit = f", overdraft limit {money(overdraft, currency)}" if overdraft else ""
    console.print(
        f"Opened account [bold]{result.account_id}[/] in {result.currency}{limit} "
        f"(position {result.position}){_replayed(result.replayed)}",
        soft_wrap=True,
    )


def _money_command(
    verb: str,
    account_id: str,
    amount: int,
    reference: str | None,
    idempotency_key: str | None,
    transaction_url: str | None,
    accounting_url: str | None,
    as_json: bool,
) -> None:
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        move = client.deposit if verb == "Deposited" else client.withdraw
        result = move(account_id, amount, reference=reference, idempotency_key=idempotency_key)
        if as_json:
            print_json(_body(result))
            return
        currency = currency_of(client, account_id, result.position)
    console.print(
        f"{verb} {amount_and_money(amount, currency)}: account [bold]{account_id}[/] "
        f"balance {amount_and_money(result.balance, currency)} "
        f"(transaction {result.transaction_id}, position {result.position})"
        f"{_replayed(result.replayed)}",
        soft_wrap=True,
    )


def deposit(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    amount: AmountArg,
    reference: ReferenceOpt = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deposit AMOUNT minor units into ACCOUNT."""
    _money_command(
        "Deposited",
        account_id,
        amount,
        reference,
        idempotency_key,
        transaction_url,
        accounting_url,
        as_json,
    )


def withdraw(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    amount: AmountArg,
    reference: ReferenceOpt = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw AMOUNT minor units from ACCOUNT."""
    _money_command(
        "Withdrew",
        account_id,
        amount,
        reference,
        idempotency_key,
        transaction_url,
        accounting_url,
        as_json,
    )


def transfer(
    from_account: Annotated[str, typer.Argument(metavar="FROM")],
    to_account: Annotated[str, typer.Argument(metavar="TO")],
    amount: AmountArg,
    reference: ReferenceOpt = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move AMOUNT minor units from FROM to TO, atomically."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        result = client.transfer(
            from_account, to_account, amount, reference=reference, idempotency_key=idempotency_key
        )
        if as_json:
            print_json(_body(result))
            return
        currency = currency_of(client, from_account, result.position)
    console.print(
        f"Transferred {amount_and_money(amount, currency)} from [bold]{from_account}[/] "
        f"(balance {amount_and_money(result.from_balance, currency)}) to "
        f"[bold]{to_account}[/] (balance {amount_and_money(result.to_balance, currency)}) "
        f"(transaction {result.transaction_id}, position {result.position})"
        f"{_replayed(result.replayed)}",
        soft_wrap=True,
    )


def close(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close ACCOUNT (its balance must be 0)."""
    urls = service_urls(transaction_url=transaction_url)
    with ledger(urls) as client:
        result = client.close_account(account_id, idempotency_key=idempotency_key)
    if as_json:
        print_json(_body(result) | {"status": "closed"})
        return
    console.print(
        f"Closed account [bold]{account_id}[/] (position {result.position})"
        f"{_replayed(result.replayed)}"
    )
