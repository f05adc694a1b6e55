"""Kill -9 a process in the middle of appending: every acknowledged event is in the file,
and nothing is half written.

A child process (sqlite_writer.py, "load" mode) appends batches of 2-3 events over 2 streams
from 16 concurrent tasks and prints each batch right after its append returned. We read those
acknowledgements until enough have come, SIGKILL the child mid-load, and open the file: SQLite
recovers from its WAL, and what we find must contain every acknowledged batch, whole, at the
positions that were acknowledged, with no gap in any stream and no batch present in part.
We do it twice on the same file, so the second writer also starts from a recovered file.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path
from uuid import UUID, uuid4

from eventledger.eventstore.sqlite import SqliteEventStore
from tests.integration.sqlite_writer import read_line, start_writer
from tests.integration.store_contract import assert_strictly_increasing, read_everything

ACKS_BEFORE_KILL = 200


async def run_and_kill(path: Path, prefix: str) -> dict[str, dict[UUID, int]]:
    """Run a loaded writer until it has acknowledged enough batches, then SIGKILL it.
    Returns the acknowledged batches: batch id → {event id: position}."""
    child = await start_writer(path, "load", prefix)
    acked: dict[str, dict[UUID, int]] = {}
    try:
        while len(acked) < ACKS_BEFORE_KILL:
            line = await read_line(child)
            assert line, "the writer stopped before it was killed"
            record(acked, line)
        child.send_signal(signal.SIGKILL)
        # Lines already in the pipe were printed after an acknowledged append: they count too.
        out, _ = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()
    assert child.returncode == -signal.SIGKILL, "the writer was not killed mid-load"
    for line in out.decode().splitlines():
        record(acked, line)
    return acked


def record(acked: dict[str, dict[UUID, int]], line: str) -> None:
    kind, batch, *pairs = line.split()
    assert kind == "ack", line
    acked[batch] = {
        UUID(event_id): int(position) for event_id, position in (p.split(":") for p in pairs)
    }


async def test_a_killed_writer_loses_no_acknowledged_event_and_leaves_no_half_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    prefix = f"crash{uuid4().hex}-"
    acked = await run_and_kill(path, prefix)
    acked |= await run_and_kill(path, prefix)

    store = SqliteEventStore(path)
    try:
        events = await read_everything(store, after=0)
    finally:
        await store.close()

    # Every acknowledged event is there, at its acknowledged position.
    position_of = {event.id: event.position for event in events}
    for batch, acked_events in acked.items():
        for event_id, position in acked_events.items():
            assert position_of.get(event_id) == position, f"acknowledged batch {batch} lost"

    # Positions are unique and strictly increasing in the log.
    assert_strictly_increasing([event.position for event in events])

    # No stream has a gap.
    versions: defaultdict[str, list[int]] = defaultdict(list)
    for event in events:
        versions[event.stream].append(event.stream_version)
    for stream, stream_versions in versions.items():
        assert stream.startswith(prefix)
        assert stream_versions == list(range(1, len(stream_versions) + 1)), stream

    # Every batch in the file is whole: as many events as it declared, over two streams.
    batches: defaultdict[str, list[str]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for event in events:
        batches[event.metadata["batch"]].append(event.stream)
        sizes[event.metadata["batch"]] = event.metadata["size"]
    for batch, streams in batches.items():
        assert len(streams) == sizes[batch], f"batch {batch} is half written"
        assert len(set(streams)) == 2
    assert set(acked) <= set(batches)
