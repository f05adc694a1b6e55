"""The recent log's personal data (eventstore/recent.py): sealed rows are served opened with the
key they were sealed under, and never again once their account is forgotten, whoever forgot
it, even when the forget is heard while a page is being made."""

from __future__ import annotations

import json
import uuid

import pytest

from eventledger.eventstore import pii
from eventledger.eventstore.planning import Row
from eventledger.eventstore.recent import RecentLog, RecentPage
from eventledger.eventstore.upcasting import UpcasterRegistry

WHEN = "2026-12-03T10:00:00.000000Z"


def row(position: int, account: str, data: dict[str, object], key: pii.AccountKey | None) -> Row:
    event_id = uuid.uuid4()
    stored = dict(data)
    for field in pii.FIELDS:
        value = stored.get(field)
        if key is not None and isinstance(value, str):
            stored[field] = pii.seal(key, value, event_id=event_id, field=field)
    type_ = "PersonalDataErased" if data.get("erased") else "MoneyDeposited"
    if type_ == "PersonalDataErased":
        stored = {"account_id": account}
    text = json.dumps(stored, separators=(",", ":"))
    return Row(
        position, str(event_id), f"account-{account}", position, type_, 1, text, "{}",
        WHEN, "0" * 64, position, event_id,
    )  # fmt: skip


def references(page: RecentPage | None) -> list[object]:
    assert page is not None
    return [json.loads(e.text)["data"].get("reference") for e in page.events]


@pytest.fixture
def log() -> RecentLog:
    return RecentLog(UpcasterRegistry())


def test_a_sealed_row_is_served_opened_with_its_key_and_marked(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1, "alice", {"account_id": "alice", "reference": "rent Ø"}, key)])
    page = log.page(0, limit=10, max_bytes=1 << 20)
    assert references(page) == ["rent Ø"] and page is not None and page.sealed


def test_without_the_key_or_under_another_key_only_a_read_can_say(log: RecentLog) -> None:
    key = pii.new_key()
    log.add([row(1, "alice", {"account_id": "alice", "reference": "rent"}, key)])
    assert log.page(0, limit=10, max_bytes=1 << 20) is None
    log.remember_keys({"alice": pii.new_key()})  # another key of the same account
    assert log.page(0, limit=10, max_bytes=1 << 20) is None


def test_a_forget_committed_here_or_heard_drops_only_that_accounts_rows(log: RecentLog) -> None:
    alice, bob = pii.new_key(), pii.new_key()
    log.remember_keys({"alice": alice, "bob": bob})
    log.add([row(1, "alice", {"account_id": "alice", "reference": "a"}, alice)])
    log.add([row(2, "bob", {"account_id": "bob", "reference": "b"}, bob)])
    assert references(log.page(0, limit=10, max_bytes=1 << 20)) == ["a", "b"]
    log.add([row(3, "alice", {"erased": True}, None)])  # this instance's forget
    assert log.page(0, limit=10, max_bytes=1 << 20) is None  # alice's row: read the store
    assert references(log.page(1, limit=10, max_bytes=1 << 20))[:1] == ["b"]
    log.remember_keys({"alice": alice})  # a stale key remembered again opens nothing
    assert log.page(0, limit=10, max_bytes=1 << 20) is None
    log.forget_account("bob", "some-other-instance's-event")  # heard from another instance
    assert log.page(1, limit=10, max_bytes=1 << 20) is None
    # Sealed after the forget, under a new key: opened again.
    new = pii.new_key()
    log.remember_keys({"alice": new})
    log.add([row(4, "alice", {"account_id": "alice", "reference": "later"}, new)])
    assert references(log.page(3, limit=10, max_bytes=1 << 20)) == ["later"]


def test_a_forget_heard_while_a_page_is_made_is_never_outlived(
    log: RecentLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1, "alice", {"account_id": "alice", "reference": "secret"}, key)])
    opened = log._opened_data

    def open_then_hear_a_forget(r: Row, account: str) -> str | None:
        text = opened(r, account)
        log.forget_account("alice")  # e.g. the listener, between the open and the keep
        return text

    monkeypatch.setattr(log, "_opened_data", open_then_hear_a_forget)
    assert log.page(0, limit=10, max_bytes=1 << 20) is None  # not served
    monkeypatch.undo()
    assert log.page(0, limit=10, max_bytes=1 << 20) is None  # and not kept


def test_forget_all_leaves_only_rows_added_afterwards_openable(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1, "alice", {"account_id": "alice", "reference": "before"}, key)])
    assert log.page(0, limit=10, max_bytes=1 << 20) is not None
    log.forget_all()
    assert log.page(0, limit=10, max_bytes=1 << 20) is None
    log.remember_keys({"alice": key})
    log.add([row(2, "alice", {"account_id": "alice", "reference": "after"}, key)])
    assert references(log.page(1, limit=10, max_bytes=1 << 20)) == ["after"]


def test_a_row_committed_before_a_forget_was_heard_but_added_after_is_not_opened(
    log: RecentLog,
) -> None:
    # PostgreSQL: our COMMIT of position 1 was sent, another instance's forget committed
    # after it and was heard before our writer added the row: the floor is the head sent.
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.forget_account("alice", "their-forget", floor=1)
    log.remember_keys({"alice": key})  # (stale: deleted by that forget)
    log.add([row(1, "alice", {"account_id": "alice", "reference": "gone"}, key)])
    assert log.page(0, limit=10, max_bytes=1 << 20) is None
