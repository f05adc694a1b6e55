"""One rule at every door, over real processes: every kind of append to an account stream that
a read model would refuse is refused by the stream service with 422 and writes nothing, so
accounting and statistics stay healthy (no halt), and good commands still work."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import System, assert_problem, min_position, new_id

pytestmark = pytest.mark.slow

MAX_AMOUNT = 2**53 - 1


def money(type: str, account: str, amount: Any = 100, **extra: Any) -> dict[str, Any]:
    data = {
        "account_id": account,
        "transaction_id": str(uuid.uuid4()),
        "amount": amount,
        "reference": None,
    }
    return {"type": type, "data": {**data, **extra}}


def deposited(account: str, amount: Any = 100, **extra: Any) -> dict[str, Any]:
    return money("MoneyDeposited", account, amount, **extra)


def opened(account: str, currency: str = "EUR") -> dict[str, Any]:
    data = {"account_id": account, "currency": currency, "overdraft_limit": 0, "owner": None}
    return {"type": "AccountOpened", "schema_version": 2, "data": data}


def halves(
    source: str, target: str, amount: int = 10, **received: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    tx = str(uuid.uuid4())
    sent = money("TransferSent", source, amount, transaction_id=tx, to_account=target)
    into = money("TransferReceived", target, amount, transaction_id=tx, from_account=source)
    into["data"].update(received)
    return sent, into


async def version(client: httpx.AsyncClient, system: System, account: str) -> int:
    r = await client.get(f"{system.stream.url}/streams/account-{account}", params={"limit": 1})
    if r.status_code == 404:
        return 0
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


async def command(client: httpx.AsyncClient, system: System, path: str, body: Any) -> int:
    r = await client.post(f"{system.transaction.url}{path}", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["position"])


async def test_every_bad_account_append_is_refused_and_the_read_models_stay_healthy(
    store_system: System, client: httpx.AsyncClient
) -> None:
    system = store_system
    eur, other, usd, closed, fresh = (new_id("integrity") for _ in range(5))
    for account, currency in ((eur, "EUR"), (other, "EUR"), (usd, "USD"), (closed, "EUR")):
        await command(client, system, "/accounts", {"account_id": account, "currency": currency})
    await command(client, system, f"/accounts/{eur}/deposits", {"amount": 1000})
    await command(client, system, f"/accounts/{closed}/close", {})

    # Each: the appends of one request (account, events); one part is POST /streams/..., more
    # are POST /batches.
    sent, into = halves(eur, other)
    bad: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {
        "a deposit of 0": [(eur, [deposited(eur, 0)])],
        "a deposit above 2^53-1": [(eur, [deposited(eur, MAX_AMOUNT + 1)])],
        "an amount as text": [(eur, [deposited(eur, "10")])],
        "a second AccountOpened": [(eur, [opened(eur)])],
        "an event before AccountOpened": [(fresh, [deposited(fresh)])],
        "an event after AccountClosed": [(closed, [deposited(closed)])],
        "closing with money on the account": [
            (eur, [{"type": "AccountClosed", "data": {"account_id": eur}}])
        ],
        "a right-to-left override": [(eur, [deposited(eur, reference="gpj\u202eexe")])],
        "a zero-width space": [(eur, [deposited(eur, reference="a\u200bb")])],
        "a byte order mark": [(eur, [deposited(eur, reference="\ufeffrent")])],
        "a NUL": [(eur, [deposited(eur, reference="a\x00b")])],
        "a transaction id that is no UUID": [(eur, [deposited(eur, transaction_id="tx-1")])],
        "another account's event": [(eur, [deposited(other)])],
        "an unknown event type": [
            (eur, [{"type": "MoneyTeleported", "data": {"account_id": eur}}])
        ],
        "an old schema version": [(fresh, [opened(fresh) | {"schema_version": 1}])],
        "an unknown currency": [(fresh, [opened(fresh, currency="usd")])],
        "half a transfer": [(eur, [sent])],
        "the other half alone": [(other, [into])],
        "halves that disagree": [
            (eur, [halves(eur, other)[0]]),
            (other, [halves(eur, other, amount=11)[1]]),
        ],
        "a transfer across currencies": [
            (eur, [halves(eur, usd)[0]]),
            (usd, [halves(eur, usd)[1]]),
        ],
    }
    for why, parts in bad.items():
        before = system.head_position()
        appends = [
            {
                "stream": f"account-{account}",
                "expected_version": await version(client, system, account),
                "events": events,
            }
            for account, events in parts
        ]
        if len(appends) == 1:
            r = await client.post(
                f"{system.stream.url}/streams/{appends[0]['stream']}",
                json={"expected_version": appends[0]["expected_version"], "events": parts[0][1]},
            )
        else:
            r = await client.post(f"{system.stream.url}/batches", json={"appends": appends})
        body = assert_problem(r, 422)
        assert body["type"] == "invalid-account-event", (why, body)
        assert system.head_position() == before, why

    # An append to an account stream without a numeric expected version is refused too.
    before = system.head_position()
    r = await client.post(
        f"{system.stream.url}/streams/account-{eur}",
        json={"expected_version": "any", "events": [deposited(eur)]},
    )
    assert assert_problem(r, 422)["type"] == "expected-version-required"
    assert system.head_position() == before

    # A good command still works, and both read models apply it: neither halted.
    position = await command(client, system, f"/accounts/{eur}/deposits", {"amount": 5})
    r = await client.get(f"{system.accounting.url}/accounts/{eur}", headers=min_position(position))
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == 1005
    r = await client.get(f"{system.statistics.url}/stats", headers=min_position(position))
    assert r.status_code == 200, r.text
    for service in (system.accounting, system.statistics):
        health = (await client.get(f"{service.url}/health")).json()
        assert (health["status"], health.get("halted")) == ("ok", None), health
