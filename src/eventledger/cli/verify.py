"""`eventledger verify`: recompute the tamper-evident hash chain of the event log from the
stored rows (eventstore/hashing.py), with a progress bar.

Exit 0 printing the head position and hash; exit 1 naming the first position whose stored
content no longer matches its hash. It reads the database directly (not through the stream
service), so it sees exactly what is stored.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eventledger.cli.output import CliError, console
from eventledger.cli.serve import DataDirOpt, StoreOpt, settings_from_flags

if TYPE_CHECKING:
    from eventledger.eventstore.hashing import ChainReport


class ChainBroken(CliError):
    """Raised when a stored event no longer matches its hash."""


def verify(
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    allow_unsafe_durability: Annotated[
        bool,
        typer.Option(
            "--allow-unsafe-durability",
            help="Read a PostgreSQL server that runs without synchronous commit",
        ),
    ] = False,
) -> None:
    """Recompute the hash chain of the event log: exit 0 with the head position and hash, or
    1 naming the first position whose stored content no longer matches."""
    settings = settings_from_flags(
        store=store, data_dir=data_dir, allow_unsafe_durability=allow_unsafe_durability
    )
    url = settings.store_url()
    report = asyncio.run(_verify(url, allow_unsafe=settings.allow_unsafe_durability))
    if report.broken_at is not None:
        raise ChainBroken(
            f"the hash chain breaks at position {report.broken_at}: {report.reason}"
            f" ({report.checked} events before it verified)"
        )
    console.print(
        f"verified {report.checked} events: head position {report.head_position},"
        f" hash {report.head_hash}",
        soft_wrap=True,
    )


async def _verify(url: str, *, allow_unsafe: bool) -> ChainReport:
    # Imported here: the store adapters (and FastAPI through bootstrap) cost every other
    # command of the CLI about a third of a second at start-up.
    from eventledger.bootstrap import open_event_store
    from eventledger.eventstore.errors import EventStoreError
    from eventledger.eventstore.hashing import verify_chain

    try:
        store = await open_event_store(url, allow_unsafe_durability=allow_unsafe)
    except (EventStoreError, ValueError) as exc:
        raise CliError(f"cannot open the event store {url}: {exc}") from exc
    try:
        total = await store.head_position()
        columns = (
            TextColumn("verifying the hash chain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("verify", total=total or None)

            def progress(position: int, _checked: int) -> None:
                bar.update(task, completed=position, total=max(total, position) or None)

            return await verify_chain(store, progress=progress)
    except EventStoreError as exc:
        raise CliError(f"cannot read the event store {url}: {exc}") from exc
    finally:
        await store.close()
