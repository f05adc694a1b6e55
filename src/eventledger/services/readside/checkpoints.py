"""The read side's own tables, next to every read model's: where each projection stands
(its checkpoint), and the operator's decisions about events it could not apply.

* `readmodel_checkpoints` — per projection: the position applied, the `hash` of the event at
  that position (so a read model can be verified against the log), the `generation` (how many
  times it was reset) and `rebuild_until` (while a rebuild replays the log: the position it
  must reach before the read model answers again; NULL otherwise). Every instance sharing the
  database sees the same row, so a rebuild started by one is seen by all.
* `readmodel_decisions` — the audit record of every skip and park: what, who, when, why, and
  the checkpoint it was taken at. Decisions survive a rebuild: the replay passes the same
  events again without halting.
* `readmodel_parked` — the envelope of every parked event, kept for inspection or replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from eventledger.services.readside.db import Migration, Session

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS readmodel_migrations (
    namespace TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (namespace, version)
)"""

CORE_MIGRATIONS: Sequence[Migration] = (
    # Version 1 existed before it was versioned: databases made then already have it.
    (
        """CREATE TABLE IF NOT EXISTS readmodel_checkpoints (
            name TEXT PRIMARY KEY,
            position BIGINT NOT NULL
        )""",
    ),
    (
        "ALTER TABLE readmodel_checkpoints ADD COLUMN hash TEXT",
        "ALTER TABLE readmodel_checkpoints ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE readmodel_checkpoints ADD COLUMN rebuild_until BIGINT",
        """CREATE TABLE readmodel_decisions (
            name TEXT NOT NULL,
            position BIGINT NOT NULL,
            action TEXT NOT NULL,
            event_id TEXT,
            stream TEXT,
            type TEXT NOT NULL,
            halt_reason TEXT NOT NULL,
            reason TEXT NOT NULL,
            decided_by TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            checkpoint BIGINT NOT NULL,
            PRIMARY KEY (name, position)
        )""",
        """CREATE TABLE readmodel_parked (
            name TEXT NOT NULL,
            position BIGINT NOT NULL,
            event_id TEXT,
            stream TEXT,
            type TEXT NOT NULL,
            reason TEXT NOT NULL,
            envelope TEXT,
            parked_at TEXT NOT NULL,
            PRIMARY KEY (name, position)
        )""",
    ),
    # 3: blue/green rebuilds (versions.py). `retired_to` is set, in the switch's transaction,
    # on the checkpoint of a version that stopped being live: a reader or writer still on it
    # learns from the row it reads anyway that it must move to that version.
    ("ALTER TABLE readmodel_checkpoints ADD COLUMN retired_to BIGINT",),
)


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a projection stands, as stored."""

    position: int = 0
    hash: str | None = None
    generation: int = 0
    rebuild_until: int | None = None
    retired_to: int | None = None  # this version is no longer live: that one is

    @property
    def rebuilding(self) -> bool:
        return self.rebuild_until is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "hash": self.hash,
            "generation": self.generation,
            "rebuild_until": self.rebuild_until,
        }


def load_checkpoint(session: Session, name: str) -> Checkpoint:
    """Projection `name`'s checkpoint (position 0 when it has applied nothing yet)."""
    row = session.fetchone(
        "SELECT position, hash, generation, rebuild_until, retired_to FROM readmodel_checkpoints "
        "WHERE name = ?",
        (name,),
    )
    if row is None:
        return Checkpoint()
    until = None if row[3] is None else int(row[3])
    retired = None if row[4] is None else int(row[4])
    return Checkpoint(int(row[0]), row[1] or None, int(row[2]), until, retired)


def read_checkpoint(session: Session, name: str) -> int:
    """The position up to which projection `name` has applied the log (0: nothing yet)."""
    return load_checkpoint(session, name).position


def claim_checkpoint(session: Session, name: str, expected: int) -> Checkpoint:
    """Check, at the start of a write transaction, that the checkpoint is still at `expected`,
    and hold it so that no other writer can move it before this transaction ends.

    Why first: on PostgreSQL the row lock taken here serialises two processes projecting into
    the same schema; the loser sees the moved position and raises instead of applying twice.
    """
    from eventledger.services.readside.db import CheckpointMoved

    if expected == 0:
        session.execute(
            "INSERT INTO readmodel_checkpoints (name, position) VALUES (?, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (name,),
        )
    # A retired version (versions.py) takes no more writes: its writer moves to the live one.
    changed = session.execute(
        "UPDATE readmodel_checkpoints SET position = position "
        "WHERE name = ? AND position = ? AND retired_to IS NULL",
        (name, expected),
    )
    if changed != 1:
        raise CheckpointMoved(name, expected)
    return load_checkpoint(session, name)


def write_checkpoint(
    session: Session, name: str, position: int, *, hash: str | None = None
) -> None:
    """Set the checkpoint (and the hash of the event at `position`); call it in the transaction
    that applied the events up to it. A rebuild that reaches its target ends here."""
    session.execute(
        "INSERT INTO readmodel_checkpoints (name, position, hash) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position, hash = excluded.hash, "
        "rebuild_until = CASE WHEN readmodel_checkpoints.rebuild_until <= excluded.position "
        "THEN NULL ELSE readmodel_checkpoints.rebuild_until END",
        (name, position, hash or None),
    )


