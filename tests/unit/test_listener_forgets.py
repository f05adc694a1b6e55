"""What the PostgreSQL listener hears of forgets and barriers (postgres_listener.py): a forget
names its event and account (whatever the account id holds), other schemas' notices are
ignored, and a barrier is true only once its own NOTIFY is heard back, shared by the callers
that arrived before it was sent."""

from __future__ import annotations

import asyncio

from eventledger.eventstore.postgres_listener import HeadWatch, _hear, forget_notice


def test_a_forget_notice_names_its_event_and_account_and_no_head() -> None:
    heard: list[tuple[str, str]] = []
    watch = HeadWatch(on_forget=lambda e, a: heard.append((e, a)))
    for account in ("acc-1", "42", "a:b:c"):
        _hear(forget_notice("ledger", "ev-1", account), "ledger", watch)
    _hear(forget_notice("other", "ev-2", "acc-1"), "ledger", watch)  # another schema's
    _hear("ledger:17", "ledger", watch)
    assert heard == [("ev-1", "acc-1"), ("ev-1", "42"), ("ev-1", "a:b:c")]
    assert watch.head == 17  # a numeric account id was never taken for a head


async def test_a_barrier_is_true_once_its_own_notify_is_heard_and_shared() -> None:
    watch = HeadWatch()
    assert await watch.barrier(_never_sent, 0.1) is False  # not listening: cannot tell
    watch.connected = True
    sent: list[str] = []

    async def send(token: str) -> None:
        sent.append(token)
        await asyncio.sleep(0)
        _hear(f"ledger:sync:{watch.instance}:999", "ledger", watch)  # not ours: ignored
        _hear(f"ledger:sync:{token}", "ledger", watch)

    first = asyncio.create_task(watch.barrier(send, 1.0))
    second = asyncio.create_task(watch.barrier(send, 1.0))  # before the NOTIFY went out
    assert await first and await second and len(sent) == 1
    assert await watch.barrier(send, 1.0) and len(sent) == 2  # a later caller: a new one


async def test_a_barrier_that_fails_or_is_not_heard_is_false() -> None:
    watch = HeadWatch()
    watch.connected = True

    async def fails(token: str) -> None:
        raise OSError("no connection")

    async def lost(token: str) -> None:
        return None

    assert await watch.barrier(fails, 1.0) is False
    assert await watch.barrier(lost, 0.05) is False
    pending = asyncio.create_task(watch.barrier(lost, 5.0))
    await asyncio.sleep(0.01)
    watch.disconnected()  # the listener's connection is gone: nobody will hear it
    assert await pending is False


async def _never_sent(token: str) -> None:
    raise AssertionError("a barrier is not sent while not listening")
