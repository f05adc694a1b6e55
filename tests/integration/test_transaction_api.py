"""The transaction service against a real stream service (uvicorn, in-process, memory store).

The stream service listens on a free local port; the transaction service is driven in-process
through `httpx.ASGITransport`, its lifespan entered by hand so its aiohttp session is opened
and closed as in production. The other `test_transaction_*` modules import the harness.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from eventledger.bootstrap import build_upcasters
from eventledger.domain.events import stream_name
from eventledger.eventstore.errors import StoreUnavailable
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import AppendResult, RecordedEvent, StreamAppend
from eventledger.eventstore.store import EventStore
from eventledger.services.stream.app import create_app as create_stream_app
from eventledger.services.transaction.app import create_app as create_transaction_app

# -- the harness ------------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], what: str, *, seconds: float = 5.0) -> None:
    """Await a condition that another task makes true (uvicorn offers a flag, no event)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - `Server.started` is a plain attribute
            await asyncio.sleep(0.005)
    assert condition(), what


@dataclass
class StreamServer:
    """A stream service on a free port, served by uvicorn in this event loop."""

    store: MemoryEventStore
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        (sock,) = self.server.servers[0].sockets
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


@asynccontextmanager
async def running_stream(store: MemoryEventStore | None = None) -> AsyncIterator[StreamServer]:
    store = store or MemoryEventStore(upcasters=build_upcasters())

    async def open_store() -> EventStore:
        return store

    app = create_stream_app(open_store=open_store)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    running = StreamServer(store, server, task)
    try:
        await _until(lambda: server.started or task.done(), "the stream service started")
        if task.done():
            task.result()
        yield running
    finally:
        if not task.done():
            await running.stop()


@asynccontextmanager
async def transaction_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the transaction app, in-process, with the app's lifespan running."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://transaction"
        ) as client,
    ):
        yield client


@dataclass
class Ledger:
    """A running stream service and one (or more) transaction services in front of it."""

    stream: StreamServer
    http: httpx.AsyncClient
    app: FastAPI
    _stack: AsyncExitStack = field(repr=False)

    @property
    def store(self) -> MemoryEventStore:
        return self.stream.store

    async def another_instance(self, **options: Any) -> httpx.AsyncClient:
        """A second transaction service on the same stream service."""
        app = create_transaction_app(stream_url=self.stream.url, **with_secret(options))
        return await self._stack.enter_async_context(transaction_client(app))

    async def head(self) -> int:
        return await self.store.head_position()

    async def events(self, account_id: str) -> list[RecordedEvent]:
        if await self.store.stream_version(stream_name(account_id)) == 0:
            return []
        return await self.store.read_stream(stream_name(account_id))

    # -- commands, asserting success ------------------------------------------------------

    async def open(self, currency: str = "EUR", **body: Any) -> str:
        body.setdefault("account_id", f"acc-{uuid4().hex[:12]}")
        response = await self.http.post("/accounts", json={"currency": currency, **body})
        assert response.status_code == 201, response.text
        return str(response.json()["account_id"])

    async def deposit(self, account_id: str, amount: int) -> dict[str, Any]:
        response = await self.http.post(f"/accounts/{account_id}/deposits", json={"amount": amount})
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def funded(self, amount: int, currency: str = "EUR", **body: Any) -> str:
        account_id = await self.open(currency, **body)
        await self.deposit(account_id, amount)
        return account_id

    async def balance(self, account_id: str) -> int:
        """The balance as the log says (not as any service says)."""
        total = 0
        for event in await self.events(account_id):
            if event.type in ("MoneyDeposited", "TransferReceived"):
                total += event.data["amount"]
            elif event.type in ("MoneyWithdrawn", "TransferSent"):
                total -= event.data["amount"]
        return total


# The idempotency secret every transaction instance of a test ledger shares, as the instances
# of one installation do.
IDEMPOTENCY_SECRET = b"the-test-ledger-idempotency-secret"


def with_secret(options: dict[str, Any]) -> dict[str, Any]:
    return {"idempotency_secret": IDEMPOTENCY_SECRET, **options}


@asynccontextmanager
async def running_ledger(
    store: MemoryEventStore | None = None, **options: Any
) -> AsyncIterator[Ledger]:
    async with AsyncExitStack() as stack:
        stream = await stack.enter_async_context(running_stream(store))
        app = create_transaction_app(stream_url=stream.url, **with_secret(options))
        http = await stack.enter_async_context(transaction_client(app))
        yield Ledger(stream, http, app, stack)


