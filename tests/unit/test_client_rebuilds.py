"""Blue/green rebuilds through the typed client, against `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from eventledger.client import (
    AsyncClient,
    BlueGreenBuild,
    Client,
    NotRebuilding,
    RebuildInProgress,
    RebuildStatus,
    TransportError,
    UnexpectedResponse,
    core,
)

BUILD = {
    "version": 3,
    "from_version": 2,
    "state": "building",
    "position": 120,
    "head": 500,
    "started_at": "2026-12-03T12:00:00.000000Z",
    "updated_at": "2026-12-03T12:00:01.500000Z",
    "finished_at": None,
    "error": None,
    "requested_by": "ops",
    "live_version": 2,
    "builder": True,
}


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "BACKOFF", (0.0,))
    monkeypatch.delenv("EVENTLEDGER_TOKEN", raising=False)


def answer(status: int, body: object) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def test_a_blue_green_rebuild_is_asked_for_with_its_mode_and_read_back() -> None:
    transport = answer(202, {"blue_green": BUILD, "live_version": 2})
    with Client(transport=transport) as ledger:
        status = ledger.rebuild_blue_green("accounting")
    request = transport.seen[0]  # type: ignore[attr-defined]
    assert (request.method, str(request.url)) == ("POST", "http://127.0.0.1:8003/admin/rebuild")
    assert json.loads(request.content) == {"mode": "blue-green"}
    assert status.live_version == 2 and status.build is not None
    build = status.build
    assert (build.version, build.from_version, build.state) == (3, 2, "building")
    assert build.active
    assert (build.position, build.head, build.requested_by) == (120, 500, "ops")
    assert build.started_at == datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert build.finished_at is None and build.error is None


def test_status_without_any_build_is_none_and_a_failed_build_carries_its_error() -> None:
    with Client(transport=answer(200, {"blue_green": None, "live_version": 1})) as ledger:
        assert ledger.rebuild_status("statistics") == RebuildStatus(None, 1)
    failed = {
        **BUILD,
        "state": "failed",
        "error": "halted at position 7",
        "finished_at": "2026-12-03T12:00:02Z",
    }
    transport = answer(200, {"blue_green": failed, "live_version": 2})
    with Client(transport=transport) as ledger:
        build = ledger.rebuild_status("statistics").build
    assert isinstance(build, BlueGreenBuild)
    assert (build.state, build.active, build.error) == ("failed", False, "halted at position 7")
    assert build.finished_at == datetime(2026, 12, 3, 12, 0, 2, tzinfo=UTC)


def test_an_unknown_state_is_an_unexpected_response_not_a_guess() -> None:
    body = {"blue_green": {**BUILD, "state": "paused"}, "live_version": 2}
    with Client(transport=answer(200, body)) as ledger, pytest.raises(UnexpectedResponse):
        ledger.rebuild_status("accounting")


@pytest.mark.parametrize(
    ("call", "type_", "error"),
    [
        ("rebuild_blue_green", "rebuild-in-progress", RebuildInProgress),
        ("cancel_rebuild", "not-rebuilding", NotRebuilding),
    ],
)
def test_conflicts_are_raised_as_their_own_errors(
    call: str, type_: str, error: type[Exception]
) -> None:
    problem = {"type": type_, "title": "Conflict", "status": 409, "detail": "no"}
    with Client(transport=answer(409, problem)) as ledger, pytest.raises(error):
        getattr(ledger, call)("accounting")


@pytest.mark.parametrize("call", ["rebuild_blue_green", "cancel_rebuild"])
def test_starting_or_cancelling_is_not_sent_again_after_it_may_have_arrived(call: str) -> None:
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ReadError("reset", request=request)

    transport = httpx.MockTransport(handler)
    with Client(transport=transport) as ledger, pytest.raises(TransportError) as lost:
        getattr(ledger, call)("accounting")
    assert tries == 1 and "lost the connection" in str(lost.value)


def test_the_async_client_cancels_with_delete() -> None:
    done = {**BUILD, "state": "failed", "error": "cancelled by ops"}
    transport = answer(200, {"blue_green": done, "live_version": 2})

    async def cancel() -> RebuildStatus:
        async with AsyncClient(transport=transport) as ledger:
            return await ledger.cancel_rebuild("accounting")

    status = asyncio.run(cancel())
    request = transport.seen[0]  # type: ignore[attr-defined]
    assert (request.method, request.headers["content-type"]) == ("DELETE", "application/json")
    assert status.build is not None and status.build.error == "cancelled by ops"
