"""A separate process with its own PostgresEventStore, for the multi-process ordering test.

    python pg_writer.py URL SCHEMA PROCESS WRITERS OPERATIONS

opens the store, prints "ready", waits for a line on stdin (the start signal, so that every
process starts at once), then runs WRITERS concurrent tasks of OPERATIONS appends each, some of
them failing on purpose, and prints one JSON line: what was acknowledged and what failed.

Each task owns one stream (`w<PROCESS>-<task>`) and also writes to three streams shared by
every task of every process (`hot-0..2`, expected version "any") and races for versions of
one contended stream (`race`, exact expected version read just before):

    kind 0-2  one event to its own stream, exact expected version        -> written
    kind 3    two or three events to its own stream                      -> written
    kind 4    its own stream with a wrong expected version               -> WrongExpectedVersion
    kind 5    a batch: its own stream + a hot stream                     -> written
    kind 6    a batch: a hot stream + its own stream at a wrong version  -> nothing written
    kind 7    one event to `race` at the version just read               -> written or conflict
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from uuid import uuid4

from eventledger.eventstore.errors import WrongExpectedVersion
from eventledger.eventstore.postgres import PostgresEventStore
from eventledger.eventstore.records import AppendResult, NewEvent, StreamAppend, StreamState


def events(count: int, **data: Any) -> list[NewEvent]:
    return [NewEvent(uuid4(), "Written", {**data, "i": i}) for i in range(count)]


async def task(
    store: PostgresEventStore, process: int, number: int, operations: int, report: dict[str, Any]
) -> None:
    own = f"w{process}-{number}"
    version = 0
    for op in range(operations):
        kind = (op + number) % 8
        hot = f"hot-{(op + number) % 3}"
        appends: list[StreamAppend]
        if kind <= 3:
            appends = [StreamAppend(own, version, events(1 if kind < 3 else 2 + op % 2, op=op))]
        elif kind == 4:
            appends = [StreamAppend(own, version + 2, events(1, op=op))]
        elif kind == 5:
            appends = [
                StreamAppend(own, version, events(1, op=op)),
                StreamAppend(hot, StreamState.ANY, events(1, op=op)),
            ]
        elif kind == 6:
            appends = [
                StreamAppend(hot, StreamState.ANY, events(2, op=op)),
                StreamAppend(own, version + 2, events(1, op=op)),
            ]
        else:
            current = await store.stream_version("race")
            appends = [StreamAppend("race", current, events(1, op=op))]
        try:
            results: list[AppendResult] = await store.append_batch(appends)
        except WrongExpectedVersion:
            report["failed"].extend(str(e.id) for a in appends for e in a.events)
            report["conflicts" if kind == 7 else "refused"] += 1
            continue
        assert kind not in (4, 6), "a deliberately wrong expected version was accepted"
        for append, result in zip(appends, results, strict=True):
            assert not result.replayed
            for event, position, stream_version in zip(
                append.events,
                result.positions,
                range(result.first_version, result.last_version + 1),
                strict=True,
            ):
                report["acked"].append([str(event.id), position, append.stream, stream_version])
            if append.stream == own:
                version = result.last_version
        report["appends"] += 1


async def main(url: str, schema: str, process: str, writers: str, operations: str) -> None:
    store = await PostgresEventStore.open(url, schema=schema, max_size=4, lock_timeout="20s")
    report: dict[str, Any] = {"acked": [], "failed": [], "refused": 0, "conflicts": 0}
    report["appends"] = 0
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(
            *(task(store, int(process), n, int(operations), report) for n in range(int(writers)))
        )
        report["commits"] = store.commits
    finally:
        await store.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
