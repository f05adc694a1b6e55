"""The stream service's guard of account streams (in-process, memory store): every append a
reader would refuse is a 422 problem naming the stream, the event and the rule, and the
store is exactly as it was; valid appends go through, on facts kept between appends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from eventledger.bootstrap import build_upcasters
from eventledger.eventstore.errors import WrongExpectedVersion
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, RecordedEvent, StreamAppend, StreamState
from eventledger.eventstore.store import EventStore
from eventledger.services.http import ProblemError
from eventledger.services.stream.app import create_app
from eventledger.services.stream.guards import AccountGuard

pytestmark = pytest.mark.asyncio

MAX_AMOUNT = 2**53 - 1


class ReadCountingStore(MemoryEventStore):
    """A memory store that records every stream read (stream, from_version)."""

    def __init__(self) -> None:
        super().__init__(upcasters=build_upcasters())
        self.stream_reads: list[tuple[str, int]] = []

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        self.stream_reads.append((stream, from_version))
        return await super()._read_stream(stream, from_version, limit)


@dataclass
class Service:
    client: httpx.AsyncClient
    store: ReadCountingStore

    async def append(
        self, account: str, *events: dict[str, Any], expected: Any = None
    ) -> httpx.Response:
        stream = f"account-{account}"
        if expected is None:
            expected = await self.store.stream_version(stream)
        return await self.client.post(
            f"/streams/{stream}", json={"expected_version": expected, "events": list(events)}
        )

    async def batch(self, *parts: tuple[str, list[dict[str, Any]]]) -> httpx.Response:
        appends = [
            {
                "stream": f"account-{account}",
                "expected_version": await self.store.stream_version(f"account-{account}"),
                "events": events,
            }
            for account, events in parts
        ]
        return await self.client.post("/batches", json={"appends": appends})

    async def snapshot(self) -> tuple[int, list[RecordedEvent]]:
        return await self.store.head_position(), await self.store.read_all(limit=10_000)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    store = ReadCountingStore()

    async def open_store() -> EventStore:
        return store

    app = create_app(open_store=open_store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stream") as c,
    ):
        yield Service(c, store)


def acc() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def tx() -> str:
    return str(uuid.uuid4())


def opened(account: str, **extra: Any) -> dict[str, Any]:
    data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
    return {"type": "AccountOpened", "schema_version": 2, "data": {**data, **extra}}


def money(type: str, account: str, amount: Any = 100, **extra: Any) -> dict[str, Any]:
    data = {"account_id": account, "transaction_id": tx(), "amount": amount, "reference": None}
    return {"type": type, "data": {**data, **extra}}


def deposited(account: str, amount: Any = 100, **extra: Any) -> dict[str, Any]:
    return money("MoneyDeposited", account, amount, **extra)


def closed(account: str) -> dict[str, Any]:
    return {"type": "AccountClosed", "data": {"account_id": account}}


def transfer(
    source: str, target: str, amount: int = 100, received: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    t = tx()
    sent = money("TransferSent", source, amount, transaction_id=t, to_account=target)
    into = money("TransferReceived", target, amount, transaction_id=t, from_account=source)
    into["data"].update(received or {})
    return sent, into


async def open_with(service: Service, account: str, balance: int = 0) -> None:
    r = await service.append(account, opened(account), expected="no_stream")
    assert r.status_code == 201, r.text
    if balance:
        r = await service.append(account, deposited(account, balance))
        assert r.status_code == 201, r.text


async def refused(
    service: Service, request: Any, *, rule: str | None, index: int | None = 0
) -> dict[str, Any]:
    """Send the request (a coroutine factory): 422, the problem as promised, nothing written."""
    before = await service.snapshot()
    r = await request()
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["title"] and body["detail"]
    if rule is not None:
        assert (body["type"], body["rule"], body["index"]) == ("invalid-account-event", rule, index)
        assert body["stream"].startswith("account-")
    assert await service.snapshot() == before
    return body


# -- expected versions ----------------------------------------------------------------------


@pytest.mark.parametrize("expected", ["any", "exists"])
async def test_an_account_append_needs_a_numeric_expected_version(
    service: Service, expected: str
) -> None:
    account = acc()
    await open_with(service, account)
    body = await refused(
        service, lambda: service.append(account, deposited(account), expected=expected), rule=None
    )
    assert body["type"] == "expected-version-required"


async def test_no_stream_counts_as_version_zero_for_an_account(service: Service) -> None:
    account = acc()
    r = await service.append(account, opened(account), expected="no_stream")
    assert r.status_code == 201, r.text


async def test_an_expected_version_beyond_the_stream_is_a_409_and_writes_nothing(
    service: Service,
) -> None:
    account = acc()
    await open_with(service, account)
    before = await service.snapshot()
    r = await service.append(account, deposited(account), expected=5)
    assert r.status_code == 409, r.text
    assert (r.json()["type"], r.json()["actual_version"]) == ("wrong-expected-version", 1)
    assert await service.snapshot() == before


async def test_other_streams_still_take_any_expected_version(service: Service) -> None:
    r = await service.client.post(
        "/streams/notes-1",
        json={"expected_version": "any", "events": [{"type": "Noted", "data": {"n": 1}}]},
    )
    assert r.status_code == 201, r.text


# -- one event's rules ------------------------------------------------------------------------

BAD_EVENTS = [
    ("a deposit of 0", lambda a: deposited(a, 0), "invalid-amount"),
    ("a negative deposit", lambda a: deposited(a, -5), "invalid-amount"),
    ("a deposit above 2^53-1", lambda a: deposited(a, MAX_AMOUNT + 1), "invalid-amount"),
    ("an amount as text", lambda a: deposited(a, "10"), "malformed-event"),
    ("a withdrawal of 0", lambda a: money("MoneyWithdrawn", a, 0), "invalid-amount"),
    (
        "an upper-case transaction id",
        lambda a: deposited(a, transaction_id=tx().upper()),
        "invalid-transaction-id",
    ),
    (
        "a transaction id that is no UUID",
        lambda a: deposited(a, transaction_id="tx-1"),
        "invalid-transaction-id",
    ),
    (
        "a right-to-left override",
        lambda a: deposited(a, reference="gpj\u202eexe"),
        "invalid-reference",
    ),
    ("a zero-width space", lambda a: deposited(a, reference="pay\u200bme"), "invalid-reference"),
    ("a byte order mark", lambda a: deposited(a, reference="\ufeffrent"), "invalid-reference"),
    ("a NUL", lambda a: deposited(a, reference="a\x00b"), "invalid-reference"),
    (
        "a reference of 257 characters",
        lambda a: deposited(a, reference="x" * 257),
        "invalid-reference",
    ),
    ("a second AccountOpened", lambda a: opened(a), "opened-twice"),
    ("another account's event", lambda a: deposited("someone-else"), "wrong-account"),
    (
        "an unknown type",
        lambda a: {"type": "MoneyTeleported", "data": {"account_id": a}},
        "unknown-event",
    ),
    ("an old schema version", lambda a: opened(a) | {"schema_version": 1}, "unknown-event"),
    ("a transfer to itself", lambda a: transfer(a, a)[0], "same-account-transfer"),
    ("closing with money on it", lambda a: closed(a), "balance-not-zero"),
]


@pytest.mark.parametrize(("why", "make", "rule"), BAD_EVENTS, ids=[b[0] for b in BAD_EVENTS])
async def test_an_event_a_reader_would_refuse_is_refused_and_nothing_is_written(
    service: Service, why: str, make: Any, rule: str
) -> None:
    account = acc()
    await open_with(service, account, balance=100)
    body = await refused(service, lambda: service.append(account, make(account)), rule=rule)
    assert body["stream"] == f"account-{account}"
    # ...and through /batches alike.
    await refused(service, lambda: service.batch((account, [make(account)])), rule=rule)


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ({"currency": "usd"}, "invalid-currency"),
        ({"currency": "XYZ"}, "invalid-currency"),
        ({"overdraft_limit": -1}, "invalid-overdraft-limit"),
        ({"overdraft_limit": MAX_AMOUNT + 1}, "invalid-overdraft-limit"),
        ({"owner": "Ada\u2066Lovelace"}, "invalid-owner"),
    ],
)
async def test_an_account_cannot_open_with_bad_values(
    service: Service, extra: dict[str, Any], rule: str
) -> None:
    account = acc()
    await refused(
        service, lambda: service.append(account, opened(account, **extra), expected=0), rule=rule
    )


async def test_an_account_id_longer_than_64_characters_cannot_open(service: Service) -> None:
    account = "a" * 65
    await refused(
        service,
        lambda: service.append(account, opened(account), expected=0),
        rule="invalid-account-id",
    )


async def test_nothing_comes_before_account_opened(service: Service) -> None:
    account = acc()
    await refused(
        service, lambda: service.append(account, deposited(account), expected=0), rule="not-opened"
    )


async def test_nothing_comes_after_account_closed(service: Service) -> None:
    account = acc()
    await open_with(service, account)
    assert (await service.append(account, closed(account))).status_code == 201
    await refused(service, lambda: service.append(account, deposited(account)), rule="after-close")
    await refused(service, lambda: service.append(account, closed(account)), rule="after-close")


async def test_the_refused_event_is_named_by_its_index_and_the_events_before_it_are_not_written(
    service: Service,
) -> None:
    account = acc()
    await open_with(service, account)
    await refused(
        service,
        lambda: service.append(account, deposited(account, 5), deposited(account, 0)),
        rule="invalid-amount",
        index=1,
    )


async def test_a_balance_never_leaves_the_signed_64_bit_range(service: Service) -> None:
    account = acc()
    await open_with(service, account)
    # 1024 maximal deposits reach 2^63 - 1024, the last that fits.
    for count in (1000, 24):
        events = [deposited(account, MAX_AMOUNT) for _ in range(count)]
        assert (await service.append(account, *events)).status_code == 201
    await refused(
        service,
        lambda: service.append(account, deposited(account, MAX_AMOUNT)),
        rule="balance-out-of-range",
    )


# -- transfers: both halves in one atomic append ------------------------------------------------


async def test_a_transfer_with_both_halves_in_one_batch_is_written(service: Service) -> None:
    a, b = acc(), acc()
    await open_with(service, a, balance=500)
    await open_with(service, b)
    sent, into = transfer(a, b, 300)
    r = await service.batch((a, [sent]), (b, [into]))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("half", [0, 1])
async def test_half_a_transfer_alone_is_refused(service: Service, half: int) -> None:
    a, b = acc(), acc()
    await open_with(service, a, balance=500)
    await open_with(service, b)
    event = transfer(a, b, 300)[half]
    account = a if half == 0 else b
    await refused(service, lambda: service.append(account, event), rule="unpaired-transfer")


@pytest.mark.parametrize(
    "received",
    [{"amount": 299}, {"reference": "other"}, {"from_account": "g-elsewhere"}],
    ids=["amount", "reference", "accounts"],
)
async def test_two_halves_that_do_not_match_are_refused(
    service: Service, received: dict[str, Any]
) -> None:
    a, b = acc(), acc()
    await open_with(service, a, balance=500)
    await open_with(service, b)
    sent, into = transfer(a, b, 300, received)
    sent["data"]["reference"] = "mine"  # two references (an erased one, null, agrees with any)
    await refused(
        service, lambda: service.batch((a, [sent]), (b, [into])), rule="transfer-mismatch"
    )


async def test_a_transfer_between_two_currencies_is_refused(service: Service) -> None:
    a, b = acc(), acc()
    await open_with(service, a, balance=500)
    r = await service.append(b, opened(b, currency="USD"), expected=0)
    assert r.status_code == 201
    sent, into = transfer(a, b, 300)
    await refused(
        service, lambda: service.batch((a, [sent]), (b, [into])), rule="currency-mismatch"
    )


# -- facts kept between appends -------------------------------------------------------------------


async def test_the_guard_reads_only_the_events_it_has_not_seen(service: Service) -> None:
    account = acc()
    stream = f"account-{account}"
    await open_with(service, account, balance=100)
    service.store.stream_reads.clear()
    # Appends through the service: the guard knows what it let through, and reads nothing.
    for _ in range(3):
        assert (await service.append(account, deposited(account))).status_code == 201
    assert service.store.stream_reads == []
    # A valid event written by someone else: the guard reads just that one.
    await service.store.append(
        stream,
        expected_version=5,
        events=[NewEvent(uuid.uuid4(), "MoneyDeposited", deposited(account)["data"])],
    )
    assert (await service.append(account, deposited(account))).status_code == 201
    assert service.store.stream_reads == [(stream, 6)]


async def test_a_resent_append_is_still_answered_as_a_replay(service: Service) -> None:
    account = acc()
    await open_with(service, account)
    event = deposited(account) | {"id": str(uuid.uuid4())}
    first = await service.append(account, event, expected=1)
    assert first.status_code == 201
    again = await service.append(account, event, expected=1)
    assert again.status_code == 200, again.text
    assert again.json()["positions"] == first.json()["positions"]


async def test_a_stored_history_that_breaks_the_rules_takes_no_more_events(
    service: Service,
) -> None:
    # Written behind the service's back (or before the rules existed): readers halt there.
    account = acc()
    stream = f"account-{account}"
    ghost = NewEvent(uuid.uuid4(), "MoneyDeposited", deposited(account)["data"])
    await service.store.append(stream, expected_version=StreamState.NO_STREAM, events=[ghost])
    before = await service.snapshot()
    r = await service.append(account, deposited(account), expected=1)
    assert r.status_code == 409, r.text
    assert (r.json()["type"], r.json()["version"]) == ("invalid-account-history", 1)
    assert await service.snapshot() == before


async def test_opening_an_account_reads_nothing(service: Service) -> None:
    service.store.stream_reads.clear()
    account = acc()
    assert (await service.append(account, opened(account), expected=0)).status_code == 201
    assert service.store.stream_reads == []


async def test_the_guard_keeps_the_facts_of_a_bounded_number_of_streams() -> None:
    store = ReadCountingStore()
    guard = AccountGuard(max_size=2)
    for account in ("a", "b", "c"):
        appends = [StreamAppend(f"account-{account}", 0, [new_event(opened(account))])]
        guard.remember(await guard.check(store, appends), await store.append_batch(appends))
    assert len(guard) == 2
    # The forgotten stream is read again, once, from its start.
    appends = [StreamAppend("account-a", 1, [new_event(deposited("a"))])]
    guard.remember(await guard.check(store, appends), await store.append_batch(appends))
    assert store.stream_reads == [("account-a", 1)]


def new_event(event: dict[str, Any]) -> NewEvent:
    return NewEvent(
        uuid.uuid4(), event["type"], event["data"], schema_version=event.get("schema_version", 1)
    )


async def test_a_batch_over_streams_the_guard_has_not_seen_reads_them_together() -> None:
    """A cold guard reads the facts of every stream of a batch at once, not one after the
    other: each read here waits until all of them have started."""
    accounts = [f"cold{n}" for n in range(5)]
    for_reads = ReadCountingStore()
    for account in accounts:
        await for_reads.append(
            f"account-{account}", expected_version=0, events=[new_event(opened(account))]
        )
    started = asyncio.Event()
    original = for_reads._read_stream

    async def read_when_all_started(
        stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        if len(for_reads.stream_reads) + 1 == len(accounts):
            started.set()
        events = await original(stream, from_version, limit)
        await started.wait()
        return events

    for_reads._read_stream = read_when_all_started  # type: ignore[method-assign]
    guard = AccountGuard()
    appends = [StreamAppend(f"account-{a}", 1, [new_event(deposited(a))]) for a in accounts]
    checked = await asyncio.wait_for(guard.check(for_reads, appends), 10)
    assert checked is not None
    assert sorted(for_reads.stream_reads) == [(f"account-{a}", 1) for a in accounts]
    assert {f.version for f in checked.facts.values()} == {2}


async def test_a_cold_batch_fails_on_the_first_stream_in_order_like_a_sequential_check() -> None:
    store = ReadCountingStore()
    for account in ("p", "q"):
        await store.append(
            f"account-{account}", expected_version=0, events=[new_event(opened(account))]
        )
    await store.append("account-q", expected_version=1, events=[new_event(deposited("q"))])
    appends = [
        StreamAppend("account-p", 3, [new_event(deposited("p"))]),  # behind: a 409
        StreamAppend("account-q", 1, [new_event(deposited("q"))]),  # past: nothing to check
    ]
    with pytest.raises(WrongExpectedVersion) as raised:
        await AccountGuard().check(store, appends)
    assert raised.value.stream == "account-p"
    assert await AccountGuard().check(store, appends[::-1]) is None


async def test_a_warm_guard_checks_a_batch_without_waiting_on_anything() -> None:
    """Facts cached at the expected versions: the check finishes in its first step (no store
    read, no task per stream), and still refuses what the rule refuses."""
    store = ReadCountingStore()
    guard = AccountGuard()
    for account in ("w1", "w2"):
        appends = [StreamAppend(f"account-{account}", 0, [new_event(opened(account))])]
        guard.remember(await guard.check(store, appends), await store.append_batch(appends))
    appends = [StreamAppend(f"account-{a}", 1, [new_event(deposited(a))]) for a in ("w1", "w2")]
    step = guard.check(store, appends)
    with pytest.raises(StopIteration) as finished:
        step.send(None)
    checked = finished.value.value
    assert checked is not None
    assert {s: f.version for s, f in checked.facts.items()} == {"account-w1": 2, "account-w2": 2}
    assert store.stream_reads == []
    # The same warm path refuses what the rule refuses: closing w2 at a balance of 100.
    w2 = StreamAppend("account-w2", 1, [new_event(deposited("w2")), new_event(closed("w2"))])
    with pytest.raises(ProblemError) as refused:
        await guard.check(store, [appends[0], w2])
    assert (refused.value.status, refused.value.extra["rule"]) == (422, "balance-not-zero")
    assert store.stream_reads == []
