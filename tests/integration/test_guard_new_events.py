"""Forged appends of the new events, straight to the stream service (what a holder of an
`events:append` token can send): every forged hold, outcome, reversal and erasure is refused
with a 422 problem document and the log is exactly as it was; forged records on the streams
the guard does not check (`transfer-{id}`, `reversal-{id}`) move no money and answer a clear
404 / 409. In-process, a stream service on a memory store with a transaction service in front
(tests/integration/test_transaction_api.py's ledger)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import pytest_asyncio

from eventledger.bootstrap import build_upcasters
from eventledger.domain.events import stream_name
from eventledger.domain.reversal import REVERSAL_RECORDED, reversal_stream
from eventledger.eventstore.memory import MemoryEventStore
from eventledger.eventstore.records import NewEvent, RecordedEvent
from eventledger.services.transaction.two_phase import HOLD_RECORDED, transfer_stream
from tests.integration.test_transaction_api import Ledger, assert_problem, running_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_AMOUNT = 2**53 - 1
Part = tuple[str, list[dict[str, Any]]]  # an account and the events appended to its stream


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    async with running_ledger() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stream(ledger: Ledger) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ledger.stream.url, timeout=10) as client:
        yield client


async def append(ledger: Ledger, stream: httpx.AsyncClient, *parts: Part) -> httpx.Response:
    """The parts as one append (one stream) or one batch (several), each at its version."""
    appends = [
        {
            "stream": stream_name(account),
            "expected_version": len(await ledger.events(account)),
            "events": events,
        }
        for account, events in parts
    ]
    if len(appends) == 1:
        only = appends[0]
        body = {"expected_version": only["expected_version"], "events": only["events"]}
        return await stream.post(f"/streams/{only['stream']}", json=body)
    return await stream.post("/batches", json={"appends": appends})


def ev(type: str, **data: Any) -> dict[str, Any]:
    return {"type": type, "data": data}


def hold_events(
    source: str, target: str, tx: str, amount: int = 100, **received: Any
) -> tuple[Part, Part]:
    common = {"transaction_id": tx, "amount": amount, "reference": None, "expires_at": None}
    sent = ev("PendingTransferSent", account_id=source, to_account=target, **common)
    into = ev("PendingTransferReceived", account_id=target, from_account=source, **common)
    into["data"].update(received)
    return (source, [sent]), (target, [into])


def outcome(
    type: str, source: str, target: str, tx: str, amount: int, **more: Any
) -> tuple[Part, Part]:
    common = {"transaction_id": tx, "from_account": source, "to_account": target, "amount": amount}
    return (
        (source, [ev(type, account_id=source, **common, **more)]),
        (target, [ev(type, account_id=target, **common, **more)]),
    )


def reversed_(account: str, reverses: str, amount: int, tx: str, **more: Any) -> dict[str, Any]:
    data = {"transaction_id": tx, "reverses": reverses, "amount": amount, "reference": None}
    return ev("TransactionReversed", account_id=account, **{**data, **more})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(ledger: Ledger) -> dict[str, str]:
    """Accounts a (EUR, 1000), b (EUR), u (USD, 1000), c (EUR, closed), a hold h of 100
    from a to b, a transfer t of 50 from a to b, a deposit d on a."""
    a, b, c = await ledger.funded(1_000), await ledger.open(), await ledger.open()
    u = await ledger.funded(1_000, "USD")
    closed = await ledger.http.post(f"/accounts/{c}/close", json={})
    assert closed.status_code == 201, closed.text
    h = await ledger.http.post(
        "/transfers", json={"from_account": a, "to_account": b, "amount": 100, "pending": True}
    )
    t = await ledger.http.post(
        "/transfers", json={"from_account": a, "to_account": b, "amount": 50}
    )
    d = await ledger.deposit(a, 10)
    return {
        "a": a,
        "b": b,
        "c": c,
        "u": u,
        "h": h.json()["transaction_id"],
        "t": t.json()["transaction_id"],
        "d": d["transaction_id"],
    }


def forged_appends(w: dict[str, str]) -> dict[str, list[Part]]:
    a, b, c, u, h, t, d = (w[k] for k in "abcuhtd")
    new = str(uuid4())
    held_sent, held_into = hold_events(a, b, new)
    return {
        # holds
        "half a hold (sent)": [held_sent],
        "half a hold (received)": [held_into],
        "a hold whose halves differ in amount": [held_sent, hold_events(a, b, new, amount=99)[1]],
        "a hold whose receiver names another sender": list(hold_events(a, b, new, from_account=c)),
        "a hold across currencies": list(hold_events(a, u, new)),
        "a hold from a closed account": list(hold_events(c, b, new)),
        "a hold of 0": list(hold_events(a, b, new, amount=0)),
        "a hold of 2^53": list(hold_events(a, b, new, amount=MAX_AMOUNT + 1)),
        "a hold with a bad expiry": [
            (acct, [{**e, "data": {**e["data"], "expires_at": "tomorrow"}} for e in evs])
            for acct, evs in hold_events(a, b, new)
        ],
        "a hold id that is already pending": list(hold_events(a, b, h)),
        # outcomes
        "a post of a hold that does not exist": list(
            outcome("PendingTransferPosted", a, b, new, 100)
        ),
        "a post of another account's hold": list(outcome("PendingTransferPosted", c, b, h, 100)),
        "a post above the hold": list(outcome("PendingTransferPosted", a, b, h, 101)),
        "a post of 0": list(outcome("PendingTransferPosted", a, b, h, 0)),
        "a post on one side only": [outcome("PendingTransferPosted", a, b, h, 100)[0]],
        "a post with the sides swapped": list(outcome("PendingTransferPosted", b, a, h, 100)),
        "a void for another amount": list(
            outcome("PendingTransferVoided", a, b, h, 99, reason="voided")
        ),
        "a void with another reason": list(
            outcome("PendingTransferVoided", a, b, h, 100, reason="cancelled")
        ),
        "a void of a one-phase transfer": list(
            outcome("PendingTransferVoided", a, b, t, 50, reason="voided")
        ),
        # reversals
        "a transfer reversal that does not sum to zero": [
            (a, [reversed_(a, t, 50, new)]),
            (b, [reversed_(b, t, -49, new)]),
        ],
        "a reversal of 0": [(a, [reversed_(a, d, 0, new)])],
        "a reversal across currencies": [
            (a, [reversed_(a, t, 50, new)]),
            (u, [reversed_(u, t, -50, new)]),
        ],
        "a reversal that reverses itself": [(a, [reversed_(a, new, -10, new)])],
        "a reversal on a closed account": [(c, [reversed_(c, d, 10, new)])],
        "one reversal twice on one account": [
            (a, [reversed_(a, t, 25, new), reversed_(a, t, 25, new)])
        ],
        "a reversal with two reasons": [
            (a, [reversed_(a, t, 50, new, reference="x")]),
            (b, [reversed_(b, t, -50, new, reference="y")]),
        ],
        "a reversal with a bidi override": [(a, [reversed_(a, d, -10, new, reference="\u202e")])],
        # erasure
        "PersonalDataErased by a plain append": [(a, [ev("PersonalDataErased", account_id=a)])],
    }


CASES = list(forged_appends({k: k for k in "abcuhtd"}))


@pytest.mark.parametrize("case", CASES)
async def test_a_forged_append_of_the_new_events_is_refused_and_writes_nothing(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str], case: str
) -> None:
    parts = forged_appends(world)[case]
    head = await ledger.head()
    answer = await append(ledger, stream, *parts)
    expected = "erasure-needs-forget" if "PersonalDataErased" in case else "invalid-account-event"
    assert_problem(answer, 422, expected)
    assert await ledger.head() == head
    # The hold is still there, whole: nothing the forgery named has moved.
    state = await ledger.http.get(f"/transfers/{world['h']}")
    assert (state.json()["status"], state.json()["amount"]) == ("pending", 100)


@pytest.mark.parametrize(
    "metadata", [{"erased": ["reference"]}, {"erased": []}, {"erased": None}, {"erased": "x"}]
)
async def test_an_erased_marker_forged_in_metadata_is_refused(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str], metadata: dict[str, Any]
) -> None:
    # Found: an append could carry `metadata.erased` (which the store sets on reads for the
    # fields whose key was deleted): the value read as erased to a client while it was not,
    # and the transaction service's forget took it for erased and wrote nothing.
    a = world["a"]
    head = await ledger.head()
    event = ev("MoneyDeposited", account_id=a, transaction_id=str(uuid4()), amount=1)
    event["data"]["reference"] = "kept after a forget"
    answer = await append(ledger, stream, (a, [{**event, "metadata": metadata}]))
    problem = assert_problem(answer, 422, "validation-error")
    assert "erased" in problem["detail"]
    assert await ledger.head() == head


async def test_a_reference_written_after_a_forget_is_forgotten_by_the_next_even_if_marked(
    ledger: Ledger,
) -> None:
    # The forget decides on the data alone: a value written after an erasure is erased by the
    # next forget whatever its metadata says (a marker stored before the door refused it:
    # written here straight to the store).
    account = await ledger.open(owner="Eve Example")
    first = await ledger.http.post(
        f"/accounts/{account}/forget", headers={"Content-Type": "application/json"}
    )
    assert first.status_code == 201, first.text
    data = {"account_id": account, "transaction_id": str(uuid4()), "amount": 1}
    event = NewEvent(
        uuid4(), "MoneyDeposited", {**data, "reference": "written after the forget"},
        {"erased": []},
    )  # fmt: skip
    await ledger.store.append(stream_name(account), expected_version=2, events=[event])
    assert (await ledger.events(account))[2].data["reference"] == "written after the forget"
    again = await ledger.http.post(
        f"/accounts/{account}/forget", headers={"Content-Type": "application/json"}
    )
    assert again.status_code == 201 and not again.json()["replayed"], again.text
    assert (await ledger.events(account))[2].data["reference"] is None


async def forge(stream: httpx.AsyncClient, name: str, *events: dict[str, Any]) -> None:
    written = await stream.post(
        f"/streams/{name}", json={"expected_version": "any", "events": list(events)}
    )
    assert written.status_code == 201, written.text


@pytest.mark.parametrize(
    "record",
    [
        ev(HOLD_RECORDED, amount="x"),
        ev(HOLD_RECORDED, from_account=["a"], to_account={"b": 1}, amount=[5]),
        ev(HOLD_RECORDED, from_account="../x", to_account="\u202e", amount=5),
        ev(HOLD_RECORDED, from_account="nobody-1", to_account="nobody-2", amount=5),
        ev("SomethingElse"),
        ev(HOLD_RECORDED, from_account="a" * 100, to_account="b" * 200, amount=5),
        ev(HOLD_RECORDED, from_account="a/b", to_account="c?d=1", amount=5),
        ev(HOLD_RECORDED, from_account="", to_account="", amount=5),
        "one real account twice",
    ],
    ids=[
        "junk amount",
        "lists",
        "bad ids",
        "unknown accounts",
        "another type",
        "ids too long for a stream",
        "a slash",
        "empty ids",
        "one account twice",
    ],
)
async def test_a_junk_transfer_record_is_not_found_and_moves_no_money(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str], record: Any
) -> None:
    # Found: ids too long for a stream name or with a slash were asked for (502), empty ids
    # or one account twice answered 422, where the transfer is simply not found.
    tid = str(uuid4())
    if record == "one real account twice":
        record = ev(HOLD_RECORDED, from_account=world["a"], to_account=world["a"], amount=5)
    record = {**record, "data": {"transaction_id": tid, **record.get("data", {})}}
    await forge(stream, transfer_stream(tid), record)
    head = await ledger.head()
    assert_problem(await ledger.http.get(f"/transfers/{tid}"), 404, "transfer-not-found")
    for action in ("post", "void"):
        answer = await ledger.http.post(f"/transfers/{tid}/{action}", json={})
        assert_problem(answer, 404, "transfer-not-found")
    answer = await ledger.http.post(f"/transactions/{tid}/reverse", json={})
    assert_problem(answer, 404, "transaction-not-found")
    assert await ledger.head() == head


async def test_a_forged_end_record_does_not_end_a_real_hold(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str]
) -> None:
    a, b = world["a"], world["b"]
    placed = await ledger.http.post(
        "/transfers", json={"from_account": a, "to_account": b, "amount": 7, "pending": True}
    )
    tid = placed.json()["transaction_id"]
    await forge(stream, transfer_stream(tid), ev("TransferHoldEnded", status="posted"))
    assert (await ledger.http.get(f"/transfers/{tid}")).json()["status"] == "pending"
    voided = await ledger.http.post(f"/transfers/{tid}/void", json={})
    assert voided.status_code == 201 and voided.json()["status"] == "voided", voided.text


@pytest.mark.parametrize(
    "marker",
    [
        ev("Junk", x=1),
        ev(REVERSAL_RECORDED),
        ev(REVERSAL_RECORDED, transaction_id="not-a-uuid"),
        "names the original itself",
        "names a reversal that was never written",
    ],
    ids=["another type", "empty", "a bad id", "itself", "no such reversal"],
)
async def test_a_forged_reversal_marker_blocks_with_a_clear_409_and_writes_nothing(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str], marker: Any
) -> None:
    # Found: a forged marker answered 409 already-reversed "by None" (or by itself) while
    # nothing had been reversed.
    original = (await ledger.deposit(world["a"], 3))["transaction_id"]
    if marker == "names the original itself":
        marker = ev(REVERSAL_RECORDED, transaction_id=original, reverses=original, accounts=[])
    elif marker == "names a reversal that was never written":
        marker = ev(REVERSAL_RECORDED, transaction_id=str(uuid4()), reverses=original)
    await forge(stream, reversal_stream(original), marker)
    head = await ledger.head()
    answer = await ledger.http.post(f"/transactions/{original}/reverse", json={})
    problem = assert_problem(answer, 409, "reversal-blocked")
    assert reversal_stream(original) in problem["detail"]
    assert await ledger.head() == head


async def test_a_real_reversal_is_still_named_by_a_second_one(ledger: Ledger) -> None:
    account = await ledger.funded(100)
    original = (await ledger.deposit(account, 5))["transaction_id"]
    first = await ledger.http.post(f"/transactions/{original}/reverse", json={})
    assert first.status_code == 201, first.text
    second = await ledger.http.post(f"/transactions/{original}/reverse", json={})
    problem = assert_problem(second, 409, "already-reversed")
    assert problem["reversed_by"] == first.json()["transaction_id"]


async def test_a_transaction_id_reused_on_another_account_makes_no_5xx_and_moves_nothing(
    ledger: Ledger, stream: httpx.AsyncClient, world: dict[str, str]
) -> None:
    # Found: a valid deposit on a third account carrying a transfer's id (the guard checks ids
    # per account) made the reversal of the transfer a 502: the command side decided events
    # that did not sum to 0, which the guard refused.
    a, b = world["a"], world["b"]
    eve = await ledger.funded(1_000)
    moved = await ledger.http.post(
        "/transfers", json={"from_account": a, "to_account": b, "amount": 4}
    )
    original = moved.json()["transaction_id"]
    sibling = ev(
        "MoneyDeposited", account_id=eve, transaction_id=original, amount=7, reference=None
    )
    written = await append(ledger, stream, (eve, [sibling]))
    assert written.status_code == 201, written.text
    head = await ledger.head()
    answer = await ledger.http.post(f"/transactions/{original}/reverse", json={})
    problem = assert_problem(answer, 409, "not-reversible")
    assert "3 accounts" in problem["detail"]
    assert await ledger.head() == head


async def test_a_forget_with_the_event_id_of_another_event_is_refused_not_a_replay(
    ledger: Ledger, stream: httpx.AsyncClient
) -> None:
    # Found: the stream service's forget with the id of an event already in the account's
    # stream (its AccountOpened) answered 200 "replayed" and erased nothing.
    account = await ledger.open(owner="Zed Secret")
    opened = (await ledger.events(account))[0]
    head = await ledger.head()
    for event_id in (opened.id, (await ledger.events(await ledger.open()))[0].id):
        answer = await stream.post(
            f"/admin/accounts/{account}/forget",
            json={"expected_version": 1, "event_id": str(event_id)},
        )
        assert_problem(answer, 409, "duplicate-event-id")
    assert await ledger.head() == head + 1  # only the second account's opening
    assert (await ledger.events(account))[0].data["owner"] == "Zed Secret"
    # Its own id again is still a replay.
    event_id = str(uuid4())
    first = await stream.post(
        f"/admin/accounts/{account}/forget", json={"expected_version": 1, "event_id": event_id}
    )
    again = await stream.post(
        f"/admin/accounts/{account}/forget", json={"expected_version": 1, "event_id": event_id}
    )
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert (await ledger.events(account))[0].data["owner"] is None


@pytest.mark.parametrize(
    "metadata",
    [
        {"erased": "x"},
        {"erased": "[]"},
        {"note": "x" * 70_000},
        {f"k{i}": "x" * 4_200 for i in range(16)},
    ],
    ids=["erased", "erased as a list's text", "70 kB", "16 x 4.2 kB"],
)
async def test_a_forget_s_metadata_keeps_the_rules_of_an_append(
    ledger: Ledger, stream: httpx.AsyncClient, metadata: dict[str, str]
) -> None:
    # Found: the stream service's forget wrote its metadata without the append's rules: 1 MB
    # of it made an event 16 times the 64 KiB limit, and `erased` (the store's) was taken.
    account = await ledger.open(owner="Em")
    head = await ledger.head()
    answer = await stream.post(
        f"/admin/accounts/{account}/forget", json={"expected_version": 1, "metadata": metadata}
    )
    assert_problem(answer, 422, "validation-error")
    assert await ledger.head() == head
    assert (await ledger.events(account))[0].data["owner"] == "Em"
    fine = await stream.post(
        f"/admin/accounts/{account}/forget",
        json={"expected_version": 1, "metadata": {"ticket": "GDPR-17"}},
    )
    assert fine.status_code == 201, fine.text


class ReadRecordingStore(MemoryEventStore):
    """A memory store that records every stream read: (stream, from_version, limit)."""

    def __init__(self) -> None:
        super().__init__(upcasters=build_upcasters())
        self.reads: list[tuple[str, int, int | None]] = []

    async def _read_stream(
        self, stream: str, from_version: int, limit: int | None
    ) -> list[RecordedEvent]:
        self.reads.append((stream, from_version, limit))
        return await super()._read_stream(stream, from_version, limit)


async def test_a_flooded_transfer_stream_is_not_read_past_its_record() -> None:
    # Found: every lookup of a transfer read its whole transfer stream, which is not guarded:
    # 5,000 junk events there (any holder of events:append) made each GET read them all.
    store = ReadRecordingStore()
    async with (
        running_ledger(store) as ledger,
        httpx.AsyncClient(base_url=ledger.stream.url, timeout=10) as stream,
    ):
        source, target = await ledger.funded(1_000), await ledger.open()
        placed = await ledger.http.post(
            "/transfers",
            json={"from_account": source, "to_account": target, "amount": 9, "pending": True},
        )
        tid = placed.json()["transaction_id"]
        junk = [ev("TransferHoldEnded", status="voided", pad="x" * 100)] * 1000
        for _ in range(3):
            await forge(stream, transfer_stream(tid), *junk)
        store.reads.clear()
        state = await ledger.http.get(f"/transfers/{tid}")
        assert state.json()["status"] == "pending", state.text
        posted = await ledger.http.post(f"/transfers/{tid}/post", json={"amount": 4})
        assert posted.status_code == 201, posted.text
        reads = [r for r in store.reads if r[0] == transfer_stream(tid)]
        assert reads and all(limit is not None and limit <= 1 for _, _, limit in reads), reads
        assert (await ledger.events(source))[-1].type == "PendingTransferPosted"
