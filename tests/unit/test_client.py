"""The typed client against `httpx.MockTransport`: keys, retries, floors, tokens, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from eventledger.client import (
    AccountNotFound,
    AsyncClient,
    Client,
    Conflict,
    InsufficientFunds,
    MoneyMoved,
    NewEvent,
    ProblemError,
    Rebuilding,
    TransportError,
    Unavailable,
    UnexpectedResponse,
    ValidationError,
    WrongExpectedVersion,
    core,
)

Handler = Callable[[httpx.Request], httpx.Response]

MOVED = {
    "transaction_id": "2a1dafa1-fec5-8589-8456-89d7eca1003d",
    "account_id": "alice",
    "amount": 500,
    "balance": 1500,
    "position": 7,
}
ACCOUNT = {
    "account_id": "alice",
    "currency": "EUR",
    "balance": 1500,
    "overdraft_limit": 0,
    "owner": None,
    "status": "open",
    "version": 2,
    "opened_at": "2026-11-27T11:12:29.017840Z",
    "updated_at": "2026-11-27T11:12:30.388898Z",
    "position": 7,
}


def problem(status: int, type_: str, **extra: object) -> httpx.Response:
    body = {"type": type_, "title": type_.replace("-", " ").capitalize(), "status": status}
    body.update({"detail": f"detail of {type_}"}, **extra)
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else {}
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off by zero seconds here: the policy is what is tested, not the clock."""
    monkeypatch.setattr(core, "BACKOFF", (0.0,))
    monkeypatch.setattr(core, "RECONNECT_DELAYS", (0.0, 0.0))
    monkeypatch.delenv("EVENTLEDGER_TOKEN", raising=False)


def client(handler: Handler, **kwargs: object) -> Client:
    return Client(transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def test_a_command_is_retried_after_a_503_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return problem(503, "stream-unavailable", retry_after=0)
        return httpx.Response(201, json=MOVED)

    with client(handler) as ledger:
        moved = ledger.deposit("alice", 500, reference="salary")
    assert moved == MoneyMoved(MOVED["transaction_id"], "alice", 500, 1500, 7, available=1500)  # type: ignore[arg-type]
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1
    assert json.loads(seen[0].content) == {"amount": 500, "reference": "salary"}
    assert str(seen[0].url) == "http://127.0.0.1:8001/accounts/alice/deposits"


def test_each_command_call_gets_a_key_of_its_own_unless_one_is_given() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(201, json=MOVED)

    with client(handler) as ledger:
        ledger.deposit("alice", 500)
        ledger.deposit("alice", 500)
        ledger.deposit("alice", 500, idempotency_key="dep-001")
    assert keys[0] != keys[1] and keys[2] == "dep-001"


def test_a_replayed_answer_is_marked_replayed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=MOVED, headers={"Idempotent-Replayed": "true"})

    with client(handler) as ledger:
        assert ledger.deposit("alice", 500, idempotency_key="k-1").replayed is True


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once() -> None:
    calls_made = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls_made
        calls_made += 1
        return problem(503, "rebuilding", retry_after=30)

    with client(handler, max_retry_wait=5.0) as ledger, pytest.raises(Rebuilding) as raised:
        ledger.account("alice")
    assert calls_made == 1
    assert isinstance(raised.value, Unavailable) and raised.value.status == 503


def test_retries_are_bounded_and_the_last_problem_is_raised_with_the_commands_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return problem(503, "too-much-contention", retry_after=0)

    with client(handler, retries=2) as ledger, pytest.raises(Unavailable) as raised:
        ledger.withdraw("alice", 1, idempotency_key="w-1")
    assert len(seen) == 3 and raised.value.idempotency_key == "w-1"


def test_a_dropped_connection_is_retried_and_says_the_command_may_have_been_applied() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        raise httpx.ReadError("connection reset", request=request)

    with client(handler, retries=1) as ledger, pytest.raises(TransportError) as raised:
        ledger.deposit("alice", 5)
    assert len(seen) == 2 and len(set(seen)) == 1
    assert raised.value.maybe_applied and raised.value.idempotency_key == seen[0]
    assert "lost the connection to the transaction service at http://127.0.0.1:8001" in str(
        raised.value
    )


