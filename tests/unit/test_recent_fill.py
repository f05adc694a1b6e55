"""The recent log as a tail shared by two sources (eventstore/recent.py): this instance's
commits (`add`) and the rows another instance committed, read back once (`fill`). Whatever it
serves is a run of consecutive positions; a commit of ours past a gap waits aside until a fill
brings what is between; what cannot be joined exactly is left to a read of the store."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from eventledger.eventstore import pii
from eventledger.eventstore.planning import Row
from eventledger.eventstore.recent import Filled, RecentLog, RecentPage
from eventledger.eventstore.upcasting import UpcasterRegistry

WHEN = "2026-12-03T10:00:00.000000Z"
BIG = 1 << 20


def row(
    position: int,
    stream: str = "notes-a",
    version: int | None = None,
    data: dict[str, Any] | None = None,
    *,
    type_: str = "Noted",
    key: pii.AccountKey | None = None,
    filled: bool = False,
) -> Row:
    event_id = uuid.uuid4()
    stored = dict(data if data is not None else {"n": position})
    for field in pii.FIELDS:
        value = stored.get(field)
        if key is not None and isinstance(value, str):
            stored[field] = pii.seal(key, value, event_id=event_id, field=field)
    text = json.dumps(stored, separators=(",", ":"))
    kind = Filled if filled else Row
    return kind(
        position, str(event_id), stream, version or position, type_, 1, text, "{}", WHEN,
        "a" * 64, position, event_id,
    )  # fmt: skip


def theirs(r: Row) -> Filled:
    """The same committed row as another instance's fill reads it back."""
    return Filled(*r)


def positions(page: RecentPage | None) -> list[int]:
    assert page is not None
    return [e.position for e in page.events]


@pytest.fixture
def log() -> RecentLog:
    return RecentLog(UpcasterRegistry(), fills=True)


def test_a_commit_past_a_gap_waits_aside_and_joins_when_a_fill_brings_the_gap(
    log: RecentLog,
) -> None:
    log.add([row(1)])
    log.add([row(4), row(5)])  # another instance committed 2 and 3 in between
    assert log.end == 1
    assert positions(log.page(0, limit=10, max_bytes=BIG)) == [1]
    assert log.page(1, limit=10, max_bytes=BIG) is None  # past the run: read the store
    assert log.page(3, limit=10, max_bytes=BIG) is None  # nothing served past a gap
    log.fill(1, [row(2, filled=True), row(3, filled=True), row(4, filled=True)])
    assert log.end == 5
    assert positions(log.page(0, limit=10, max_bytes=BIG)) == [1, 2, 3, 4, 5]


def test_a_row_of_ours_is_taken_instead_of_its_copy_read_back(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1)])
    ours = row(3, "account-alice", 1, {"account_id": "alice", "reference": "rent"}, key=key)
    log.add([ours])
    log.fill(1, [row(2, filled=True), theirs(ours)])
    page = log.page(2, limit=10, max_bytes=BIG)  # opened with our key: it is ours
    assert page is not None and page.sealed
    assert json.loads(page.events[0].text)["data"]["reference"] == "rent"


def test_a_store_that_cannot_fill_starts_the_run_over_at_a_gap_as_before() -> None:
    log = RecentLog(UpcasterRegistry())
    log.add([row(1)])
    log.add([row(3)])
    assert log.page(0, limit=10, max_bytes=BIG) is None
    assert positions(log.page(2, limit=10, max_bytes=BIG)) == [3]


def test_a_fill_extends_the_run_skipping_what_it_holds_and_nothing_that_does_not_follow(
    log: RecentLog,
) -> None:
    log.add([row(1), row(2)])
    log.fill(1, [row(2, filled=True), row(3, filled=True)])  # 2 is held already
    assert positions(log.page(0, limit=10, max_bytes=BIG)) == [1, 2, 3]
    log.fill(4, [row(6, filled=True)])  # not the rows after 4: never added
    log.fill(3, [row(4, filled=True), row(6, filled=True)])  # 6 does not follow 4
    assert log.end == 4
    log.fill(0, [row(1, filled=True)])  # behind the run's end: nothing new
    assert log.end == 4


def test_a_fill_after_the_runs_end_starts_the_run_there(log: RecentLog) -> None:
    log.add([row(1)])
    log.add([row(3)])  # aside: 2 is someone else's
    log.fill(5, [row(6, filled=True), row(7, filled=True)])
    assert log.page(0, limit=10, max_bytes=BIG) is None
    assert positions(log.page(5, limit=10, max_bytes=BIG)) == [6, 7]
    log.add([row(8)])  # ours follows on
    assert positions(log.page(5, limit=10, max_bytes=BIG)) == [6, 7, 8]


def test_where_a_fill_starts(log: RecentLog) -> None:
    assert log.fill_start(None, 10, 100) is None  # nothing held: the guard cannot say where
    assert log.fill_start(4, 10, 100) == 4  # a reader at 4: the run starts there
    assert log.fill_start(4, 200, 100) is None  # far behind the head: read the store
    log.add([row(n) for n in range(5, 11)])
    assert log.fill_start(7, 10, 100) is None  # the run reaches the head
    assert log.fill_start(7, 12, 100) == 10  # from the run's end
    assert log.fill_start(None, None, 100) == 10  # the guard: whatever follows
    assert log.fill_start(2, 12, 100) is None  # behind the run: read the store
    assert log.fill_start(50, 60, 100) == 10  # ahead of it, one fill reaches the head
    assert log.fill_start(500, 560, 100) == 500  # far ahead: start over at the reader


