"""The ordering guarantee on PostgreSQL: a reader following `position > last` never skips an
event, whatever the number of writers, connections and processes.

First a deterministic reproduction of the hazard it prevents: with positions from a sequence
(an identity column), an append that took position 1 and commits late is skipped by a
follower that has already seen position 2. With the store's counter row, the append that
would take position 2 waits for the one holding position 1, so the follower sees 1, then 2.
Then the guarantee under load: 16 writers in two processes, deliberate rollbacks, three
followers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import RecordedEvent
from tests.integration import pg_writer
from tests.integration.pg_tools import InsertHold, execute, fetch, wait_until, waiting_on
from tests.integration.store_contract import ANY, new_event, new_stream


class SequenceLog:
    """The naive control: the usual `bigserial`/identity position, no counter row."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.table = sql.Identifier(schema, "naive_events")

    async def install(self) -> None:
        await execute(
            self.url,
            sql.SQL(
                "CREATE TABLE {} (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " stream text NOT NULL)"
            ).format(self.table),
        )

    async def append(self, stream: str, *, application_name: str) -> int:
        conn = await psycopg.AsyncConnection.connect(self.url, application_name=application_name)
        async with conn, conn.transaction():
            cur = await conn.execute(
                sql.SQL("INSERT INTO {} (stream) VALUES (%s) RETURNING position").format(
                    self.table
                ),
                [stream],
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    async def read_after(self, last: int) -> list[int]:
        rows = await fetch(
            self.url,
            sql.SQL("SELECT position FROM {} WHERE position > %s ORDER BY position").format(
                self.table
            ),
            [last],
        )
        return [int(r[0]) for r in rows]


async def test_with_a_sequence_a_follower_skips_an_append_that_commits_late(
    postgres_url: str, pg_schema: str
) -> None:
    await (await PostgresEventStore.open(postgres_url, schema=pg_schema)).close()
    log = SequenceLog(postgres_url, pg_schema)
    await log.install()
    hold = InsertHold(postgres_url, pg_schema, table="naive_events")
    await hold.install()
    await hold.hold()
    try:
        late = asyncio.create_task(log.append("held-1", application_name="naive-late"))
        # It has taken position 1 (the identity default) and hangs in its BEFORE INSERT trigger.
        await wait_until(lambda: waiting_on(postgres_url, "naive-late", "advisory"))
        assert await log.append("free-1", application_name="naive-early") == 2
        seen = await log.read_after(0)  # the follower
        assert seen == [2]
        await hold.release()
        assert await asyncio.wait_for(late, 5) == 1
        seen += await log.read_after(seen[-1])
    finally:
        await hold.release()
    assert seen == [2], "the follower never sees position 1"
    assert await log.read_after(0) == [1, 2], "although it is committed"


async def test_with_the_counter_a_later_append_waits_and_the_follower_skips_nothing(
    postgres_url: str, pg_schema: str
) -> None:
    def open_store(name: str) -> Any:
        return PostgresEventStore.open(
            postgres_url, schema=pg_schema, application_name=name, lock_timeout="20s"
        )

    late_writer, early_writer, reader = await asyncio.gather(
        open_store("ours-late"), open_store("ours-early"), open_store("ours-reader")
    )
    hold = InsertHold(postgres_url, pg_schema)
    await hold.install()
    seen: list[RecordedEvent] = []

    async def follow() -> None:
        last = 0
        while len(seen) < 2:
            for event in await reader.read_all(after=last):
                assert event.position == last + 1, f"skipped from {last} to {event.position}"
                seen.append(event)
                last = event.position
            await reader.wait_for_events(last, 1.0)

    following = asyncio.create_task(follow())
    await hold.hold()
    try:
        late_event, early_event = new_event(), new_event()
        late = asyncio.create_task(
            late_writer.append(new_stream("held"), expected_version=ANY, events=[late_event])
        )
        # It has taken position 1 (the counter row) and hangs in its BEFORE INSERT trigger.
        await wait_until(lambda: waiting_on(postgres_url, "ours-late", "advisory"))
        early = asyncio.create_task(
            early_writer.append(new_stream("free"), expected_version=ANY, events=[early_event])
        )
        # The later append does not overtake: it waits for the counter row.
        await wait_until(lambda: waiting_on(postgres_url, "ours-early"))
        assert await reader.read_all(after=0) == []
        assert not early.done() and not following.done()
        await hold.release()
        late_result, early_result = await asyncio.wait_for(asyncio.gather(late, early), 5)
        await asyncio.wait_for(following, 5)
    finally:
        await hold.release()
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await asyncio.gather(late_writer.close(), early_writer.close(), reader.close())
    assert (late_result.positions, early_result.positions) == ((1,), (2,))
    assert [(e.position, e.id) for e in seen] == [(1, late_event.id), (2, early_event.id)]


# -- many writers, several processes -------------------------------------------------------

PROCESSES = 2
WRITERS_PER_PROCESS = 8
OPERATIONS = 100
FOLLOWERS = 3


async def follow(
    store: PostgresEventStore, limit: int, seen: list[tuple[int, UUID]], done: asyncio.Event
) -> None:
    """Follow the log as a subscriber does: wait, read a page after the last position seen."""
    last = 0
    while True:
        finished = done.is_set()  # read before the page: a page read after it is the final one
        page = await store.read_all(after=last, limit=limit)
        for event in page:
            assert event.position > last, f"position {event.position} after {last}"
            seen.append((event.position, event.id))
            last = event.position
        if not page:
            if finished:
                return
            await store.wait_for_events(last, 1.0)


async def test_sixteen_writers_in_two_processes_and_three_followers_agree_on_one_gapless_order(
    postgres_url: str, pg_schema: str
) -> None:
    followers = [
        await PostgresEventStore.open(postgres_url, schema=pg_schema, max_size=2)
        for _ in range(FOLLOWERS)
    ]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            pg_writer.__file__,
            postgres_url,
            pg_schema,
            str(p),
            str(WRITERS_PER_PROCESS),
            str(OPERATIONS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for p in range(PROCESSES)
    ]
    done = asyncio.Event()
    seen: list[list[tuple[int, UUID]]] = [[] for _ in followers]
    following = [
        asyncio.create_task(follow(store, limit, log, done))
        for store, limit, log in zip(followers, (7, 100, 1000), seen, strict=True)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
        outputs = await asyncio.wait_for(
            asyncio.gather(*(child.communicate(b"go\n") for child in children)), 60
        )
        for child, (_, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err.decode()
        done.set()
        await asyncio.wait_for(asyncio.gather(*following), 30)
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.communicate()
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
        await asyncio.gather(*(store.close() for store in followers))

    reports = [json.loads(out.decode().splitlines()[-1]) for out, _ in outputs]
    rows = await fetch(
        postgres_url,
        sql.SQL(
            "SELECT position, id, stream, stream_version FROM {}.events ORDER BY position"
        ).format(sql.Identifier(pg_schema)),
    )
    committed = [(int(r[0]), r[1]) for r in rows]
    assert [p for p, _ in committed] == list(range(1, len(committed) + 1)), "positions have gaps"
    for log in seen:
        assert log == committed, "a follower missed, repeated or reordered an event"

    acked = {
        UUID(event_id): (position, stream, version)
        for report in reports
        for event_id, position, stream, version in report["acked"]
    }
    assert acked == {r[1]: (r[0], r[2], r[3]) for r in rows}, "stored is exactly what was acked"
    failed = {UUID(i) for report in reports for i in report["failed"]}
    assert failed and not failed & set(acked), "a refused append left something behind"
    assert all(report["refused"] > 0 for report in reports)

    versions: dict[str, list[int]] = defaultdict(list)
    for _, _, stream, version in rows:
        versions[stream].append(version)
    for stream, in_log_order in versions.items():
        assert in_log_order == list(range(1, len(in_log_order) + 1)), stream

    appends = sum(report["appends"] for report in reports)
    commits = sum(report["commits"] for report in reports)
    assert commits < appends, "concurrent appends share commits"
    print(
        f"{len(rows)} events from {appends} appends in {commits} commits;"
        f" {sum(r['refused'] for r in reports)} refused on purpose,"
        f" {sum(r['conflicts'] for r in reports)} version races lost"
    )
