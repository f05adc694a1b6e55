"""The commands from the command line: open, deposit, withdraw, transfer, close.

Each goes to the transaction service with an `Idempotency-Key` (one generated per invocation
unless `--idempotency-key` is given), so the client's own retries are safe. The position a
command returns is passed as `X-Min-Position` to the read that follows it, so the balance
shown (formatted in the account's currency) already includes the command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from eventledger.cli.client import (
    Endpoints,
    Reply,
    ServiceClient,
    new_idempotency_key,
    segment,
)
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


def _command(urls: Endpoints, path: str, body: dict[str, Any], key: str | None) -> Reply:
    with ServiceClient("transaction", urls.url("transaction")) as transaction:
        return transaction.command(path, body, key=key or new_idempotency_key())


def _replayed(reply: Reply) -> str:
    return (
        " [dim](replayed: already done earlier with this key)[/]"
        if (reply.headers.get("Idempotent-Replayed", "").lower() == "true")
        else ""
    )


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
    body: dict[str, Any] = {"currency": currency}
    if account_id is not None:
        body["account_id"] = account_id
    if overdraft:
        body["overdraft_limit"] = overdraft
    if owner is not None:
        body["owner"] = owner
    reply = _command(urls, "/accounts", body, idempotency_key)
    if as_json:
        print_json(reply.body)
        return
    result = reply.body
    limit = f", overdraft limit {money(overdraft, currency)}" if overdraft else ""
    console.print(
        f"Opened account [bold]{result['account_id']}[/] in {result['currency']}{limit} "
        f"(position {result['position']}){_replayed(reply)}",
        soft_wrap=True,
    )


def _money_command(
    verb: str,
    path: str,
    account_id: str,
    amount: int,
    reference: str | None,
    idempotency_key: str | None,
    transaction_url: str | None,
    accounting_url: str | None,
    as_json: bool,
) -> None:
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    body: dict[str, Any] = {"amount": amount}
    if reference is not None:
        body["reference"] = reference
    reply = _command(urls, path, body, idempotency_key)
    if as_json:
        print_json(reply.body)
        return
    result = reply.body
    currency = currency_of(urls, account_id, result.get("position"))
    console.print(
        f"{verb} {amount_and_money(amount, currency)}: account [bold]{account_id}[/] "
        f"balance {amount_and_money(result['balance'], currency)} "
        f"(transaction {result['transaction_id']}, position {result['position']})"
        f"{_replayed(reply)}",
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
        f"/accounts/{segment(account_id)}/deposits",
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
        f"/accounts/{segment(account_id)}/withdrawals",
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
    body: dict[str, Any] = {"from_account": from_account, "to_account": to_account}
    body["amount"] = amount
    if reference is not None:
        body["reference"] = reference
    reply = _command(urls, "/transfers", body, idempotency_key)
    if as_json:
        print_json(reply.body)
        return
    result = reply.body
    currency = currency_of(urls, from_account, result.get("position"))
    console.print(
        f"Transferred {amount_and_money(amount, currency)} from [bold]{from_account}[/] "
        f"(balance {amount_and_money(result['from_balance'], currency)}) to "
        f"[bold]{to_account}[/] (balance {amount_and_money(result['to_balance'], currency)}) "
        f"(transaction {result['transaction_id']}, position {result['position']})"
        f"{_replayed(reply)}",
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
    reply = _command(urls, f"/accounts/{segment(account_id)}/close", {}, idempotency_key)
    if as_json:
        print_json(reply.body)
        return
    position = reply.body.get("position") if isinstance(reply.body, dict) else None
    where = f" (position {position})" if position is not None else ""
    console.print(f"Closed account [bold]{account_id}[/]{where}{_replayed(reply)}")
