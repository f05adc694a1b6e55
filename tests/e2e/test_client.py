"""The typed client against real services: both clients, their errors, tokens, subscriptions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventledger.client import (
    AccountClosed,
    AccountExists,
    AccountNotFound,
    AsyncClient,
    BalanceNotZero,
    Client,
    CurrencyMismatch,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    NewEvent,
    NotRebuilding,
    StreamNotFound,
    TransportError,
    Unauthenticated,
    ValidationError,
    WrongExpectedVersion,
)
from tests.e2e.harness import System, free_port, make_credentials, new_id, start_system

pytestmark = pytest.mark.slow


def urls(system: System) -> dict[str, str]:
    return {f"{s.name}_url": s.url for s in system.services}


@pytest.fixture
def ledger(system: System, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.delenv("EVENTLEDGER_TOKEN", raising=False)
    with Client(**urls(system)) as client:
        yield client


def test_the_client_moves_money_and_reads_its_own_writes(ledger: Client) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    opened = ledger.open_account("EUR", account_id=alice, owner="Alice")
    assert (opened.account_id, opened.currency, opened.owner) == (alice, "EUR", "Alice")
    ledger.open_account("EUR", account_id=bob, overdraft_limit=500)
    deposited = ledger.deposit(alice, 10_000, reference="salary")
    assert (deposited.balance, deposited.replayed) == (10_000, False)
    withdrawn = ledger.withdraw(alice, 1_000)
    moved = ledger.transfer(alice, bob, 2_550, reference="rent")
    assert (withdrawn.balance, moved.from_balance, moved.to_balance) == (9_000, 6_450, 2_550)
    assert moved.position > withdrawn.position > deposited.position > opened.position

    fresh = ledger.consistent_with(moved)
    account = fresh.account(bob)
    assert (account.balance, account.overdraft_limit, account.version) == (2_550, 500, 2)
    assert account.position >= moved.position and account.updated_at.tzinfo is not None
    page = fresh.history(alice, limit=2)
    assert [i.kind for i in page.items] == ["transfer_out", "withdrawal"]
    assert [i.amount for i in page.items] == [-2_550, -1_000] and page.next is not None
    older = fresh.history(alice, limit=2, before=page.next)
    assert [(i.kind, i.reference) for i in older.items] == [("deposit", "salary")]
    assert older.next is None
    then = fresh.balance_at(alice, at_position=withdrawn.position)
    assert (then.balance, then.as_of_position) == (9_000, withdrawn.position)
    assert fresh.balance_at(alice, at=datetime.now(UTC)).balance == 6_450
    assert fresh.balance_at(alice, at=older.items[0].recorded_at).balance == 10_000

    stats = ledger.stats(min_position=moved.position)
    assert stats.position >= moved.position and stats.currencies["EUR"].deposits.count >= 1
    today = datetime.now(UTC).date()
    daily = ledger.daily_stats(first=today, last=today, min_position=moved.position)
    assert daily.days[today]["EUR"].transfers.volume >= 2_550
    listed = fresh.accounts(limit=1, after=alice[:-1])  # ids sort: alice's is next or near
    assert listed.items and listed.next == listed.items[0].account_id
    assert alice in {a.account_id for a in fresh.iter_accounts(page_size=100)}
    assert [i.balance_after for i in fresh.iter_history(alice, page_size=1)] == [
        6_450,
        9_000,
        10_000,
    ]

    stream = ledger.read_stream(f"account-{alice}")
    assert [e.stream_version for e in stream.events] == [1, 2, 3, 4] and stream.version == 4
    assert stream.events[-1].batch_end == moved.position  # a transfer: one atomic batch
    assert list(ledger.iter_stream(f"account-{alice}", from_version=3)) == list(stream.events[2:])
    log = ledger.read_log(after=opened.position - 1, limit=1)
    assert log.events[0].type == "AccountOpened" and log.last_position == opened.position


def test_a_command_sent_again_with_its_key_is_answered_as_before(ledger: Client) -> None:
    account = new_id("replay")
    ledger.open_account("EUR", account_id=account)
    first = ledger.deposit(account, 700, idempotency_key=f"k-{account}")
    again = ledger.deposit(account, 700, idempotency_key=f"k-{account}")
    assert again.replayed and (again.transaction_id, again.position) == (
        first.transaction_id,
        first.position,
    )
    with pytest.raises(IdempotencyKeyReused) as reused:
        ledger.deposit(account, 701, idempotency_key=f"k-{account}")
    assert reused.value.status == 422
    assert ledger.consistent_with(again).account(account).balance == 700


def test_each_refusal_is_its_own_exception_with_the_problem(ledger: Client) -> None:
    eur, usd = new_id("eur"), new_id("usd")
    ledger.open_account("EUR", account_id=eur)
    ledger.open_account("USD", account_id=usd)
    with pytest.raises(AccountNotFound):
        ledger.deposit(new_id("nobody"), 1)
    with pytest.raises(AccountExists):
        ledger.open_account("EUR", account_id=eur)
    with pytest.raises(InsufficientFunds) as refused:
        ledger.withdraw(eur, 1)
    assert refused.value.problem["balance"] == 0 and "insufficient" in str(refused.value).lower()
    with pytest.raises(CurrencyMismatch):
        ledger.transfer(eur, usd, 1)
    ledger.deposit(eur, 5)
    with pytest.raises(BalanceNotZero):
        ledger.close_account(eur)
    ledger.withdraw(eur, 5)
    ledger.close_account(eur)
    with pytest.raises(AccountClosed):
        ledger.deposit(eur, 1)
    with pytest.raises(ValidationError) as invalid:
        ledger.open_account("euro")
    assert invalid.value.status == 422
    with pytest.raises(AccountNotFound):
        ledger.account(new_id("nobody"))
    with pytest.raises(StreamNotFound):
        ledger.read_stream(new_id("nothing"))


def test_an_append_states_its_expected_version_and_a_stale_one_is_refused(
    ledger: Client,
) -> None:
    stream = new_id("notes")
    first = ledger.append(stream, expected_version="no_stream", events=[NewEvent("Noted", {})])
    assert (first.first_version, first.last_version) == (1, 1)
    with pytest.raises(WrongExpectedVersion) as stale:
        ledger.append(stream, expected_version=0, events=[NewEvent("Noted", {"n": 2})])
    assert stale.value.status == 409
    second = ledger.append(stream, expected_version=1, events=[NewEvent("Noted", {"n": 2})])
    assert second.last_version == 2 and ledger.read_stream(stream).version == 2


def test_a_subscription_yields_events_live_after_a_position(ledger: Client, system: System) -> None:
    account = new_id("live")
    after = system.head_position()
    events = ledger.subscribe(after=after, stream_prefix=f"account-{account}")

    def write() -> None:
        with Client(**urls(system)) as writer:
            writer.open_account("EUR", account_id=account)
            writer.deposit(account, 250)

    threading.Thread(target=write).start()  # the subscription below waits for them
    seen = [next(events), next(events)]
    events.close()
    assert [(e.type, e.stream_version) for e in seen] == [
        ("AccountOpened", 1),
        ("MoneyDeposited", 2),
    ]
    assert seen[0].position > after and seen[1].data["amount"] == 250


async def test_the_async_client_does_the_same(system: System) -> None:
    account = new_id("async")
    async with AsyncClient(**urls(system)) as ledger:
        after = (await ledger.open_account("EUR", account_id=account)).position - 1
        moved = await ledger.deposit(account, 1_234)
        assert (await ledger.consistent_with(moved).account(account)).balance == 1_234
        with pytest.raises(InsufficientFunds):
            await ledger.withdraw(account, 5_000)
        seen = []
        async for event in ledger.subscribe(after=after, stream_prefix=f"account-{account}"):
            seen.append(event.type)
            if len(seen) == 2:
                break
        assert seen == ["AccountOpened", "MoneyDeposited"]
        health = await ledger.health("accounting")
        assert health.position >= moved.position and health.halted is None


def test_a_rebuild_is_started_and_its_health_followed(ledger: Client) -> None:
    account = new_id("rebuild")
    ledger.open_account("EUR", account_id=account)
    moved = ledger.deposit(account, 99)
    ledger.rebuild("statistics")
    stats = ledger.stats(min_position=moved.position)  # waits (retrying 503s) for the replay
    assert stats.position >= moved.position
    assert ledger.health("statistics").rebuilding is False
    assert ledger.decisions("statistics") == ()


def test_a_blue_green_rebuild_is_followed_to_its_switch_and_cannot_be_cancelled_after(
    ledger: Client,
) -> None:
    account = new_id("bluegreen")
    ledger.open_account("EUR", account_id=account)
    moved = ledger.deposit(account, 250)
    started = ledger.rebuild_blue_green("accounting")
    assert started.build is not None and started.build.from_version == started.live_version
    deadline = time.monotonic() + 60
    status = ledger.rebuild_status("accounting")
    while status.build is not None and status.build.active and time.monotonic() < deadline:
        status = ledger.rebuild_status("accounting")
    assert status.build is not None and status.build.state == "done", status
    assert status.live_version == status.build.version == started.build.version
    assert status.build.position >= moved.position
    assert ledger.consistent_with(moved).account(account).balance == 250
    with pytest.raises(NotRebuilding):
        ledger.cancel_rebuild("accounting")


def test_an_unreachable_service_is_a_transport_error_not_a_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(transaction_url=url, retries=1) as ledger, pytest.raises(TransportError) as lost:
        ledger.deposit("alice", 1)
    assert str(lost.value) == f"cannot reach the transaction service at {url}"
    assert not lost.value.maybe_applied


@pytest.fixture(scope="module")
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, suite_store: str
) -> Iterator[tuple[System, dict[str, str]]]:
    root = tmp_path_factory.mktemp("secured")
    users = {"teller": ["ledger:write", "ledger:read"], "reader": ["ledger:read"]}
    credentials = make_credentials(root / "credentials", users)
    with ExitStack() as stack:
        system = start_system(request, stack, root / "system", suite_store, credentials=credentials)
        yield system, dict(credentials.tokens)


def test_the_token_comes_from_the_argument_or_eventledger_token(
    secured: tuple[System, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system, tokens = secured
    monkeypatch.delenv("EVENTLEDGER_TOKEN", raising=False)
    account = new_id("tok")
    with Client(**urls(system)) as anonymous, pytest.raises(Unauthenticated) as refused:
        anonymous.open_account("EUR", account_id=account)
    assert refused.value.status == 401
    with Client(**urls(system), token=tokens["teller"]) as teller:
        teller.open_account("EUR", account_id=account)
    monkeypatch.setenv("EVENTLEDGER_TOKEN", tokens["reader"])
    with Client(**urls(system)) as reader:
        assert reader.account(account, min_position=1).currency == "EUR"
        with pytest.raises(Forbidden) as forbidden:
            reader.deposit(account, 1)
    assert "ledger:write" in forbidden.value.detail
