"""The load generator: closed-loop aiohttp clients, in a process of their own.

    python -m bench.load PHASE --commands-url U --reads-url U --state FILE [options]

It runs in its own process (on uvloop when installed) so that it never shares an event loop
or a GIL with what it measures; the bench starts one per phase and reads one JSON object
from its stdout. The same generator drives eventledger (commands to the transaction
service, reads from the accounting service) and the peer (both URLs the same).

Phases; the state file carries the run's accounts and what was accepted between them:

    open      open `--accounts` accounts `<prefix>-NNNN` (currency EUR)
    commands  `--clients` clients post deposits of 1..1000 to random accounts (latency each)
    reads     `--clients` clients `GET /accounts/{id}` on random accounts
    latency   each client: a deposit, then the read with `X-Min-Position` until it answers;
              the latency is from the deposit's answer to the read's 200
    verify    the correctness gates: every account's balance is the sum of its accepted
              deposits and its version counts them (every acknowledged command visible)
    bulk      `--clients` clients append `--batch` valid account events per request straight
              to the stream service (`--stream-url`), each to its own new `account-` streams
              (an AccountOpened, then deposits), `--events` in all; timed as a whole
    subscribers  open `--clients` idle SSE subscriptions at the head, print `ready` and hold
              them until stdin closes (the bench reads the stream's memory meanwhile)

Each timed phase runs `--warmup` seconds untimed first, then `--seconds` timed; `ops` counts
the timed section, `all_ops` everything (for CPU per command). A request that fails is an
error in the answer, not a crash: the bench reports it and the run fails its gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

CURRENCY = "EUR"
BULK_DEPOSIT = 100  # cents per bulk deposit: the catch-up gate knows every balance
REQUEST_SECONDS = 30.0
_NO_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_SECONDS)
_IDS = random.Random(os.urandom(32))  # bulk transaction ids: unique across runs and stores
VISIBLE_RETRY_SECONDS = 0.001  # a 503 on X-Min-Position (its wait ended) is asked again


@dataclass
class State:
    """The run's accounts and, per account, the sum and number of accepted deposits."""

    accounts: list[str] = field(default_factory=list)
    accepted: dict[str, list[int]] = field(default_factory=dict)  # id -> [sum, count]
    max_position: int = 0

    @classmethod
    def load(cls, path: Path) -> State:
        text = path.read_text() if path.is_file() else ""
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(raw["accounts"], raw["accepted"], raw["max_position"])

    def save(self, path: Path) -> None:
        raw = {
            "accounts": self.accounts,
            "accepted": self.accepted,
            "max_position": self.max_position,
        }
        path.write_text(json.dumps(raw))

    def record(self, account: str, amount: int, position: int) -> None:
        tally = self.accepted[account]
        tally[0] += amount
        tally[1] += 1
        self.max_position = max(self.max_position, position)


@dataclass
class Counter:
    ops: int = 0  # in the timed section
    all_ops: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, timed section only


