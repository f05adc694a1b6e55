"""A halt has a way out: an operator skips or parks the event a read model halted on, the
decision is audited, shown in /health and the metrics, and honoured by a rebuild; an error the
database will repeat halts with its reason instead of retrying for ever. Both read-model
services, on SQLite and on PostgreSQL, against the real stream service."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from fastapi import FastAPI

from eventledger.eventstore.records import NewEvent, StreamState
from eventledger.services.accounting.app import create_app as create_accounting
from eventledger.services.statistics.app import create_app as create_statistics
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import (
    Ledger,
    OpenDB,
    StreamServer,
    caught_up,
    get,
    runner_of,
    serving,
)
from tests.integration.stream_support import until

clock, stream, log = support.clock, support.stream, support.log
open_db = support.open_db_fixture("readmodel")


def app_of(service: str, stream: StreamServer, open_db: OpenDB) -> FastAPI:
    create = create_accounting if service == "accounting" else create_statistics
    return create(
        stream_url=stream.url, open_db=open_db, min_position_wait=0.3, head_poll_interval=0.05
    )


async def inject_deposit_to_a_ghost(stream: StreamServer) -> int:
    """A deposit to an account never opened, written to the store itself (the stream service
    refuses it at the door): what an older version or a bug could have left in the log."""
    event = NewEvent(
        uuid4(),
        "MoneyDeposited",
        {"account_id": "ghost", "transaction_id": str(uuid4()), "amount": 5, "reference": None},
    )
    appended = await stream.store.append(
        "account-ghost", expected_version=StreamState.ANY, events=[event]
    )
    return appended.positions[-1]


async def halted_at(app: FastAPI, position: int) -> None:
    runner = runner_of(app)
    await until(lambda: runner.halted is not None and runner.halted.position == position)


def balance_query(service: str) -> tuple[str, Any]:
    if service == "accounting":
        return "/accounts/a", lambda body: body["balance"]
    return "/stats", lambda body: body["currencies"]["EUR"]["total_balance"]


@pytest.mark.parametrize("service", ["accounting", "statistics"])
async def test_a_skipped_event_is_passed_audited_shown_and_honoured_by_a_rebuild(
    stream: StreamServer, open_db: OpenDB, log: Ledger, service: str
) -> None:
    app = app_of(service, stream, open_db)
    path, balance = balance_query(service)
    async with serving(app) as client:
        await log.open("a")
        await log.deposit("a", 10)
        bad = await inject_deposit_to_a_ghost(stream)
        head = await log.deposit("a", 20)
        await halted_at(app, bad)
        health = await get(client, "/health")
        assert (health["status"], health["halted"]["position"]) == ("halted", bad)
        assert balance(await get(client, path)) == 10  # reads go on, as of before the halt

        wrong = await client.post("/admin/skip", json={"position": bad + 1})
        assert wrong.status_code == 409
        assert wrong.json()["type"] == "not-halted-here"
        assert wrong.json()["halted"]["position"] == bad
        for body in ({"position": str(bad)}, {"position": bad, "who": "x"}, [bad]):
            refused = await client.post("/admin/skip", json=body)
            assert refused.status_code == 422, body
            assert refused.headers["content-type"] == "application/problem+json"
        assert runner_of(app).halted is not None  # a refused request changed nothing

        skipped = await client.post(
            "/admin/skip", json={"position": bad, "reason": "deposit to no account", "by": "ann"}
        )
        assert skipped.status_code == 200, skipped.text
        decision = skipped.json()["decision"]
        assert (decision["action"], decision["position"], decision["type"]) == (
            "skip",
            bad,
            "MoneyDeposited",
        )
        assert (decision["by"], decision["reason"]) == ("ann", "deposit to no account")
        await caught_up(app, head)
        assert balance(await get(client, path)) == 30
        health = await get(client, "/health")
        assert (health["status"], health["halted"]) == ("ok", None)
        assert health["decisions"]["skipped"] == 1
        assert health["decisions"]["last"]["position"] == bad
        metrics = (await client.get("/metrics")).text
        assert f'eventledger_projection_skipped_events{{projection="{service}"}} 1.0' in metrics
        audit = (await get(client, "/admin/decisions"))["items"]
        assert [(d["position"], d["action"], d["by"], d["envelope"]) for d in audit] == [
            (bad, "skip", "ann", None)
        ]
        again = await client.post("/admin/skip", json={"position": bad})
        assert again.status_code == 409  # decided once, not twice

        assert (await client.post("/admin/rebuild", json={})).status_code == 202
        await caught_up(app, head)
        await until(lambda: not runner_of(app).rebuilding)
        assert runner_of(app).halted is None  # the rebuild passed the skipped event again
        assert balance(await get(client, path)) == 30
        assert len((await get(client, "/admin/decisions"))["items"]) == 1


async def test_a_parked_event_is_kept_with_its_envelope_for_inspection(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    app = app_of("accounting", stream, open_db)
    async with serving(app) as client:
        await log.open("a")
        bad = await inject_deposit_to_a_ghost(stream)
        head = await log.deposit("a", 7)
        await halted_at(app, bad)
        parked = await client.post("/admin/park", json={"position": bad, "reason": "later"})
        assert parked.status_code == 200, parked.text
        await caught_up(app, head)
        assert (await get(client, "/accounts/a"))["balance"] == 7
        health = await get(client, "/health")
        assert (health["decisions"]["parked"], health["decisions"]["skipped"]) == (1, 0)
        [kept] = (await get(client, "/admin/decisions"))["items"]
        assert (kept["action"], kept["stream"], kept["by"]) == (
            "park",
            "account-ghost",
            "anonymous",
        )
        envelope = kept["envelope"]
        assert (envelope["position"], envelope["type"], envelope["stream"]) == (
            bad,
            "MoneyDeposited",
            "account-ghost",
        )
        assert envelope["id"] == kept["event_id"]
        assert envelope["data"]["amount"] == 5


async def test_an_error_the_database_will_repeat_halts_with_its_reason_then_can_be_skipped(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    app = app_of("accounting", stream, open_db)
    async with serving(app) as client:
        await log.open("a")
        opened = await log.open("b")
        await caught_up(app, opened)
        # A row someone left in the read model where b's deposit's row goes: inserting it
        # breaks the primary key every time, so retrying can never succeed.
        with runner_of(app).db.transaction() as tx:
            tx.execute(
                "INSERT INTO transactions (account_id, position, transaction_id, kind, amount, "
                "balance_after, counterparty, reference, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("b", opened + 1, "x", "deposit", 1, 1, None, None, "2026-01-01T00:00:00Z"),
            )
        bad = await log.deposit("b", 3)
        head = await log.deposit("a", 4)
        await halted_at(app, bad)
        health = await get(client, "/health")
        assert "refused" in health["halted"]["reason"]
        assert "UNIQUE" in health["halted"]["reason"] or "unique" in health["halted"]["reason"]
        assert (health["position"], health["error"]) == (opened, None)  # halted, not retrying
        skipped = await client.post("/admin/skip", json={"position": bad, "reason": "bad row"})
        assert skipped.status_code == 200, skipped.text
        await caught_up(app, head)
        assert (await get(client, "/accounts/a"))["balance"] == 4


async def test_an_instance_sharing_the_read_model_goes_on_once_another_skipped_the_event(
    stream: StreamServer, open_db: OpenDB, log: Ledger
) -> None:
    first, second = (app_of("accounting", stream, open_db) for _ in range(2))
    async with serving(first) as one, serving(second) as two:
        await log.open("a")
        bad = await inject_deposit_to_a_ghost(stream)
        head = await log.deposit("a", 6)
        await halted_at(first, bad)
        await halted_at(second, bad)
        assert (await one.post("/admin/skip", json={"position": bad})).status_code == 200
        await caught_up(first, head)
        # The other one sees the stored checkpoint past its halt and follows again.
        await until(lambda: runner_of(second).halted is None)
        await caught_up(second, head)
        health = await get(two, "/health")
        assert (health["halted"], health["decisions"]["skipped"]) == (None, 1)
        assert (await get(two, "/accounts/a"))["balance"] == 6
