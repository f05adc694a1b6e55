"""`eventledger hold place | post | void | show`: two-phase transfers from the command line.

    eventledger hold place alice bob 2500 --timeout 30   # phase one: the money is held
    eventledger hold post TRANSACTION_ID [--amount 1000] # phase two: move all or part of it
    eventledger hold void TRANSACTION_ID                 # ...or release it
    eventledger hold show TRANSACTION_ID                 # pending, posted, voided or expired

Like every command, each goes to the transaction service through the typed client with an
`Idempotency-Key` (generated per invocation unless `--idempotency-key` is given).
"""

from __future__ import annotations

from typing import Annotated

import typer

from eventledger.cli.client import ledger
from eventledger.cli.commands import _body, _replayed
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
from eventledger.cli.output import amount_and_money, console, friendly_errors, print_json
from eventledger.cli.queries import currency_of
from eventledger.client import HoldOutcome

app = typer.Typer(
    help="Two-phase transfers: hold money, then post or void it (or let it expire).",
    no_args_is_help=True,
)

TransactionArg = Annotated[
    str, typer.Argument(metavar="TRANSACTION_ID", help="The id `hold place` printed")
]


def place(
    from_account: Annotated[str, typer.Argument(metavar="FROM")],
    to_account: Annotated[str, typer.Argument(metavar="TO")],
    amount: AmountArg,
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            min=1,
            max=30 * 24 * 3600,
            help="Void the hold automatically after this many seconds unless posted",
        ),
    ] = None,
    reference: ReferenceOpt = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hold AMOUNT minor units of FROM for TO: no longer available to FROM, not yet TO's."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        result = client.hold(
            from_account,
            to_account,
            amount,
            timeout_seconds=timeout,
            reference=reference,
            idempotency_key=idempotency_key,
        )
        if as_json:
            print_json(_body(result))
            return
        currency = currency_of(client, from_account, result.position)

    def shown(value: int) -> str:
        return amount_and_money(value, currency)

    until = f", expires {result.expires_at}" if result.expires_at else ", no expiry"
    console.print(
        f"Held {shown(result.amount)} from [bold]{from_account}[/] for [bold]{to_account}[/] "
        f"(balance {shown(result.from_balance)}, available {shown(result.from_available)}"
        f"{until})\n"
        f"transaction {result.transaction_id}, position {result.position}"
        f"{_replayed(result.replayed)}",
        soft_wrap=True,
    )


def _print_outcome(result: HoldOutcome, currency: str | None) -> None:
    def shown(value: int) -> str:
        return amount_and_money(value, currency)

    what = (
        f"Posted {shown(result.amount)} of {shown(result.held)}"
        if result.status == "posted"
        else f"Voided: released {shown(result.amount)}"
    )
    console.print(
        f"{what} from [bold]{result.from_account}[/] (balance {shown(result.from_balance)}, "
        f"available {shown(result.from_available)}) to [bold]{result.to_account}[/] (balance "
        f"{shown(result.to_balance)}) (position {result.position}){_replayed(result.replayed)}",
        soft_wrap=True,
    )


def post(
    transaction_id: TransactionArg,
    amount: Annotated[
        int | None,
        typer.Option(
            "--amount", parser=minor_units, help="Post only part of the hold (minor units)"
        ),
    ] = None,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete a pending transfer: move the held amount (or --amount of it) to its receiver."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        result = client.post_transfer(
            transaction_id, amount=amount, idempotency_key=idempotency_key
        )
        if as_json:
            print_json(_body(result))
            return
        currency = currency_of(client, result.from_account, result.position)
    _print_outcome(result, currency)


def void(
    transaction_id: TransactionArg,
    idempotency_key: KeyOpt = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Release a pending transfer: nothing moves."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        result = client.void_transfer(transaction_id, idempotency_key=idempotency_key)
        if as_json:
            print_json(_body(result))
            return
        currency = currency_of(client, result.from_account, result.position)
    _print_outcome(result, currency)


def show(
    transaction_id: TransactionArg,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a two-phase transfer: pending, posted, voided or expired."""
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    with ledger(urls) as client:
        state = client.transfer_state(transaction_id)
        if as_json:
            print_json(_body(state))
            return
        currency = currency_of(client, state.from_account)
    until = f", expires {state.expires_at}" if state.expires_at else ""
    console.print(
        f"{state.transaction_id}: {state.status} — {amount_and_money(state.amount, currency)} "
        f"from [bold]{state.from_account}[/] to [bold]{state.to_account}[/]{until}",
        soft_wrap=True,
    )


# Registered with the one-line errors every command has (exit 1 for a refused request).
app.command("place")(friendly_errors(place))
app.command("post")(friendly_errors(post))
app.command("void")(friendly_errors(void))
app.command("show")(friendly_errors(show))
