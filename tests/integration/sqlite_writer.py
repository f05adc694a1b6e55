"""A separate process that appends to a SQLite event store file, for the multi-process tests.

    python sqlite_writer.py PATH race STREAM COUNT
        appends COUNT events to STREAM, each with the version it has just read as expected
        version, retrying on conflict. Prints "ready" once the store is open, then
        "won VERSION EVENT_ID" for each append that won, then "done".
    python sqlite_writer.py PATH one STREAM
        appends one event to STREAM and prints "appended POSITION".
    python sqlite_writer.py PATH load PREFIX
        16 concurrent tasks append batches of 2-3 events over 2 of the streams PREFIX0..PREFIX5
        until the process is killed (or a minute has passed). Right after each append returns
        it prints "ack BATCH_ID EVENT_ID:POSITION ...". Every event's metadata names its batch
        and the batch's size, so a reader can check that no batch was half written.

Every line is flushed as it is printed: a printed line is an acknowledged append.
The tests start it with `start_writer` and read it with `read_line`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path
from uuid import uuid4

from eventledger.eventstore.errors import WrongExpectedVersion
from eventledger.eventstore.records import NewEvent, StreamAppend, StreamState
from eventledger.eventstore.sqlite import SqliteEventStore

LOAD_STREAMS = 6
LOAD_TASKS = 16
LOAD_SECONDS = 60  # an orphaned writer stops by itself


async def start_writer(path: Path, *args: str) -> asyncio.subprocess.Process:
    """Start this module as a child process with its stdout piped to the caller."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        str(path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(process: asyncio.subprocess.Process, within: float = 30) -> str:
    """The child's next line; "" at its end. Fails the test if nothing comes in time."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), within)
    return line.decode().strip()


def say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the parent is gone: stop
        raise SystemExit(0) from None


async def race(store: SqliteEventStore, stream: str, count: int) -> None:
    say("ready")
    for _ in range(count):
        event = NewEvent(uuid4(), "Raced", {"pid": "child"})
        for _attempt in range(10_000):
            version = await store.stream_version(stream)
            try:
                result = await store.append(stream, expected_version=version, events=[event])
            except WrongExpectedVersion:
                continue
            say(f"won {result.first_version} {event.id}")
            break
        else:
            raise SystemExit("never won a version")
    say("done")


async def one(store: SqliteEventStore, stream: str) -> None:
    event = NewEvent(uuid4(), "Appended", {"pid": "child"})
    result = await store.append(stream, expected_version=StreamState.ANY, events=[event])
    say(f"appended {result.positions[0]}")


async def load(store: SqliteEventStore, prefix: str) -> None:
    streams = [f"{prefix}{n}" for n in range(LOAD_STREAMS)]

    async def task() -> None:
        while True:
            batch = uuid4().hex
            first, second = random.sample(streams, 2)
            sizes = (random.randint(1, 2), 1)
            meta = {"batch": batch, "size": sum(sizes)}
            appends = [
                StreamAppend(
                    stream,
                    StreamState.ANY,
                    [NewEvent(uuid4(), "Loaded", {"i": i}, meta) for i in range(size)],
                )
                for stream, size in zip((first, second), sizes, strict=True)
            ]
            results = await store.append_batch(appends)
            pairs = [
                f"{event.id}:{position}"
                for append, result in zip(appends, results, strict=True)
                for event, position in zip(append.events, result.positions, strict=True)
            ]
            say(f"ack {batch} {' '.join(pairs)}")

    tasks = [asyncio.create_task(task()) for _ in range(LOAD_TASKS)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), LOAD_SECONDS)


async def main(path: str, mode: str, *args: str) -> None:
    store = SqliteEventStore(path)
    try:
        await store.ping()
        if mode == "race":
            await race(store, args[0], int(args[1]))
        elif mode == "one":
            await one(store, args[0])
        elif mode == "load":
            await load(store, args[0])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
