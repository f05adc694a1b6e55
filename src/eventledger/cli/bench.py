"""`eventledger bench`: load on a running system over HTTP, then a check of its money.

1. Opens `--accounts` fresh accounts `bench-<run>-NNNN` (a random run prefix: runs never meet).
2. `--concurrency` workers send 60 % deposits, 20 % withdrawals (up to a quarter above the
   balance the run has tracked, so refusals are exercised) and 20 % transfers, each with its
   own Idempotency-Key, for `--duration` or until `--commands` were sent.
3. Measures the read-your-writes lag: the time from the end of the load until the accounting
   service answers a read with `X-Min-Position` = the last position written.
4. Verifies that every account's balance at the accounting service is the sum of the accepted
   amounts the run tracked; otherwise, or when an outcome stayed unknown, exit code 1.

aiohttp, not httpx: httpx costs ~10x the CPU per request, and a load generator that burns the
CPU measures itself. It is imported when a run starts (it takes longer to import than the rest
of the command line). A command without a known outcome (no answer, 503) is retried with its
key, which makes that safe; if it stays unknown the load stops. The accounts stay: append only.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from eventledger.cli.client import cli_token, segment
from eventledger.cli.options import AccountingUrlOpt, TransactionUrlOpt, service_urls
from eventledger.cli.output import CliError, UsageProblem, console, print_json

if TYPE_CHECKING:
    import aiohttp

KINDS = ("deposit", "withdrawal", "transfer")
WEIGHTS = (60, 20, 20)
REFUSED = "409 insufficient-funds"
CURRENCY = "EUR"
DEFAULT_SECONDS = 10.0
MAX_SECONDS = 3600.0  # also the limit of a `--commands` run: the bench always ends by itself
MAX_COMMANDS = 1_000_000
REQUEST_SECONDS = 10.0  # above the accounting service's 5 s X-Min-Position wait
RETRY_DELAYS = (0.2, 0.5, 1.0)
CATCH_UP_SECONDS = 30.0
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def duration_seconds(text: str | float) -> float:
    """`10s`, `500ms`, `2m` or `10` (seconds) → seconds, at most an hour."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration: write 10s, 500ms or 2m")
    seconds = float(match[1]) * _UNIT[match[2]]
    if not 0 < seconds <= MAX_SECONDS:
        raise typer.BadParameter(f"{text!r}: a duration is more than 0 and at most 1 hour")
    return seconds


def _label(status: int, body: Any) -> str:
    """`201`, `409 insufficient-funds`, `503 stream-unavailable`: status and problem slug."""
    if status < 300 or not isinstance(body, dict):
        return str(status)
    return f"{status} {str(body.get('type', '')).rstrip('/').rsplit('/', 1)[-1]}".strip()


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str
) -> tuple[int, Any, str]:
    """POST a command: `(status, body, label)`, status 0 without an answer. Retried with
    the same key while the outcome is unknown: the key makes the retry safe."""
    import aiohttp

    answer: tuple[int, Any, str] = (0, None, "no answer")
    for delay in (*RETRY_DELAYS, None):
        try:
            async with session.post(url, json=body, headers={"Idempotency-Key": key}) as reply:
                payload = await reply.json(content_type=None)
                answer = (reply.status, payload, _label(reply.status, payload))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            answer = (0, None, f"no answer ({type(exc).__name__})")
        if answer[0] not in (0, 503) or delay is None:
            break
        await asyncio.sleep(delay)
    return answer


async def _get(session: aiohttp.ClientSession, url: str, position: int) -> tuple[int, Any]:
    """A read once the service has applied `position`: `(status, body)`, 0 without answer."""
    import aiohttp

    try:
        async with session.get(url, headers={"X-Min-Position": str(position)}) as reply:
            return reply.status, await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, None


