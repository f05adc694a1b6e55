"""A read model's lag in seconds: how long it has been behind the stream service's head."""

from __future__ import annotations

import time

import pytest

from eventledger.services.readside.status import RunnerStatus


@pytest.fixture
def status() -> RunnerStatus:
    return RunnerStatus("accounting", probe_interval=1.0)


def test_lag_in_seconds_is_unknown_while_the_head_is(status: RunnerStatus) -> None:
    assert status.lag is None and status.lag_seconds is None


async def test_lag_in_seconds_is_zero_caught_up_and_grows_from_the_last_moment_caught_up(
    status: RunnerStatus,
) -> None:
    status._polled_head = 10
    await status._set_position(10)
    assert status.lag_seconds == 0.0
    caught_up = time.monotonic()
    status._polled_head = 25  # new events the read model has not applied yet
    behind = status.lag_seconds
    assert behind is not None and 0.0 <= behind <= time.monotonic() - caught_up + 0.001
    status._caught_up_at -= 30.0  # as if it had been behind for half a minute
    later = status.lag_seconds
    assert later is not None and later >= 30.0
    await status._set_position(20)  # progress, still behind: the clock keeps running
    still = status.lag_seconds
    assert still is not None and still >= 30.0
    assert status.health("accounting")["lag_seconds"] == pytest.approx(still, abs=0.5)
    await status._set_position(25)
    assert status.lag_seconds == 0.0 and status.health("accounting")["lag_seconds"] == 0.0
