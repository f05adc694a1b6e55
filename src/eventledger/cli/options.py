"""Options and arguments shared by the client commands: service URLs, amounts, `--json`."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from eventledger.cli.client import Endpoints, endpoints

TransactionUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--transaction-url",
        envvar="EVENTLEDGER_TRANSACTION_URL",
        help="The transaction service (default from EVENTLEDGER_TRANSACTION_PORT)",
    ),
]
AccountingUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--accounting-url",
        envvar="EVENTLEDGER_ACCOUNTING_URL",
        help="The accounting service (default from EVENTLEDGER_ACCOUNTING_PORT)",
    ),
]
StatisticsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--statistics-url",
        envvar="EVENTLEDGER_STATISTICS_URL",
        help="The statistics service (default from EVENTLEDGER_STATISTICS_PORT)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer as it came")]
ReferenceOpt = Annotated[str | None, typer.Option("--reference", help="Free text, up to 256")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Makes the command safe to repeat (default: a new key per invocation)",
    ),
]

_DIGITS = re.compile(r"[0-9]{1,30}")


def minor_units(text: str | int) -> int:
    """An amount argument: a whole number of minor units. `12.34` is refused, not rounded."""
    if isinstance(text, int):  # a default value
        return text
    if _DIGITS.fullmatch(text) is None:
        raise typer.BadParameter(
            f"{text!r} is not a whole number of minor units: write 1234 for 12.34 EUR"
        )
    return int(text)


AmountArg = Annotated[
    int,
    typer.Argument(
        parser=minor_units, metavar="AMOUNT", help="Minor units (cents): 1234 is 12.34 EUR"
    ),
]


def service_urls(**given: str | None) -> Endpoints:
    """Service URLs from `<service>_url` option values over the settings."""
    return endpoints({name.removesuffix("_url"): url for name, url in given.items()})