def test_a_connection_refused_was_not_sent_and_says_so() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    ledger = client(handler, transaction_url="http://127.0.0.1:9")
    with ledger, pytest.raises(TransportError) as raised:
        ledger.deposit("alice", 5)
    assert not raised.value.maybe_applied
    assert str(raised.value) == "cannot reach the transaction service at http://127.0.0.1:9"


def test_a_command_refused_a_connection_after_a_503_may_still_have_been_applied() -> None:
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        if tries == 1:
            return problem(503, "stream-unavailable", retry_after=0)  # written or not?
        raise httpx.ConnectError("refused", request=request)

    with client(handler, retries=2) as ledger, pytest.raises(TransportError) as raised:
        ledger.deposit("alice", 5, idempotency_key="d-1")
    assert str(raised.value).startswith("cannot reach the transaction service")
    assert raised.value.maybe_applied and raised.value.idempotency_key == "d-1"


def test_a_call_unsafe_to_repeat_is_not_sent_twice_after_it_may_have_arrived() -> None:
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise httpx.ConnectError("refused", request=request)  # not sent: retried
        raise httpx.ReadError("reset", request=request)  # maybe applied: not again

    with client(handler) as ledger, pytest.raises(TransportError):
        ledger.rebuild("accounting")
    assert tries == 2


@pytest.mark.parametrize(
    ("status", "type_", "expected"),
    [
        (409, "insufficient-funds", InsufficientFunds),
        (404, "account-not-found", AccountNotFound),
        (409, "https://eventledger.dev/problems/insufficient-funds", InsufficientFunds),
        (409, "wrong-expected-version", WrongExpectedVersion),
        (409, "some-new-conflict", Conflict),
        (422, "invalid-amount", ValidationError),
        (418, "teapot", ProblemError),
    ],
)
def test_problems_map_to_exceptions_by_type_then_by_status(
    status: int, type_: str, expected: type[ProblemError]
) -> None:
    ledger = client(lambda request: problem(status, type_, balance=3))
    with ledger, pytest.raises(ProblemError) as raised:
        ledger.withdraw("alice", 5)
    assert type(raised.value) is expected
    assert raised.value.status == status and raised.value.type == type_
    assert raised.value.problem["balance"] == 3
    assert str(raised.value) == f"{type_.replace('-', ' ').capitalize()}: detail of {type_}"


def test_an_error_that_is_not_a_problem_document_still_reads_as_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with client(handler) as ledger, pytest.raises(ProblemError) as raised:
        ledger.account("alice")
    assert str(raised.value) == "HTTP 502: <html>Bad gateway</html>"


def test_an_answer_without_a_promised_field_is_unexpected() -> None:
    ledger = client(lambda request: httpx.Response(201, json={"account_id": "a"}))
    with ledger, pytest.raises(UnexpectedResponse, match="transaction_id"):
        ledger.deposit("alice", 5)
    ledger = client(lambda request: httpx.Response(200, text="not json"))
    with ledger, pytest.raises(UnexpectedResponse, match="not JSON"):
        ledger.account("alice")


def test_reads_send_the_min_position_and_consistent_with_raises_the_floor() -> None:
    floors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        floors.append(request.headers.get("X-Min-Position"))
        return httpx.Response(200, json=ACCOUNT)

    with client(handler) as ledger:
        ledger.account("alice")
        ledger.account("alice", min_position=3)
        after = ledger.consistent_with(MoneyMoved("t", "alice", 1, 1, 7))
        account = after.account("alice")
        after.account("alice", min_position=9)
        after.account("alice", min_position=2)
        after.close()  # a view leaves the session to its parent
        ledger.account("alice")
    assert floors == [None, "3", "7", "9", "7", None]
    assert account.updated_at == datetime(2026, 11, 27, 11, 12, 30, 388898, tzinfo=UTC)