def test_rows_kept_aside_and_the_run_are_bounded() -> None:
    log = RecentLog(UpcasterRegistry(), max_events=8, fills=True)
    log.add([row(1)])
    for n in range(3, 40, 2):  # every other position is another instance's
        log.add([row(n)])
    # At most a quarter aside; past it, the oldest started the run over (a read for the rest).
    assert len(log._aside) <= 2 and len(log._rows) <= 8
    log.fill(36, [row(37, filled=True), row(38, filled=True), row(39, filled=True)])
    assert log.end <= 39
    log.fill(log.end, [row(n, filled=True) for n in range(log.end + 1, 60)])
    assert len(log._rows) == 8 and log.end == 59
    assert positions(log.page(51, limit=100, max_bytes=BIG)) == list(range(52, 60))
    assert log._streams == {"notes-a": list(range(52, 60))}


def test_another_instances_personal_data_is_never_opened_from_memory(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})  # the account's key, as ours sealed under it
    data = {"account_id": "alice", "reference": "theirs"}
    log.fill(0, [row(1, "account-alice", 1, data, key=key, filled=True)])
    assert log.page(0, limit=10, max_bytes=BIG) is None  # only a read opens it
    assert log.stream_events("account-alice", 0) is None


def test_another_instances_forget_read_back_is_applied_at_its_position(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1, "account-alice", 1, {"account_id": "alice", "reference": "a"}, key=key)])
    assert log.page(0, limit=10, max_bytes=BIG) is not None
    erased = row(2, "account-alice", 2, {"account_id": "alice"}, type_="PersonalDataErased")
    log.fill(1, [theirs(erased)])
    assert log.page(0, limit=10, max_bytes=BIG) is None  # no longer opened from memory
    new = pii.new_key()  # sealed after the forget, under a new key: opened
    log.remember_keys({"alice": new})
    log.add([row(3, "account-alice", 3, {"account_id": "alice", "reference": "b"}, key=new)])
    assert positions(log.page(2, limit=10, max_bytes=BIG)) == [3]


def test_a_forget_heard_covers_the_rows_kept_aside(log: RecentLog) -> None:
    key = pii.new_key()
    log.remember_keys({"alice": key})
    log.add([row(1)])
    log.add([row(3, "account-alice", 1, {"account_id": "alice", "reference": "a"}, key=key)])
    log.forget_account("alice", "their-forget")  # committed before 3 was joined
    log.remember_keys({"alice": key})  # (stale)
    log.fill(1, [row(2, filled=True)])
    assert log.page(2, limit=10, max_bytes=BIG) is None


def test_a_filled_row_is_served_as_the_same_row_of_ours_would_be(log: RecentLog) -> None:
    ours, copy = RecentLog(UpcasterRegistry()), RecentLog(UpcasterRegistry(), fills=True)
    r = row(1, "notes-x", 1, {"nested": {"a": [1, None, "t\n"]}, "b": True})
    ours.add([r])
    copy.fill(0, [theirs(r)])
    assert ours.page(0, limit=10, max_bytes=BIG) == copy.page(0, limit=10, max_bytes=BIG)


def test_a_filled_row_without_hash_or_batch_end_is_left_to_a_read(log: RecentLog) -> None:
    log.fill(0, [theirs(row(1))._replace(hash="")])
    assert log.page(0, limit=10, max_bytes=BIG) is None
    log.clear()
    log.fill(0, [theirs(row(1))._replace(batch_end=0)])
    assert log.page(0, limit=10, max_bytes=BIG) is None


def test_an_accounts_newest_events_are_found_in_the_run(log: RecentLog) -> None:
    stream = "account-a"
    log.add([row(1, stream, 1, {"account_id": "a"}), row(2, "notes-b")])
    log.fill(2, [row(3, stream, 2, {"account_id": "a", "amount": 5}, filled=True)])
    log.fill(3, [row(4, "notes-b", 2, filled=True), row(5, stream, 3, filled=True)])
    held = log.stream_events(stream, 1)
    assert held is not None
    assert [(r.stream_version, data) for r, data in held] == [
        (2, {"account_id": "a", "amount": 5}),
        (3, {"n": 5}),
    ]
    assert log.stream_events(stream, 3) == []  # nothing newer up to the run's end
    assert log.stream_events("account-z", 0) is None  # not in the run: a read says
    log.fill(5, [row(n, "notes-b", n, filled=True) for n in range(6, 4098)])  # 1 drops out
    assert log.stream_events(stream, 0) is None  # version 1 is before the run now
    held = log.stream_events(stream, 1)
    assert held is not None and [r.stream_version for r, _ in held] == [2, 3]


def test_an_accounts_events_that_may_read_otherwise_are_left_to_a_read(log: RecentLog) -> None:
    upcasters = UpcasterRegistry()
    upcasters.register("Old", 1, dict)
    log = RecentLog(upcasters, fills=True)
    log.add([row(1, "account-a", 1, {"account_id": "a"}), row(2, "account-a", 2, type_="Old")])
    assert log.stream_events("account-a", 1) is None
    log.add([row(3, "account-b", 1, {"amount": 1.5})])
    assert log.stream_events("account-b", 0) is None  # a float: its spelling may read otherwise