class Load:
    """The workers' shared state: what to send next, and everything the run saw."""

    def __init__(self, url: str, accounts: list[str], run: str, limit: int, ends: float) -> None:
        self.url, self.accounts, self.run, self.limit, self.ends = url, accounts, run, limit, ends
        self.rng = random.Random()
        self.sent = 0
        self.stopped = False
        self.expected = dict.fromkeys(accounts, 0)  # the accepted amounts, per account
        self.latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        self.last_position = 0
        self.unknown = 0

    def next_command(self) -> tuple[str, str, dict[str, Any], list[tuple[str, int]]] | None:
        """`(kind, path, body, balance changes if accepted)`, or None when the load is over."""
        if self.stopped or self.sent >= self.limit or time.monotonic() >= self.ends:
            return None
        self.sent += 1
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        index = self.rng.randrange(len(self.accounts))
        account = self.accounts[index]
        balance = max(self.expected[account], 0)
        path = f"/accounts/{segment(account)}"
        if kind == "deposit":
            amount = self.rng.randint(1, 10_000)
            return kind, f"{path}/deposits", {"amount": amount}, [(account, amount)]
        if kind == "withdrawal":
            amount = self.rng.randint(1, balance + balance // 4 + 100)
            return kind, f"{path}/withdrawals", {"amount": amount}, [(account, -amount)]
        to = self.accounts[(index + self.rng.randrange(1, len(self.accounts))) % len(self.accounts)]
        amount = self.rng.randint(1, max(1, balance // 2))
        body = {"from_account": account, "to_account": to, "amount": amount}
        return kind, "/transfers", body, [(account, -amount), (to, amount)]

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while (command := self.next_command()) is not None:
            kind, path, body, changes = command
            key = f"{self.run}-{self.sent}"  # a key per command, bound once it is accepted
            started = time.perf_counter()
            status, reply, label = await _post(session, self.url + path, body, key)
            self.latencies[kind].append(time.perf_counter() - started)
            self.outcomes[kind][label] += 1
            if status in (200, 201):
                for account, change in changes:
                    self.expected[account] += change
                self.last_position = max(self.last_position, int(reply["position"]))
            elif status in (0, 503):  # applied or not, we cannot know: the money is unknown
                self.unknown += 1
                self.stopped = True


def _latency(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (nearest rank)."""
    ordered = sorted(samples) or [0.0]
    rank = {q: ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in (0.5, 0.9, 0.99)}
    values = {"p50": rank[0.5], "p90": rank[0.9], "p99": rank[0.99], "max": ordered[-1]}
    return {name: round(value * 1000, 2) for name, value in values.items()}


def _summary(samples: list[float], outcomes: Counter[str]) -> dict[str, Any]:
    known = outcomes["201"] + outcomes[REFUSED]
    buckets = {
        "201": outcomes["201"],
        REFUSED: outcomes[REFUSED],
        "other": outcomes.total() - known,
    }
    return {"commands": len(samples), "outcomes": buckets, "latency_ms": _latency(samples)}


async def _run(
    urls: dict[str, str], accounts: int, concurrency: int, limit: int, seconds: float
) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)  # a keep-alive connection per worker
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    token = cli_token().value  # the CLI's token, as every command presents it
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        for service, url in urls.items():
            if (await _get(session, f"{url}/health", 0))[0] != 200:
                raise CliError(f"the {service} service at {url} does not answer /health")
        run = f"bench-{uuid.uuid4().hex[:8]}"
        ids = [f"{run}-{n:04d}" for n in range(1, accounts + 1)]
        gate = asyncio.Semaphore(concurrency)

        async def open_account(account: str) -> tuple[int, Any, str]:
            async with gate:
                body = {"account_id": account, "currency": CURRENCY}
                return await _post(session, f"{urls['transaction']}/accounts", body, account)

        opened = await asyncio.gather(*(open_account(account) for account in ids))
        for account, (status, _, label) in zip(ids, opened, strict=True):
            if status not in (200, 201):
                raise CliError(f"could not open {account} at {urls['transaction']}: {label}")
        load = Load(urls["transaction"], ids, run, limit, time.monotonic() + seconds)
        load.last_position = max(int(reply["position"]) for _, reply, _ in opened)
        started = time.perf_counter()
        await asyncio.gather(*(load.worker(session) for _ in range(concurrency)))
        ended = time.perf_counter()

        lag: float | None = None
        first = f"{urls['accounting']}/accounts/{segment(ids[0])}"
        while lag is None and time.perf_counter() < ended + CATCH_UP_SECONDS:
            if (await _get(session, first, load.last_position))[0] == 200:
                lag = time.perf_counter() - ended
            else:
                await asyncio.sleep(0.05)  # a 503 has waited already; a refused connect not

        async def balance(account: str) -> int | None:
            async with gate:
                url = f"{urls['accounting']}/accounts/{segment(account)}"
                status, body = await _get(session, url, load.last_position)
                return int(body["balance"]) if status == 200 else None

        actual = await asyncio.gather(*(balance(account) for account in ids))
    mismatches = [
        {"account_id": account, "expected": load.expected[account], "actual": found}
        for account, found in zip(ids, actual, strict=True)
        if found != load.expected[account]
    ]
    samples = [sample for kind in KINDS for sample in load.latencies[kind]]
    total = sum(load.outcomes.values(), Counter[str]())
    reasons = [
        (load.unknown, f"{load.unknown} command(s) got no answer, so the money is unknown"),
        (lag is None, f"the accounting service did not reach position {load.last_position}"),
        (mismatches, f"{len(mismatches)} balance(s) differ from what the run accepted"),
    ]
    problem = next((why for failed, why in reasons if failed), None)
    return {
        "run": run,
        "transaction_url": urls["transaction"],
        "accounting_url": urls["accounting"],
        "accounts": accounts,
        "concurrency": concurrency,
        "seconds": round(ended - started, 3),
        "commands_per_second": round(len(samples) / max(ended - started, 1e-9), 1),
        **_summary(samples, total),
        "other_outcomes": {k: v for k, v in total.items() if k not in ("201", REFUSED)},
        "kinds": {kind: _summary(load.latencies[kind], load.outcomes[kind]) for kind in KINDS},
        "last_position": load.last_position,
        "read_your_writes_lag_ms": None if lag is None else round(lag * 1000, 2),
        "mismatches": mismatches,
        "verified": problem is None,
        "problem": problem,
    }


def _print_report(report: dict[str, Any]) -> None:
    title = (
        f"bench {report['run']}: {report['accounts']} accounts, {report['concurrency']} worker(s)"
    )
    caption = f"latency in ms; 409: {REFUSED[4:]}; at {report['transaction_url']}"
    table = Table(title=title, caption=caption, title_style="bold", box=box.SIMPLE_HEAD)
    for name in ("command", "count", "201", "409", "other", "p50", "p90", "p99", "max"):
        table.add_column(name, justify="left" if name == "command" else "right")
    rows = [(kind, report["kinds"][kind]) for kind in KINDS]
    for name, row in [*rows, ("all", report)]:
        counts = [f"{n:,}" for n in (row["commands"], *row["outcomes"].values())]
        times = [f"{ms:,.1f}" for ms in row["latency_ms"].values()]
        table.add_row(name, *counts, *times, end_section=name == KINDS[-1])
    console.print(table)
    console.print(
        f"[bold]{report['commands_per_second']:,} commands/s[/] "
        f"({report['commands']:,} in {report['seconds']:.2f} s)"
    )
    if report["other_outcomes"]:
        other = ", ".join(f"{k} ×{v}" for k, v in sorted(report["other_outcomes"].items()))
        console.print(f"[yellow]other outcomes:[/] {other}")
    if (lag := report["read_your_writes_lag_ms"]) is not None:
        where = f"{report['accounting_url']} at position {report['last_position']}"
        console.print(f"read-your-writes lag: [bold]{lag:,} ms[/] ({where})")
    for item in report["mismatches"]:
        console.print(
            f"[bold red]MISMATCH[/] {item['account_id']}: the run accepted "
            f"{item['expected']}, the accounting service says {item['actual']}"
        )
    if report["verified"]:
        console.print(f"money: [bold green]OK[/], {report['accounts']} balances as accepted")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows: the standard loop
        return None
    return uvloop.new_event_loop


def bench(
    accounts: Annotated[
        int, typer.Option("--accounts", min=2, max=10_000, help="Fresh accounts to open")
    ] = 20,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=1024, help="Concurrent workers")
    ] = 16,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            parser=duration_seconds,
            metavar="DURATION",
            help="How long to send commands: 10s, 500ms, 2m (default 10s)",
        ),
    ] = None,
    commands: Annotated[
        int | None,
        typer.Option(
            "--commands", min=1, max=MAX_COMMANDS, help="Send N commands instead (at most 1 h)"
        ),
    ] = None,
    transaction_url: TransactionUrlOpt = None,
    accounting_url: AccountingUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
) -> None:
    """Benchmark a running system: load, latency, read-your-writes lag, money verified.

    Writes to the ledger (accounts bench-<run>-NNNN): run it against a system meant for it."""
    if duration is not None and commands is not None:
        raise UsageProblem("give --duration or --commands, not both")
    urls = service_urls(transaction_url=transaction_url, accounting_url=accounting_url)
    wanted = {name: urls.url(name) for name in ("transaction", "accounting")}
    limit = MAX_COMMANDS if commands is None else commands
    seconds = MAX_SECONDS if commands is not None else duration or DEFAULT_SECONDS
    if not as_json:
        what = f"{commands:,} commands" if commands is not None else f"{seconds:g} s"
        console.print(f"[dim]benchmarking {wanted['transaction']} for {what}…[/]")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        report = runner.run(_run(wanted, accounts, concurrency, limit, seconds))
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if report["problem"]:
        raise CliError(f"money not verified: {report['problem']}")