def test_the_token_is_the_one_given_else_eventledger_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json=ACCOUNT)

    with client(handler) as ledger:
        ledger.account("alice")
    monkeypatch.setenv("EVENTLEDGER_TOKEN", "from-the-environment-123")
    with client(handler) as ledger:
        ledger.account("alice")
    with client(handler, token="given-as-an-argument-456") as ledger:
        ledger.account("alice")
    assert seen == [
        None,
        "Bearer from-the-environment-123",
        "Bearer given-as-an-argument-456",
    ]
    assert "456" not in repr(ledger.config)


def test_path_segments_are_escaped() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(request.url.raw_path.decode())
        return httpx.Response(200, json=ACCOUNT)

    with client(handler) as ledger:
        ledger.account("a/b")
        ledger.account("..")
    assert urls == ["/accounts/a%2Fb", "/accounts/%2E%2E"]


def test_balance_at_takes_an_aware_datetime_only() -> None:
    params: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params.append(request.url.params["at"])
        body = {"account_id": "alice", "currency": "EUR", "balance": 5, "as_of_position": 3}
        return httpx.Response(200, json=body)

    with client(handler) as ledger:
        ledger.balance_at("alice", at=datetime(2026, 11, 27, 12, tzinfo=UTC))
        with pytest.raises(ValueError, match="timezone-aware"):
            ledger.balance_at("alice", at=datetime(2026, 11, 27, 12))
    assert params == ["2026-11-27T12:00:00.000000Z"]


def test_an_append_sends_event_ids_so_that_its_retry_is_written_once() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) == 1:
            raise httpx.ReadError("reset", request=request)
        answer = {"stream": "s-1", "first_version": 1, "last_version": 1, "positions": [4]}
        return httpx.Response(201, json=answer)

    with client(handler) as ledger:
        appended = ledger.append(
            "s-1", expected_version="no_stream", events=[NewEvent("Noted", {"n": 1})]
        )
    assert appended.position == 4 and bodies[0] == bodies[1]
    assert json.loads(bodies[0])["events"][0]["id"]


def sse(*positions: int) -> bytes:
    lines = [": connected\n\n"]
    for p in positions:
        envelope = {
            "id": f"00000000-0000-4000-8000-{p:012d}",
            "stream": "account-alice",
            "type": "MoneyDeposited",
            "schema_version": 1,
            "data": {"amount": p},
            "metadata": {},
            "stream_version": p,
            "position": p,
            "recorded_at": "2026-11-27T11:12:30.388898Z",
        }
        lines.append(f"id: {p}\nevent: MoneyDeposited\ndata: {json.dumps(envelope)}\n\n")
    return "".join(lines).encode()


