"""The reads from the command line: balance, history, accounts, statistics.

Each is one read of the accounting or statistics service through the typed client, shown as
a table (or, with `--json`, the API's JSON). Money shows as the integer the API speaks and
formatted; times as RFC 3339 in UTC with a `Z`, which `--at` reads back (cli/times.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from eventledger.cli.client import ledger
from eventledger.cli.options import AccountingUrlOpt, JsonOpt, StatisticsUrlOpt, service_urls
from eventledger.cli.output import UsageProblem, amount_and_money, console, money, print_json
from eventledger.cli.times import format_api, format_instant, format_time, parse_at
from eventledger.client import (
    Account,
    Client,
    CurrencyStats,
    EventLedgerError,
    HistoryItem,
    Stats,
)


def currency_of(client: Client, account_id: str, position: int | None = None) -> str | None:
    """The account's currency as the accounting service sees it; None when unavailable."""
    try:
        return client.account(account_id, min_position=position).currency
    except EventLedgerError:
        return None


def account_json(account: Account) -> dict[str, Any]:
    """An account as the API writes it (times in RFC 3339 with microseconds and `Z`)."""
    body = asdict(account)
    for key in ("opened_at", "updated_at"):
        moment = getattr(account, key)
        body[key] = None if moment is None else format_api(moment)
    return body


def item_json(item: HistoryItem) -> dict[str, Any]:
    return asdict(item) | {"recorded_at": format_api(item.recorded_at)}


def balance(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="TIME",
            help="As it was then: an RFC 3339 time with its zone, as `history` prints it "
            "(2026-11-27T11:12:30Z: up to the end of that second), or a date (2026-11-27: "
            "its end, UTC)",
        ),
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
    moment = None if at is None else parse_at(at)
    urls = service_urls(accounting_url=accounting_url)
    with ledger(urls) as client:
        if moment is None and at_position is None:
            account = client.account(account_id, min_position=min_position)
            if as_json:
                print_json(account_json(account))
                return
            _print_account(account)
            return
        then = client.balance_at(
            account_id, at=moment, at_position=at_position, min_position=min_position
        )
    if as_json:
        extra = {"at": format_instant(moment)} if moment else {"at_position": at_position}
        print_json(asdict(then) | extra)
        return
    when = f"at {format_instant(moment)}" if moment else f"at position {at_position}"
    console.print(
        f"Balance of [bold]{account_id}[/] {when}: "
        f"[bold]{amount_and_money(then.balance, then.currency)}[/] "
        + (
            f"(available {amount_and_money(then.available, then.currency)}) "
            if then.available != then.balance
            else ""
        )
        + f"[dim](as of position {then.as_of_position})[/]",
        soft_wrap=True,
    )


def _print_account(account: Account) -> None:
    currency = account.currency
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("account", f"[bold]{account.account_id}[/]")
    table.add_row("balance", f"[bold]{amount_and_money(account.balance, currency)}[/]")
    if account.pending_debits or account.pending_credits:  # two-phase transfers held
        table.add_row("available", f"[bold]{amount_and_money(account.available, currency)}[/]")
        table.add_row("pending out", amount_and_money(account.pending_debits, currency))
        table.add_row("pending in", amount_and_money(account.pending_credits, currency))
    table.add_row("currency", currency)
    table.add_row("overdraft limit", amount_and_money(account.overdraft_limit, currency))
    table.add_row("status", account.status)
    table.add_row("version", str(account.version))
    if account.opened_at is not None:
        table.add_row("opened at", format_time(account.opened_at))
    table.add_row("updated at", format_time(account.updated_at))
    table.add_row("as of position", str(account.position))
    console.print(table)