def free_port() -> int:
    """A local port that nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = dict(response.json())
    assert problem["type"] == type_, problem
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem


# One stream service and one transaction service for the whole module: starting and stopping
# uvicorn costs ~0.2 s. Tests use accounts of their own, so they do not see each other; a test
# that needs its own services (an outage, other options) starts them with `running_ledger`.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


# -- opening accounts -----------------------------------------------------------------------


async def test_opening_an_account_answers_its_id_currency_and_position(ledger: Ledger) -> None:
    account_id = f"acc-{uuid4().hex[:12]}"
    response = await ledger.http.post(
        "/accounts",
        json={
            "account_id": account_id,
            "currency": "EUR",
            "overdraft_limit": 500,
            "owner": "Ada",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "account_id": account_id,
        "currency": "EUR",
        "overdraft_limit": 500,
        "owner": "Ada",
        "position": await ledger.head(),
    }
    (event,) = await ledger.events(account_id)
    assert event.type == "AccountOpened"
    assert event.data == {
        "account_id": account_id,
        "currency": "EUR",
        "overdraft_limit": 500,
        "owner": "Ada",
    }
    assert {"correlation_id", "causation_id"} <= set(event.metadata)


async def test_an_account_opened_without_an_id_gets_one(ledger: Ledger) -> None:
    first = await ledger.http.post("/accounts", json={"currency": "USD"})
    second = await ledger.http.post("/accounts", json={"currency": "USD"})
    assert first.status_code == second.status_code == 201
    ids = {first.json()["account_id"], second.json()["account_id"]}
    assert len(ids) == 2
    for account_id in ids:
        assert account_id.startswith("acc-") and len(account_id) == 24
        assert len(await ledger.events(account_id)) == 1


async def test_opening_an_existing_account_is_refused(ledger: Ledger) -> None:
    account_id = await ledger.open()
    head = await ledger.head()
    response = await ledger.http.post(
        "/accounts", json={"account_id": account_id, "currency": "EUR"}
    )
    problem = assert_problem(response, 409, "account-exists")
    assert problem["account_id"] == account_id
    assert await ledger.head() == head


# -- deposits and withdrawals ---------------------------------------------------------------


async def test_a_deposit_answers_the_new_balance_and_its_position(ledger: Ledger) -> None:
    account_id = await ledger.open()
    response = await ledger.http.post(
        f"/accounts/{account_id}/deposits", json={"amount": 2500, "reference": "salary"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "transaction_id": body["transaction_id"],
        "account_id": account_id,
        "amount": 2500,
        "balance": 2500,
        "available": 2500,
        "position": await ledger.head(),
    }
    event = (await ledger.events(account_id))[-1]
    assert event.type == "MoneyDeposited"
    assert event.data["transaction_id"] == body["transaction_id"]
    assert event.data["reference"] == "salary"


async def test_a_withdrawal_takes_money_out(ledger: Ledger) -> None:
    account_id = await ledger.funded(1000)
    response = await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 300})
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == 700
    assert response.json()["amount"] == 300
    assert await ledger.balance(account_id) == 700


async def test_a_withdrawal_beyond_the_balance_is_refused(ledger: Ledger) -> None:
    account_id = await ledger.funded(100)
    head = await ledger.head()
    response = await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 101})
    problem = assert_problem(response, 409, "insufficient-funds")
    assert problem["balance"] == 100 and problem["amount"] == 101
    assert await ledger.head() == head


async def test_a_withdrawal_may_use_the_overdraft_but_not_more(ledger: Ledger) -> None:
    account_id = await ledger.funded(100, overdraft_limit=500)
    ok = await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 600})
    assert ok.status_code == 201 and ok.json()["balance"] == -500
    refused = await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 1})
    assert_problem(refused, 409, "insufficient-funds")


async def test_money_commands_on_an_unknown_account_answer_404(ledger: Ledger) -> None:
    known = await ledger.funded(100)
    for path, body in [
        ("/accounts/nobody/deposits", {"amount": 1}),
        ("/accounts/nobody/withdrawals", {"amount": 1}),
        ("/accounts/nobody/close", {}),
        ("/transfers", {"from_account": "nobody", "to_account": known, "amount": 1}),
        ("/transfers", {"from_account": known, "to_account": "nobody", "amount": 1}),
    ]:
        response = await ledger.http.post(path, json=body)
        assert assert_problem(response, 404, "account-not-found")["account_id"] == "nobody"
    assert await ledger.events("nobody") == []


async def test_a_balance_never_leaves_the_signed_64_bit_range(ledger: Ledger) -> None:
    from eventledger.domain.events import MoneyDeposited
    from eventledger.eventstore.records import NewEvent

    max_amount = 2**53 - 1
    account_id = await ledger.open()
    # 1024 deposits of 2^53-1 written straight to the store (through HTTP they would take
    # a while): the balance is then 2^63-1024, and the transaction service's cache is stale.
    seeded = [
        NewEvent(
            id=uuid4(),
            type="MoneyDeposited",
            data=MoneyDeposited(account_id, str(uuid4()), max_amount, None).to_data(),
        )
        for _ in range(1024)
    ]
    await ledger.store.append(stream_name(account_id), expected_version=1, events=seeded)
    head = await ledger.head()
    too_much = await ledger.http.post(
        f"/accounts/{account_id}/deposits", json={"amount": max_amount}
    )
    assert_problem(too_much, 409, "balance-out-of-range")
    assert await ledger.head() == head
    to_the_top = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1023})
    assert to_the_top.status_code == 201, to_the_top.text
    assert to_the_top.json()["balance"] == 2**63 - 1
    one_more = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1})
    assert_problem(one_more, 409, "balance-out-of-range")
    assert await ledger.balance(account_id) == 2**63 - 1


# -- transfers --------------------------------------------------------------------------------


async def test_a_transfer_moves_money_atomically_between_two_accounts(ledger: Ledger) -> None:
    source = await ledger.funded(1000)
    target = await ledger.funded(50)
    response = await ledger.http.post(
        "/transfers",
        json={"from_account": source, "to_account": target, "amount": 400, "reference": "rent"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "transaction_id": body["transaction_id"],
        "from_account": source,
        "to_account": target,
        "amount": 400,
        "from_balance": 600,
        "from_available": 600,
        "to_balance": 450,
        "position": await ledger.head(),
    }
    sent = (await ledger.events(source))[-1]
    received = (await ledger.events(target))[-1]
    assert (sent.type, received.type) == ("TransferSent", "TransferReceived")
    assert sent.data["transaction_id"] == received.data["transaction_id"] == body["transaction_id"]
    assert {sent.position, received.position} == {body["position"] - 1, body["position"]}
    assert await ledger.balance(source) == 600
    assert await ledger.balance(target) == 450


async def test_a_refused_transfer_changes_neither_account(ledger: Ledger) -> None:
    source = await ledger.funded(100)
    target = await ledger.funded(100)
    dollars = await ledger.funded(100, currency="USD")
    head = await ledger.head()
    cases = [
        ({"to_account": target, "amount": 101}, 409, "insufficient-funds"),
        ({"to_account": dollars, "amount": 1}, 409, "currency-mismatch"),
        ({"to_account": source, "amount": 1}, 422, "same-account-transfer"),
    ]
    for body, status, type_ in cases:
        response = await ledger.http.post("/transfers", json={"from_account": source, **body})
        assert_problem(response, status, type_)
    assert await ledger.head() == head
    assert [await ledger.balance(a) for a in (source, target, dollars)] == [100, 100, 100]


async def test_transfers_in_opposite_directions_at_once_do_not_deadlock(ledger: Ledger) -> None:
    a = await ledger.funded(1000)
    b = await ledger.funded(1000)
    responses = await asyncio.gather(
        *(
            ledger.http.post(
                "/transfers",
                json={"from_account": x, "to_account": y, "amount": 10},
            )
            for _ in range(20)
            for x, y in ((a, b), (b, a))
        )
    )
    assert [r.status_code for r in responses] == [201] * 40
    assert await ledger.balance(a) == await ledger.balance(b) == 1000


# -- closing ----------------------------------------------------------------------------------


async def test_an_account_at_zero_closes_and_then_takes_no_more_money(ledger: Ledger) -> None:
    account_id = await ledger.open()
    other = await ledger.funded(100)
    response = await ledger.http.post(f"/accounts/{account_id}/close", json={})
    assert response.status_code == 201, response.text
    assert response.json() == {
        "account_id": account_id,
        "status": "closed",
        "position": await ledger.head(),
    }
    head = await ledger.head()
    refused = [
        await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1}),
        await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 1}),
        await ledger.http.post(f"/accounts/{account_id}/close", json={}),
        await ledger.http.post(
            "/transfers", json={"from_account": other, "to_account": account_id, "amount": 1}
        ),
        await ledger.http.post(
            "/transfers", json={"from_account": account_id, "to_account": other, "amount": 1}
        ),
    ]
    for response in refused:
        assert_problem(response, 409, "account-closed")
    assert await ledger.head() == head


async def test_closing_takes_an_empty_object_as_body(ledger: Ledger) -> None:
    account_id = await ledger.open()
    response = await ledger.http.post(f"/accounts/{account_id}/close", json={})
    assert response.status_code == 201, response.text


async def test_an_account_with_money_does_not_close(ledger: Ledger) -> None:
    account_id = await ledger.funded(1)
    response = await ledger.http.post(f"/accounts/{account_id}/close", json={})
    assert assert_problem(response, 409, "balance-not-zero")["balance"] == 1
    overdrawn = await ledger.open(overdraft_limit=10)
    await ledger.http.post(f"/accounts/{overdrawn}/withdrawals", json={"amount": 5})
    response = await ledger.http.post(f"/accounts/{overdrawn}/close", json={})
    assert_problem(response, 409, "balance-not-zero")


# -- outages, health, metrics, docs -------------------------------------------------------------


async def test_health_reports_the_stream_service_up(ledger: Ledger) -> None:
    response = await ledger.http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "transaction", "stream": "up"}


async def test_without_a_stream_service_commands_and_health_answer_503() -> None:
    app = create_transaction_app(stream_url=f"http://127.0.0.1:{free_port()}")
    async with transaction_client(app) as http:
        health = await http.get("/health")
        assert_problem(health, 503, "stream-unavailable")
        assert health.headers["retry-after"]
        for path, body in [
            ("/accounts", {"currency": "EUR"}),
            ("/accounts/acc-1/deposits", {"amount": 1}),
            ("/transfers", {"from_account": "a", "to_account": "b", "amount": 1}),
        ]:
            response = await http.post(path, json=body)
            assert_problem(response, 503, "stream-unavailable")
            assert response.headers["retry-after"] == "1"


async def test_health_answers_within_a_second_when_the_stream_service_hangs() -> None:
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # accept the connection, read nothing, answer nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        app = create_transaction_app(stream_url=f"http://127.0.0.1:{port}")
        async with transaction_client(app) as http:
            started = asyncio.get_running_loop().time()
            response = await http.get("/health")
            elapsed = asyncio.get_running_loop().time() - started
        assert_problem(response, 503, "stream-unavailable")
        assert elapsed < 1.0
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_commands_answer_503_once_the_stream_service_stops() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.funded(100)
        await ledger.stream.stop()
        response = await ledger.http.post(f"/accounts/{account_id}/deposits", json={"amount": 1})
        assert_problem(response, 503, "stream-unavailable")
        keyed = await ledger.http.post(
            f"/accounts/{account_id}/withdrawals",
            json={"amount": 1},
            headers={"Idempotency-Key": "outage-1"},
        )
        assert_problem(keyed, 503, "stream-unavailable")
        assert_problem(await ledger.http.get("/health"), 503, "stream-unavailable")


class BrokenStore(MemoryEventStore):
    """A store whose database went away for writes: the stream service answers 503."""

    async def _append_batch(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        raise StoreUnavailable("the database is gone")


async def test_a_stream_service_that_answers_5xx_makes_commands_answer_503() -> None:
    async with running_ledger(BrokenStore(upcasters=build_upcasters())) as ledger:
        response = await ledger.http.post("/accounts", json={"currency": "EUR"})
        assert_problem(response, 503, "stream-unavailable")
        assert response.headers["retry-after"] == "1"


async def test_the_correlation_id_of_a_request_is_kept_in_its_events(ledger: Ledger) -> None:
    account_id = await ledger.open()
    response = await ledger.http.post(
        f"/accounts/{account_id}/deposits",
        json={"amount": 1},
        headers={"X-Correlation-ID": "order-4711"},
    )
    assert response.status_code == 201
    event = (await ledger.events(account_id))[-1]
    assert event.metadata["correlation_id"] == "order-4711"
    assert event.metadata["causation_id"] != "order-4711"


async def test_metrics_count_commands_by_outcome() -> None:
    async with running_ledger() as ledger:
        account_id = await ledger.funded(10)
        await ledger.http.post(f"/accounts/{account_id}/withdrawals", json={"amount": 11})
        text = (await ledger.http.get("/metrics")).text
        accepted = 'command="deposit",outcome="accepted",reason=""} 1.0'
        assert "eventledger_transaction_commands_total{" + accepted in text
        assert (
            'eventledger_transaction_commands_total{command="withdraw",outcome="refused",'
            'reason="insufficient-funds"} 1.0' in text
        )
        assert "eventledger_http_requests_total" in text


async def test_the_openapi_document_describes_every_command(ledger: Ledger) -> None:
    document = (await ledger.http.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/accounts",
        "/accounts/{account_id}/deposits",
        "/accounts/{account_id}/withdrawals",
        "/transfers",
        "/accounts/{account_id}/close",
    ):
        operation = paths[path]["post"]
        assert operation["summary"]
        assert "application/json" in operation["requestBody"]["content"]
        assert {"201", "200", "422", "503"} <= set(operation["responses"])
        assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
    deposit = paths["/accounts/{account_id}/deposits"]["post"]
    schema = deposit["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["amount"]["maximum"] == 2**53 - 1
    assert "application/problem+json" in deposit["responses"]["409"]["content"]
    assert (await ledger.http.get("/docs")).status_code == 200