def subscription_handler(afters: list[str]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        afters.append(request.url.params["after"])
        if len(afters) == 2:
            raise httpx.ConnectError("restarting", request=request)
        chunk = sse(1, 2) if len(afters) == 1 else sse(3)
        return httpx.Response(200, content=chunk, headers={"Content-Type": "text/event-stream"})

    return handler


def take(events: Iterator[int], count: int) -> list[int]:
    return [next(events) for _ in range(count)]


def test_a_subscription_resumes_after_the_last_event_when_the_connection_ends() -> None:
    afters: list[str] = []
    with client(subscription_handler(afters)) as ledger:
        stream = ledger.subscribe(after=0)
        assert take((e.position for e in stream), 3) == [1, 2, 3]
    assert afters == ["0", "2", "2"]


async def test_the_async_client_runs_the_same_calls_and_subscribes_the_same_way() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/events/subscribe":
            return subscription_handler(afters)(request)
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            return problem(503, "stream-unavailable", retry_after=0)
        return httpx.Response(201, json=MOVED)

    afters: list[str] = []
    transport = httpx.MockTransport(handler)
    async with AsyncClient(transport=transport) as ledger:
        moved = await ledger.deposit("alice", 500)
        view = ledger.consistent_with(moved)
        assert view.floor == 7 and view.config is ledger.config
        seen = []
        async for event in ledger.subscribe(after=0):
            seen.append(event.position)
            if len(seen) == 3:
                break
    assert moved.balance == 1500 and len(keys) == 2 and len(set(keys)) == 1
    assert seen == [1, 2, 3] and afters == ["0", "2", "2"]


def item(position: int) -> dict[str, object]:
    return {
        "transaction_id": f"t-{position}",
        "kind": "deposit",
        "amount": 1,
        "balance_after": position,
        "counterparty": None,
        "reference": None,
        "recorded_at": "2026-11-27T11:12:30.388898Z",
        "position": position,
    }


def envelope(version: int) -> dict[str, object]:
    return {
        "id": f"00000000-0000-4000-8000-{version:012d}",
        "stream": "s-1",
        "type": "Noted",
        "schema_version": 1,
        "data": {},
        "metadata": {},
        "stream_version": version,
        "position": version * 10,
        "recorded_at": "2026-11-27T11:12:30Z",
    }


def paging(request: httpx.Request) -> httpx.Response:
    """Three history items in pages of two; a stream of three versions and a log of three
    events, both in pages of two."""
    params = request.url.params
    if request.url.path.endswith("/transactions"):
        if "before" not in params:
            return httpx.Response(200, json={"items": [item(3), item(2)], "next": "c2"})
        assert params["before"] == "c2"
        return httpx.Response(200, json={"items": [item(1)], "next": None})
    if request.url.path.startswith("/streams/"):
        first = int(params["from_version"])
        events = [envelope(v) for v in range(first, min(first + 2, 4))]
        return httpx.Response(200, json={"stream": "s-1", "version": 3, "events": events})
    after = int(params["after"])
    events = [envelope(v) for v in range(after // 10 + 1, 4)][:2]
    last = events[-1]["position"] if events else 30
    return httpx.Response(200, json={"events": events, "last_position": last})


def test_the_iterators_follow_every_page_and_stop_at_the_end() -> None:
    with client(paging) as ledger:
        assert [i.position for i in ledger.iter_history("alice", page_size=2)] == [3, 2, 1]
        assert [e.stream_version for e in ledger.iter_stream("s-1")] == [1, 2, 3]
        assert [e.position for e in ledger.iter_log(after=0)] == [10, 20, 30]
        assert [e.position for e in ledger.iter_log(after=30)] == []


async def test_the_async_iterators_do_the_same() -> None:
    async with AsyncClient(transport=httpx.MockTransport(paging)) as ledger:
        assert [i.position async for i in ledger.iter_history("alice", page_size=2)] == [3, 2, 1]
        assert [e.stream_version async for e in ledger.iter_stream("s-1")] == [1, 2, 3]
        assert [e.position async for e in ledger.iter_log(after=0)] == [10, 20, 30]


def test_events_split_anywhere_across_chunks_are_read_whole() -> None:
    first = sse(1).replace(b'{"amount": 1}', '{"note": "€ – Ä"}'.encode())
    second = sse(2).replace(b"\n", b"\r\n")  # CRLF line ends too
    body = first + second
    chunks = [body[i : i + 1] for i in range(len(body))]  # cuts inside UTF-8 characters
    assert any(
        c.decode("utf-8", errors="replace") != c.decode("utf-8", errors="ignore") for c in chunks
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter(chunks))

    with client(handler) as ledger:
        events = ledger.subscribe(after=0)
        got = [next(events), next(events)]
        events.close()
    assert [(e.position, dict(e.data)) for e in got] == [
        (1, {"note": "€ – Ä"}),
        (2, {"amount": 2}),
    ]


def test_a_line_longer_than_the_bound_is_refused_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_SSE_EVENT_BYTES", 1000)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"data: " + b"x" * 600] * 3))

    with client(handler) as ledger, pytest.raises(UnexpectedResponse, match="longer than"):
        next(ledger.subscribe(after=0))