def history(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first")] = 20,
    before: Annotated[
        str | None, typer.Option("--before", help="The `next` cursor of a previous page")
    ] = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the transactions of ACCOUNT, newest first (times in UTC: `--at` takes them)."""
    urls = service_urls(accounting_url=accounting_url)
    with ledger(urls) as client:
        page = client.history(account_id, limit=limit, before=before)
        if as_json:
            print_json(
                {
                    "account_id": account_id,
                    "items": [item_json(i) for i in page.items],
                    "next": page.next,
                }
            )
            return
        currency = currency_of(client, account_id)
    title = f"Transactions of {account_id}" + (f" ({currency})" if currency else "")
    table = Table(title=title, title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("recorded at", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("amount", justify="right", no_wrap=True)
    table.add_column("balance", justify="right", no_wrap=True)
    # Two-phase transfers: the hold an item concerns (its amount is what the balance did).
    holds = any(item.held is not None for item in page.items)
    if holds:
        table.add_column("held", justify="right", no_wrap=True)
    table.add_column("with", min_width=8, overflow="fold")
    table.add_column("reference", min_width=8, overflow="fold")
    for item in page.items:
        style = "green" if item.amount > 0 else "red"
        held = [] if not holds else ["" if item.held is None else _plain(item.held, currency)]
        table.add_row(
            format_time(item.recorded_at),
            item.kind,
            f"[{style}]{_plain(item.amount, currency)}[/]",
            _plain(item.balance_after, currency),
            *held,
            item.counterparty or "",
            # Free text: shown as it is, never read as markup. Reversals (docs/reversals.md)
            # add what a reversal undid, or which reversal undid the item, by a short id (as
            # git shows commits; --json has the whole ids), so the table fits 80 columns.
            _reference(item.reference, item.reverses, item.reversed_by),
        )
    # A page with holds or reversals needs about 100 columns: printed narrower, rich would crop
    # the reference column away (a terminal wraps a long line instead, losing nothing).
    wide = holds or any(item.reverses or item.reversed_by for item in page.items)
    out = console
    if wide and console.width < 110:
        out = Console(highlight=False, width=110, file=console.file)
        if not console.color_system:
            out = Console(highlight=False, width=110, file=console.file, color_system=None)
    out.print(table)
    if page.next:
        console.print(f"[dim]older: --before {page.next}[/]")


def _reference(reference: str | None, reverses: str | None, reversed_by: str | None) -> Text:
    text = Text(reference or "")
    link = (
        f"reverses {reverses[:8]}"
        if reverses
        else f"reversed by {reversed_by[:8]}"
        if reversed_by
        else ""
    )
    if link:
        text.append(("; " if reference else "") + link, style="dim")
    return text


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
    with ledger(urls) as client:
        page = client.accounts(limit=limit, after=after)
    if as_json:
        print_json({"items": [account_json(a) for a in page.items], "next": page.next})
        return
    table = Table(title="Accounts", title_style="bold")
    table.add_column("account")
    table.add_column("currency")
    table.add_column("balance", justify="right")
    table.add_column("overdraft limit", justify="right")
    table.add_column("status")
    for item in page.items:
        table.add_row(
            item.account_id,
            item.currency,
            money(item.balance, item.currency),
            money(item.overdraft_limit, item.currency),
            item.status,
        )
    console.print(table)
    if page.next:
        console.print(f"[dim]more: --after {page.next}[/]")


def stats_json(stats: Stats) -> dict[str, Any]:
    """`/stats` as the API writes it."""
    return {
        "position": stats.position,
        "currencies": {
            currency: {
                "accounts": {"open": c.open_accounts, "closed": c.closed_accounts},
                "total_balance": c.total_balance,
                "deposits": asdict(c.deposits),
                "withdrawals": asdict(c.withdrawals),
                "transfers": asdict(c.transfers),
                **({"two_phase": asdict(c.two_phase)} if c.two_phase is not None else {}),
            }
            for currency, c in stats.currencies.items()
        },
    }


def _two_phase(state: str, part: str) -> Callable[[CurrencyStats], int]:
    def value(c: CurrencyStats) -> int:
        counters = None if c.two_phase is None else getattr(c.two_phase, state)
        return 0 if counters is None else int(getattr(counters, part))

    return value


def _movement(kind: str, part: str) -> Callable[[CurrencyStats], int]:
    return lambda c: int(getattr(getattr(c, kind), part))


def stats(
    statistics_url: StatisticsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the statistics per currency."""
    urls = service_urls(statistics_url=statistics_url)
    with ledger(urls) as client:
        found = client.stats()
    if as_json:
        print_json(stats_json(found))
        return
    if not found.currencies:
        console.print("No statistics yet.")
        return
    per = found.currencies
    table = Table(
        title=f"Statistics as of position {found.position}", title_style="bold", box=box.SIMPLE_HEAD
    )
    table.add_column("")
    for currency in per:
        table.add_column(currency, justify="right")
    rows: list[tuple[str, Callable[[CurrencyStats], int], bool]] = [
        ("accounts open", lambda c: c.open_accounts, False),
        ("accounts closed", lambda c: c.closed_accounts, False),
        ("total balance", lambda c: c.total_balance, True),
    ]
    for kind in ("deposits", "withdrawals", "transfers"):
        rows.append((f"{kind} count", _movement(kind, "count"), False))
        rows.append((f"{kind} volume", _movement(kind, "volume"), True))
    # Two-phase transfers: shown once any currency has had a hold.
    if any(_two_phase("placed", "count")(c) for c in per.values()):
        for state in ("placed", "pending", "posted", "voided", "expired"):
            rows.append((f"holds {state} count", _two_phase(state, "count"), False))
            rows.append((f"holds {state} volume", _two_phase(state, "volume"), True))
    for label, value, is_money in rows:
        cells = [
            _plain(value(c), currency) if is_money else str(value(c)) for currency, c in per.items()
        ]
        table.add_row(label, *cells)
    console.print(table)
