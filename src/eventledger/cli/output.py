"""What the command line prints: money in minor units and formatted, one-line errors.

    CliError                 one clear line on stderr, exit code 1
    └── UsageProblem         a bad flag, argument or setting: exit code 2

Amounts are integers of minor units everywhere; formatting divides by the currency's
minor-unit exponent with integer arithmetic only (never a float).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")

# ISO 4217 minor-unit exponents that are not 2. Funds, metals and test codes (X…) without a
# minor unit count as 0.
_NOT_TWO = """
    0: BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF
    0: XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS XUA XXX
    3: BHD IQD JOD KWD LYD OMR TND
    4: CLF UYW
"""
_EXPONENTS: dict[str, int] = {
    code: int(digits)
    for digits, codes in (line.split(":") for line in _NOT_TWO.strip().splitlines())
    for code in codes.split()
}


class CliError(Exception):
    """Raised when a command cannot do what was asked; shown as one line, exit code 1."""

    exit_code = 1


class UsageProblem(CliError):
    """Raised when a flag, argument or setting has a value we cannot use; exit code 2."""

    exit_code = 2


def exponent(currency: str | None) -> int:
    return _EXPONENTS.get(currency or "", 2)


def money(amount: int, currency: str | None) -> str:
    """`1234, "EUR"` → `12.34 EUR`; integer arithmetic only. Without a currency: `1,234`."""
    if currency is None:
        return f"{amount:,}"
    digits = exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**digits)
    text = f"{sign}{major:,}" if digits == 0 else f"{sign}{major:,}.{minor:0{digits}d}"
    return f"{text} {currency}"


def amount_and_money(amount: int, currency: str | None) -> str:
    """`1234 (12.34 EUR)`: the integer the API speaks and what it means."""
    return str(amount) if currency is None else f"{amount} ({money(amount, currency)})"


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print one red line on stderr and exit with `code` (inside a command)."""
    print_error(message)
    raise typer.Exit(code)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a `CliError` (or an unexpected exception) into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            fail(str(exc), code=exc.exit_code)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("EVENTLEDGER_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (EVENTLEDGER_DEBUG=1 shows more)")

    return wrapper


def print_json(value: Any) -> None:
    """Machine-readable output for `--json`: the API's JSON as it came."""
    import json

    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()
