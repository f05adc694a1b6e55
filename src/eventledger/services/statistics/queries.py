"""The statistics read model's queries: SQL in, plain data out. Each takes a read session."""

from __future__ import annotations

from eventledger.services.readside.checkpoints import read_checkpoint
from eventledger.services.readside.db import Session
from eventledger.services.statistics.projection import Tally
from eventledger.services.statistics.store import NAME, TALLY_COLUMNS, tally_from_row


def applied_position(session: Session) -> int:
    """The position this snapshot of the read model reflects."""
    return read_checkpoint(session, NAME)


def currency_totals(session: Session) -> dict[str, Tally]:
    rows = session.fetchall(
        f"SELECT currency, {TALLY_COLUMNS} FROM stats_currencies ORDER BY currency"
    )
    return {row[0]: tally_from_row(row[1:]) for row in rows}


def daily_totals(session: Session, *, first: str, last: str) -> dict[tuple[str, str], Tally]:
    """Counters per (day, currency) for the days `first`..`last` (YYYY-MM-DD, inclusive)."""
    rows = session.fetchall(
        f"SELECT day, currency, {TALLY_COLUMNS} FROM stats_daily "
        "WHERE day >= ? AND day <= ? ORDER BY day, currency",
        (first, last),
    )
    return {(row[0], row[1]): tally_from_row(row[2:]) for row in rows}