class Load:
    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.session = session
        self.state = State.load(args.state)
        self.random = random.Random(args.seed)
        token = args.token_file.read_text().strip() if args.token_file else ""
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    # -- phases -----------------------------------------------------------------------------

    async def open(self) -> dict[str, Any]:
        accounts = [f"{self.args.prefix}-{n:04d}" for n in range(self.args.accounts)]
        errors: list[str] = []
        queue = list(accounts)

        async def opener() -> None:
            while queue:
                account = queue.pop()
                body = {"account_id": account, "currency": CURRENCY}
                async with self.session.post(
                    f"{self.args.commands_url}/accounts", json=body, headers=self.headers
                ) as response:
                    answer = await response.read()
                    if response.status != 201:
                        errors.append(f"open {account}: {response.status} {answer[:200]!r}")
                        continue
                    position = int(json.loads(answer)["position"])
                self.state.accepted[account] = [0, 0]
                self.state.max_position = max(self.state.max_position, position)

        start = time.perf_counter()
        await asyncio.gather(*(opener() for _ in range(min(self.args.clients, 16))))
        seconds = time.perf_counter() - start
        self.state.accounts = [a for a in accounts if a in self.state.accepted]
        return {"ops": len(self.state.accounts), "seconds": seconds, "errors": errors}

    async def commands(self) -> dict[str, Any]:
        async def one(counter: Counter, rng: random.Random) -> tuple[float, ...]:
            start = time.perf_counter()
            deposited = await self._deposit(counter, rng)
            return (time.perf_counter() - start,) if deposited else ()

        return await self._closed_loop(one)

    async def reads(self) -> dict[str, Any]:
        async def one(counter: Counter, rng: random.Random) -> None:
            account = rng.choice(self.state.accounts)
            async with self.session.get(
                f"{self.args.reads_url}/accounts/{account}", headers=self.headers
            ) as response:
                answer = await response.read()
                if response.status != 200:
                    counter.errors.append(f"read {account}: {response.status} {answer[:200]!r}")

        return await self._closed_loop(one)

    async def latency(self) -> dict[str, Any]:
        async def one(counter: Counter, rng: random.Random) -> tuple[float, ...]:
            deposited = await self._deposit(counter, rng)
            if deposited is None:
                return ()
            account, position = deposited
            acknowledged = time.perf_counter()
            await self._read_at(account, position, counter)
            return (time.perf_counter() - acknowledged,)

        return await self._closed_loop(one)

    async def verify(self) -> dict[str, Any]:
        """Money conserved and every acknowledged command visible, read at the run's head."""
        wrong: list[str] = []
        total_expected = total_seen = 0
        queue = list(self.state.accounts)
        counter = Counter()

        async def checker() -> None:
            nonlocal total_expected, total_seen
            while queue:
                account = queue.pop()
                body = await self._read_at(account, self.state.max_position, counter)
                if body is None:
                    continue
                amount, count = self.state.accepted[account]
                total_expected += amount
                total_seen += int(body["balance"])
                if body["balance"] != amount or body["version"] != count + 1:
                    wrong.append(
                        f"{account}: balance {body['balance']} version {body['version']}, "
                        f"accepted {amount} in {count} deposits"
                    )

        await asyncio.gather(*(checker() for _ in range(8)))
        return {
            "ops": len(self.state.accounts),
            "accepted_total": total_expected,
            "balances_total": total_seen,
            "wrong": wrong[:20],
            "wrong_count": len(wrong),
            "errors": counter.errors[:20],
            "passed": not wrong and not counter.errors and total_expected == total_seen,
        }

    async def bulk(self) -> dict[str, Any]:
        """`events` valid account events in requests of `batch`, by `clients` writers.

        Each request fills one new account stream: AccountOpened then deposits of
        BULK_DEPOSIT, so every stream holds `batch` events and its balance is known. The
        bodies are built cheaply (orjson; transaction ids from a generator seeded once, not
        uuid4's system call per id): the generator shares the machine with what it measures."""
        batch, clients = self.args.batch, self.args.clients
        requests = self.args.events // batch
        queue = list(range(requests))
        errors: list[str] = []
        positions = 0
        headers = {**self.headers, "Content-Type": "application/json"}

        async def writer() -> None:
            nonlocal positions
            while queue and not errors:
                account = f"{self.args.prefix}-{queue.pop():06d}"
                body = orjson.dumps(
                    {"expected_version": "no_stream", "events": self._bulk_events(account, batch)}
                )
                async with self.session.post(
                    f"{self.args.stream_url}/streams/account-{account}",
                    data=body,
                    headers=headers,
                ) as response:
                    answer = await response.read()
                    if response.status != 201:
                        errors.append(f"bulk {account}: {response.status} {answer[:300]!r}")
                        return
                    positions += len(json.loads(answer)["positions"])
                self.state.accounts.append(account)
                self.state.accepted[account] = [BULK_DEPOSIT * (batch - 1), batch - 1]

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(clients)))
        seconds = time.perf_counter() - start
        return {"ops": positions, "all_ops": positions, "seconds": seconds, "errors": errors}

    def _bulk_events(self, account: str, batch: int) -> list[dict[str, Any]]:
        """An AccountOpened, then `batch - 1` deposits of BULK_DEPOSIT, each with its own
        transaction id (a canonical version-4 UUID)."""
        opened = {
            "type": "AccountOpened",
            "schema_version": 2,
            "data": {
                "account_id": account,
                "currency": CURRENCY,
                "overdraft_limit": 0,
                "owner": None,
            },
        }
        bits = _IDS.getrandbits
        deposits: list[dict[str, Any]] = []
        for _ in range(batch - 1):
            h = f"{bits(128):032x}"
            transaction_id = (
                f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
            )
            deposits.append(
                {
                    "type": "MoneyDeposited",
                    "data": {
                        "account_id": account,
                        "transaction_id": transaction_id,
                        "amount": BULK_DEPOSIT,
                        "reference": None,
                    },
                }
            )
        return [opened, *deposits]

    async def subscribers(self) -> dict[str, Any]:
        """Idle SSE subscriptions at the head, held until stdin closes."""
        responses: list[aiohttp.ClientResponse] = []
        errors: list[str] = []
        url = f"{self.args.stream_url}/events/subscribe"
        headers = {**self.headers, "Accept": "text/event-stream"}
        after = str(self.args.after)

        async def subscribe() -> None:
            try:
                response = await self.session.get(
                    url, params={"after": after}, headers=headers, timeout=_NO_READ_TIMEOUT
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            if response.status != 200:
                errors.append(f"subscribe: {response.status} {(await response.read())[:200]!r}")
                response.release()
                return
            responses.append(response)

        start = time.perf_counter()
        pending = list(range(self.args.clients))
        while pending:  # in waves: a burst of 1,000 connects is not what is measured
            wave, pending = pending[:100], pending[100:]
            await asyncio.gather(*(subscribe() for _ in wave))
        seconds = time.perf_counter() - start
        print(json.dumps({"ready": len(responses), "errors": errors[:5]}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for response in responses:
            response.close()
        return {"ops": len(responses), "seconds": seconds, "errors": errors[:20]}

    # -- pieces ------------------------------------------------------------------------------

    async def _deposit(self, counter: Counter, rng: random.Random) -> tuple[str, int] | None:
        account = rng.choice(self.state.accounts)
        amount = rng.randint(1, 1000)
        async with self.session.post(
            f"{self.args.commands_url}/accounts/{account}/deposits",
            json={"amount": amount},
            headers=self.headers,
        ) as response:
            answer = await response.read()
            if response.status != 201:
                counter.errors.append(f"deposit {account}: {response.status} {answer[:200]!r}")
                return None
        position = int(json.loads(answer)["position"])
        self.state.record(account, amount, position)
        return account, position

    async def _read_at(self, account: str, position: int, counter: Counter) -> Any:
        headers = {**self.headers, "X-Min-Position": str(position)}
        deadline = time.monotonic() + REQUEST_SECONDS
        while True:
            async with self.session.get(
                f"{self.args.reads_url}/accounts/{account}", headers=headers
            ) as response:
                answer = await response.read()
                if response.status == 200:
                    return json.loads(answer)
                if response.status != 503 or time.monotonic() > deadline:
                    counter.errors.append(f"read {account}: {response.status} {answer[:200]!r}")
                    return None
            await asyncio.sleep(VISIBLE_RETRY_SECONDS)

    async def _closed_loop(self, one: Any) -> dict[str, Any]:
        """`clients` loops of `one` for warmup + seconds; counts the timed section."""
        counter = Counter()
        start = time.perf_counter()
        timed_from = start + self.args.warmup
        end = timed_from + self.args.seconds

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while (now := time.perf_counter()) < end:
                try:
                    extra = await one(counter, rng)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    counter.errors.append(f"{type(exc).__name__}: {exc}")
                    extra = ()
                counter.all_ops += 1
                if now >= timed_from and time.perf_counter() <= end:
                    counter.ops += 1
                    if extra:
                        counter.latencies.extend(extra)
                if len(counter.errors) > 100:
                    return

        await asyncio.gather(
            *(client(self.random.getrandbits(64)) for _ in range(self.args.clients))
        )
        return {
            "ops": counter.ops,
            "all_ops": counter.all_ops,
            "seconds": self.args.seconds,
            "errors": counter.errors[:20],
            "error_count": len(counter.errors),
            "latencies": counter.latencies,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)  # keep-alive per client
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(args, session)
        result: dict[str, Any] = await getattr(load, args.phase)()
        load.state.save(args.state)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load")
    phases = ("open", "commands", "reads", "latency", "verify", "bulk", "subscribers")
    p.add_argument("phase", choices=phases)
    p.add_argument("--commands-url", default="")
    p.add_argument("--reads-url", default="")
    p.add_argument("--stream-url", default="")
    p.add_argument("--events", type=int, default=0, help="bulk: events in all")
    p.add_argument("--batch", type=int, default=1000, help="bulk: events per request")
    p.add_argument("--after", type=int, default=0, help="subscribers: position to follow from")
    p.add_argument("--state", type=Path, required=True, help="the run's JSON state file")
    p.add_argument("--token-file", type=Path, help="the bench user's bearer token")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