def reset_checkpoint(session: Session, name: str, *, rebuild_until: int | None) -> Checkpoint:
    """Back to position 0 in a new generation; with `rebuild_until`, the read model answers
    no query until the replay has reached that position again."""
    old = load_checkpoint(session, name)
    new = Checkpoint(0, None, old.generation + 1, rebuild_until or None)
    session.execute(
        "INSERT INTO readmodel_checkpoints (name, position, hash, generation, rebuild_until) "
        "VALUES (?, 0, NULL, ?, ?) ON CONFLICT (name) DO UPDATE SET position = 0, hash = NULL, "
        "generation = excluded.generation, rebuild_until = excluded.rebuild_until",
        (name, new.generation, new.rebuild_until),
    )
    return new


# -- decisions --------------------------------------------------------------------------------

Action = Literal["skip", "park"]


@dataclass(frozen=True, slots=True)
class Decision:
    """An operator's skip or park of the event a projection halted on."""

    name: str
    position: int
    action: Action
    event_id: str | None
    stream: str | None
    type: str
    halt_reason: str
    reason: str
    by: str
    at: str
    checkpoint: int

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "action": self.action,
            "event_id": self.event_id,
            "stream": self.stream,
            "type": self.type,
            "halt_reason": self.halt_reason,
            "reason": self.reason,
            "by": self.by,
            "at": self.at,
            "checkpoint": self.checkpoint,
        }


_DECISION_COLUMNS = (
    "name, position, action, event_id, stream, type, halt_reason, reason, decided_by, "
    "decided_at, checkpoint"
)
DECISION_COLUMNS = _DECISION_COLUMNS
PARKED_COLUMNS = "name, position, event_id, stream, type, reason, envelope, parked_at"


def record_decision(session: Session, decision: Decision, *, envelope: str | None) -> None:
    """Keep the decision (and, for a park, the event's envelope) in the audit tables."""
    d = decision
    session.execute(
        f"INSERT INTO readmodel_decisions ({_DECISION_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d.name,
            d.position,
            d.action,
            d.event_id,
            d.stream,
            d.type,
            d.halt_reason,
            d.reason,
            d.by,
            d.at,
            d.checkpoint,
        ),
    )
    if d.action == "park":
        session.execute(
            "INSERT INTO readmodel_parked "
            "(name, position, event_id, stream, type, reason, envelope, parked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (d.name, d.position, d.event_id, d.stream, d.type, d.halt_reason, envelope, d.at),
        )


def passed_positions(session: Session, name: str, *, after: int, through: int) -> dict[int, str]:
    """The decided positions in `after`+1..`through`, with the id of the event decided about
    ("" when it could not be decoded): the projection passes those events without applying."""
    rows = session.fetchall(
        "SELECT position, event_id FROM readmodel_decisions "
        "WHERE name = ? AND position > ? AND position <= ?",
        (name, after, through),
    )
    return {int(row[0]): str(row[1] or "") for row in rows}


def _decision_from_row(row: Sequence[Any]) -> Decision:
    action: Action = "park" if row[2] == "park" else "skip"
    return Decision(
        row[0], int(row[1]), action, row[3], row[4], row[5], row[6], row[7], row[8], row[9],
        int(row[10]),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DecisionSummary:
    skipped: int = 0
    parked: int = 0
    last: Decision | None = None

    def after(self, decision: Decision) -> DecisionSummary:
        """The summary once `decision` is recorded too."""
        skip = decision.action == "skip"
        return DecisionSummary(self.skipped + skip, self.parked + (not skip), decision)

    def to_json(self) -> dict[str, Any]:
        last = None if self.last is None else self.last.to_json()
        return {"skipped": self.skipped, "parked": self.parked, "last": last}


def decision_summary(session: Session, name: str) -> DecisionSummary:
    counts: dict[str, int] = dict(
        session.fetchall(
            "SELECT action, COUNT(*) FROM readmodel_decisions WHERE name = ? GROUP BY action",
            (name,),
        )
    )
    row = session.fetchone(
        f"SELECT {_DECISION_COLUMNS} FROM readmodel_decisions WHERE name = ? "
        "ORDER BY decided_at DESC, position DESC LIMIT 1",
        (name,),
    )
    last = None if row is None else _decision_from_row(row)
    return DecisionSummary(int(counts.get("skip", 0)), int(counts.get("park", 0)), last)


def list_decisions(session: Session, name: str) -> list[tuple[Decision, str | None]]:
    """Every decision about projection `name`, by position, with a parked event's envelope."""
    rows = session.fetchall(
        f"SELECT {', '.join('d.' + c.strip() for c in _DECISION_COLUMNS.split(','))}, "
        "p.envelope FROM readmodel_decisions d LEFT JOIN readmodel_parked p "
        "ON p.name = d.name AND p.position = d.position WHERE d.name = ? ORDER BY d.position",
        (name,),
    )
    return [(_decision_from_row(row), row[11]) for row in rows]
