"""Concurrent commands share requests to the stream service (real processes): each answers
alone, with its own balance or refusal, while the transaction service sent their appends in
fewer `POST /appends` requests than there were commands."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.e2e.harness import HTTP, System, new_id

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def stream_counter(system: System, name: str, labels: dict[str, str]) -> float:
    """A counter of the stream service's /metrics (0 when it has no sample yet)."""
    text = HTTP.get(f"{system.stream.url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def appends_requests(system: System) -> float:
    labels = {"method": "POST", "route": "/appends", "service": "stream", "status": "200"}
    return stream_counter(system, "eventledger_http_requests_total", labels)


def items_created(system: System) -> float:
    labels = {"endpoint": "appends", "outcome": "created"}
    return stream_counter(system, "eventledger_stream_appends_total", labels)


async def test_concurrent_commands_each_get_their_own_answer_through_post_appends(
    system: System, client: httpx.AsyncClient
) -> None:
    tx = system.transaction.url
    accounts = [new_id("coal") for _ in range(40)]
    opened = await asyncio.gather(
        *(
            client.post(f"{tx}/accounts", json={"account_id": a, "currency": "EUR"})
            for a in accounts
        )
    )
    assert [r.status_code for r in opened] == [201] * 40
    requests_before, items_before = appends_requests(system), items_created(system)

    amounts = [100 + i for i in range(40)]
    deposits = [
        client.post(f"{tx}/accounts/{a}/deposits", json={"amount": amount})
        for a, amount in zip(accounts, amounts, strict=True)
    ]
    # Two withdrawals that the rules refuse, among them: they fail alone.
    refused = [
        client.post(f"{tx}/accounts/{accounts[0]}/withdrawals", json={"amount": 10**9}),
        client.post(f"{tx}/accounts/{accounts[1]}/withdrawals", json={"amount": 10**9}),
    ]
    answers = await asyncio.gather(*deposits, *refused)
    for account, amount, answer in zip(accounts, amounts, answers, strict=False):
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert (body["account_id"], body["amount"], body["balance"]) == (account, amount, amount)
    assert [a.status_code for a in answers[40:]] == [409, 409]
    assert {a.json()["type"] for a in answers[40:]} == {"insufficient-funds"}

    assert items_created(system) - items_before == 40  # every deposit went through /appends
    # How many requests they shared depends on timing (a call goes alone when nothing is in
    # flight); that they share one when they meet is shown in tests/integration/test_coalescing.py.
    assert appends_requests(system) - requests_before <= 40
