"""Reversals on the read side, on SQLite and PostgreSQL: the accounting history links a
reversal and what it reversed both ways (`reverses`, `reversed_by`), on every account it
touched; the statistics count each reversal once per currency, with the amount moved back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.readside.db import SqliteReadModelDB, open_readmodel_db
from eventledger.services.statistics.app import create_app as create_statistics
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import (
    Ledger,
    OpenDB,
    StreamServer,
    caught_up,
    get,
    serving,
)

clock, stream, log = support.clock, support.stream, support.log


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[OpenDB, OpenDB]:
    """The two read models' databases, on one backend."""
    if request.param == "sqlite":
        return (
            lambda: SqliteReadModelDB(tmp_path / "accounting.db", namespace="accounting"),
            lambda: SqliteReadModelDB(tmp_path / "statistics.db", namespace="statistics"),
        )
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("pg_schema")
    return (
        lambda: open_readmodel_db(url, namespace=schema),
        lambda: open_readmodel_db(url, namespace=f"{schema}_s"),
    )


def apps(stream: StreamServer, dbs: tuple[OpenDB, OpenDB]) -> tuple[FastAPI, FastAPI]:
    options: dict[str, Any] = {"min_position_wait": 0.3, "head_poll_interval": 0.05}
    return (
        create_accounting(stream_url=stream.url, open_db=dbs[0], **options),
        create_statistics(stream_url=stream.url, open_db=dbs[1], **options),
    )


def money(account: str, tx: str, amount: int) -> dict[str, Any]:
    return {"account_id": account, "transaction_id": tx, "amount": amount, "reference": None}


async def reverse(log: Ledger, original: str, *changes: tuple[str, int]) -> tuple[str, int]:
    """What the command side appends: the marker and one TransactionReversed per account, in
    one batch. The reversal's id and its last position."""
    tx = str(uuid.uuid4())
    appends: list[dict[str, Any]] = [
        {
            "stream": f"reversal-{original}",
            "expected_version": "no_stream",
            "events": [{"type": "ReversalRecorded", "data": {"transaction_id": tx}}],
        }
    ]
    for account, amount in changes:
        data = {"account_id": account, "transaction_id": tx, "reverses": original}
        appends.append(
            {
                "stream": f"account-{account}",
                "expected_version": await log.version(f"account-{account}"),
                "events": [
                    {
                        "type": "TransactionReversed",
                        "data": {**data, "amount": amount, "reference": "mistake"},
                    }
                ],
            }
        )
    answer = await log.post("/batches", {"appends": appends})
    return tx, max(p for r in answer["results"] for p in r["positions"])


async def items(client: httpx.AsyncClient, account: str) -> list[dict[str, Any]]:
    page = await get(client, f"/accounts/{account}/transactions")
    return list(page["items"])


async def test_history_links_reversals_both_ways_and_statistics_count_each_once(
    stream: StreamServer, log: Ledger, open_db: tuple[OpenDB, OpenDB]
) -> None:
    accounting, statistics = apps(stream, open_db)
    await log.open("a")
    await log.open("b")
    deposit, transfer = str(uuid.uuid4()), str(uuid.uuid4())
    await log.append("account-a", ("MoneyDeposited", money("a", deposit, 1000)))
    sent = {**money("a", transfer, 300), "to_account": "b"}
    got = {**money("b", transfer, 300), "from_account": "a"}
    await log.post(
        "/batches",
        {
            "appends": [
                {"stream": "account-a", "expected_version": 2,
                 "events": [{"type": "TransferSent", "data": sent}]},
                {"stream": "account-b", "expected_version": 1,
                 "events": [{"type": "TransferReceived", "data": got}]},
            ]
        },
    )  # fmt: skip
    undo_transfer, _ = await reverse(log, transfer, ("a", 300), ("b", -300))
    undo_deposit, head = await reverse(log, deposit, ("a", -1000))
    async with serving(accounting) as reads, serving(statistics) as stats:
        await caught_up(accounting, head)
        await caught_up(statistics, head)
        a = await items(reads, "a")
        assert [(i["kind"], i["amount"], i["balance_after"]) for i in a] == [
            ("reversal", -1000, 0),
            ("reversal", 300, 1000),
            ("transfer_out", -300, 700),
            ("deposit", 1000, 1000),
        ]
        assert [(i["transaction_id"], i["reverses"], i["reversed_by"]) for i in a] == [
            (undo_deposit, deposit, None),
            (undo_transfer, transfer, None),
            (transfer, None, undo_transfer),
            (deposit, None, undo_deposit),
        ]
        assert a[0]["reference"] == "mistake"
        b = await items(reads, "b")
        assert [(i["kind"], i["amount"], i["reverses"], i["reversed_by"]) for i in b] == [
            ("reversal", -300, transfer, None),
            ("transfer_in", 300, None, undo_transfer),
        ]
        assert (await get(reads, "/accounts/b"))["balance"] == 0
        body = await get(stats, "/stats")
        eur = body["currencies"]["EUR"]
        assert eur["reversals"] == {"count": 2, "volume": 1300}
        assert eur["total_balance"] == 0
        assert eur["transfers"] == {"count": 1, "volume": 300}  # the original stays counted
