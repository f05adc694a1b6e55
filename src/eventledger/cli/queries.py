"""The reads from the command line: balance, history, accounts, statistics.

Each is one GET to the accounting or statistics service, shown as a table (or, with `--json`,
the API's JSON as it came). Money shows as the integer the API speaks and formatted.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from eventledger.cli.client import Endpoints, ServiceClient, segment
from eventledger.cli.options import AccountingUrlOpt, JsonOpt, StatisticsUrlOpt, service_urls
from eventledger.cli.output import (
    CliError,
    UsageProblem,
    amount_and_money,
    console,
    money,
    print_json,
)


def account(
    urls: Endpoints, account_id: str, *, min_position: int | None = None
) -> dict[str, Any] | None:
    """The account as the accounting service sees it; None when that is unavailable."""
    headers = {"X-Min-Position": str(min_position)} if min_position is not None else {}
    try:
        with ServiceClient("accounting", urls.url("accounting")) as accounting:
            body = accounting.request(
                "GET", f"/accounts/{segment(account_id)}", headers=headers
            ).body
    except CliError:
        return None
    return body if isinstance(body, dict) else None


def currency_of(urls: Endpoints, account_id: str, position: int | None = None) -> str | None:
    found = account(urls, account_id, min_position=position)
    currency = found.get("currency") if found else None
    return currency if isinstance(currency, str) else None


def _read(urls: Endpoints, service: str, path: str, **params: str | int | None) -> Any:
    query = {key: value for key, value in params.items() if value is not None}
    with ServiceClient(service, urls.url(service)) as client:
        return client.request("GET", path, params=query).body


def balance(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    at: Annotated[
        str | None, typer.Option("--at", help="RFC 3339 time, e.g. 2026-01-31T23:59:59Z")
    ] = None,
    at_position: Annotated[
        int | None, typer.Option("--at-position", min=0, help="A global log position")
    ] = None,
    min_position: Annotated[
        int | None, typer.Option("--min-position", min=0, help="Wait until this is applied")
    ] = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the balance of ACCOUNT, now or as it was at a time or position."""
    if at is not None and at_position is not None:
        raise UsageProblem("give --at or --at-position, not both")
    urls = service_urls(accounting_url=accounting_url)
    if at is None and at_position is None:
        body = _read(
            urls, "accounting", f"/accounts/{segment(account_id)}", min_position=min_position
        )
        if as_json:
            print_json(body)
            return
        currency = body.get("currency")
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_row("account", f"[bold]{body['account_id']}[/]")
        table.add_row("balance", f"[bold]{amount_and_money(body['balance'], currency)}[/]")
        table.add_row("currency", str(currency))
        table.add_row("overdraft limit", amount_and_money(body["overdraft_limit"], currency))
        table.add_row("status", str(body.get("status")))
        table.add_row("version", str(body.get("version")))
        table.add_row("updated at", str(body.get("updated_at")))
        table.add_row("as of position", str(body.get("position")))
        console.print(table)
        return
    body = _read(
        urls,
        "accounting",
        f"/accounts/{segment(account_id)}/balance",
        at=at,
        at_position=at_position,
        min_position=min_position,
    )
    if as_json:
        print_json(body)
        return
    currency = body.get("currency") or currency_of(urls, account_id)
    when = f"at {at}" if at is not None else f"at position {at_position}"
    console.print(
        f"Balance of [bold]{account_id}[/] {when}: "
        f"[bold]{amount_and_money(body['balance'], currency)}[/]"
    )


def history(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first")] = 20,
    before: Annotated[
        str | None, typer.Option("--before", help="The `next` cursor of a previous page")
    ] = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the transactions of ACCOUNT, newest first."""
    urls = service_urls(accounting_url=accounting_url)
    body = _read(
        urls,
        "accounting",
        f"/accounts/{segment(account_id)}/transactions",
        limit=limit,
        before=before,
    )
    if as_json:
        print_json(body)
        return
    currency = currency_of(urls, account_id)
    title = f"Transactions of {account_id}" + (f" ({currency})" if currency else "")
    table = Table(title=title, title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("recorded at (UTC)", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("amount", justify="right", no_wrap=True)
    table.add_column("balance", justify="right", no_wrap=True)
    table.add_column("with", min_width=8, overflow="fold")
    table.add_column("reference", min_width=8, overflow="fold")
    for item in body.get("items", []):
        amount = item["amount"]
        style = "green" if amount > 0 else "red"
        table.add_row(
            _short_time(str(item.get("recorded_at", ""))),
            str(item.get("kind", "")),
            f"[{style}]{_plain(amount, currency)}[/]",
            _plain(item["balance_after"], currency),
            str(item.get("counterparty") or ""),
            str(item.get("reference") or ""),
        )
    console.print(table)
    if body.get("next"):
        console.print(f"[dim]older: --before {body['next']}[/]")


def _short_time(text: str) -> str:
    """`2026-11-27T10:52:07.459387Z` → `2026-11-27 10:52:07`."""
    return text[:19].replace("T", " ")


def _plain(amount: int, currency: str | None) -> str:
    """Money without its currency code, for columns whose title names the currency."""
    return money(amount, currency).removesuffix(f" {currency}")


def accounts(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many at most")] = 100,
    after: Annotated[str | None, typer.Option("--after", help="Start after this cursor")] = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the accounts the accounting service knows."""
    urls = service_urls(accounting_url=accounting_url)
    body = _read(urls, "accounting", "/accounts", limit=limit, after=after)
    if as_json:
        print_json(body)
        return
    items = body.get("items", body.get("accounts")) if isinstance(body, dict) else body
    table = Table(title="Accounts", title_style="bold")
    table.add_column("account")
    table.add_column("currency")
    table.add_column("balance", justify="right")
    table.add_column("overdraft limit", justify="right")
    table.add_column("status")
    for item in items or []:
        currency = item.get("currency")
        table.add_row(
            str(item.get("account_id")),
            str(currency),
            money(item.get("balance", 0), currency),
            money(item.get("overdraft_limit", 0), currency),
            str(item.get("status", "")),
        )
    console.print(table)
    if isinstance(body, dict) and body.get("next"):
        console.print(f"[dim]more: --after {body['next']}[/]")


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    else:
        into[prefix] = value


def _per_currency(body: Any) -> dict[str, dict[str, Any]]:
    """The per-currency part of `/stats`, whether keyed by currency or a list of rows."""
    if isinstance(body, dict):
        for key in ("currencies", "by_currency", "per_currency"):
            if key in body:
                return _per_currency(body[key])
        if body and all(isinstance(v, dict) for v in body.values()):
            return {str(k): v for k, v in body.items()}
    if isinstance(body, list):
        return {str(row.get("currency")): row for row in body if isinstance(row, dict)}
    return {}


def stats(
    statistics_url: StatisticsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the statistics per currency."""
    urls = service_urls(statistics_url=statistics_url)
    body = _read(urls, "statistics", "/stats")
    if as_json:
        print_json(body)
        return
    rows = _per_currency(body)
    if not rows:
        console.print("No statistics yet.")
        return
    flat_rows: dict[str, dict[str, Any]] = {}
    for currency, row in rows.items():
        flat: dict[str, Any] = {}
        _flatten("", row, flat)
        flat.pop("currency", None)
        flat_rows[currency] = flat
    position = body.get("position") if isinstance(body, dict) else None
    title = "Statistics" + (f" as of position {position}" if position is not None else "")
    table = Table(title=title, title_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("")
    for currency in flat_rows:
        table.add_column(currency, justify="right")
    for key in dict.fromkeys(key for flat in flat_rows.values() for key in flat):
        cells = []
        for currency, flat in flat_rows.items():
            value = flat.get(key, "")
            is_money = "balance" in key or "volume" in key or "flow" in key
            cells.append(_plain(value, currency) if is_money and type(value) is int else str(value))
        table.add_row(key.replace("_", " ").replace(".", " "), *cells)
    console.print(table)
