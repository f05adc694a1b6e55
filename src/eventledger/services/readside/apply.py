"""Applying the log to a read model, one transaction at a time, testable without HTTP.

`apply_batch(session, projection, items, expected=C)` is the whole rule of a projection's
write transaction, given a session of `ReadModelDB.transaction()`:

1. claim the checkpoint at `C` (another writer moved it: `CheckpointMoved`, nothing written);
2. pass the events an operator decided to skip or park (`readmodel_decisions`), whether this
   is the first run or a rebuild;
3. give the projection the rest; the batch must end at a commit boundary (see `at_boundary`);
4. when an event is refused — by the projection (`EventRejected`), by the database for what it
   writes (`ReadModelDataError`: it would fail again), or because it could not be decoded —
   keep only the atomic appends before it: the read model never shows part of one. The
   result names the event (`Stop`) and holds the items not applied (`rest`);
5. write the checkpoint and the hash of the event at it in the same transaction.

Only `ReadModelUnavailable` (and `CheckpointMoved`) leave it: the database's condition, not the
events', so the caller retries the same batch later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.checkpoints import (
    Checkpoint,
    Decision,
    claim_checkpoint,
    passed_positions,
    record_decision,
    reset_checkpoint,
    write_checkpoint,
)
from eventledger.services.readside.db import CheckpointMoved, ReadModelUnavailable, Session
from eventledger.services.readside.projection import EventRejected, Projection
from eventledger.services.readside.subscription import Undecodable

Item = RecordedEvent | Undecodable


@dataclass(frozen=True, slots=True)
class Stop:
    """The item a batch stopped at, and why."""

    position: int | None
    event: RecordedEvent | None  # None: it could not be decoded
    type: str
    reason: str


@dataclass(frozen=True, slots=True)
class Applied:
    """What a transaction did: the checkpoint after it, how many events the projection got and
    how many were passed by a decision, where it stopped, and the items it did not apply."""

    checkpoint: Checkpoint
    applied: int = 0
    passed: int = 0
    stop: Stop | None = None
    rest: tuple[Item, ...] = ()


def batch_end(item: Item) -> int:
    """The last position of the atomic append `item` belongs to (its own when not known)."""
    if isinstance(item, Undecodable):
        return item.position or 0
    return max(item.batch_end, item.position)


def at_boundary(items: Sequence[Item]) -> bool:
    """Whether a transaction may end after the last of `items`: no atomic append that one of
    them belongs to goes on past it. (The items follow a checkpoint, itself a boundary.)"""
    if not items:
        return True
    last = items[-1].position
    return last is not None and all(batch_end(i) <= last for i in items)


def _groups(items: Sequence[Item]) -> list[list[Item]]:
    """The items cut into atomic appends (an item without a position is a group alone)."""
    groups: list[list[Item]] = []
    current: list[Item] = []
    end = 0
    for item in items:
        current.append(item)
        end = max(end, batch_end(item))
        if item.position is None or item.position >= end:
            groups.append(current)
            current, end = [], 0
    if current:
        groups.append(current)
    return groups


class _Undo(Exception):
    """Raised inside a savepoint to undo it."""


def apply_batch(
    session: Session, projection: Projection, items: Sequence[Item], *, expected: int
) -> Applied:
    """Apply `items` (the log right after position `expected`, ending at a commit boundary)
    in `session` with the checkpoint. See the module docstring."""
    checkpoint = claim_checkpoint(session, projection.name, expected)
    todo = [i for i in items if i.position is None or i.position > expected]
    known = [i.position for i in todo if i.position is not None]
    if not todo or not known:
        return Applied(checkpoint, stop=_stop(todo[0]) if todo else None, rest=tuple(todo))
    decided = passed_positions(session, projection.name, after=expected, through=max(known))

    def passes(item: Item) -> bool:
        if item.position is None or item.position not in decided:
            return False
        event_id = decided[item.position]
        return not event_id or isinstance(item, Undecodable) or event_id == str(item.id)

    if not any(isinstance(i, Undecodable) and not passes(i) for i in todo):
        events = [i for i in todo if isinstance(i, RecordedEvent) and not passes(i)]
        try:
            with session.savepoint():
                if projection.apply(session, events) is not None:
                    raise _Undo
        except (ReadModelUnavailable, CheckpointMoved):
            raise
        except Exception:
            pass
        else:
            return _done(
                session, projection, checkpoint, todo, len(events), len(todo) - len(events)
            )
    applied = passed = 0
    done: list[Item] = []
    stop: Stop | None = None
    for group in _groups(todo):
        blocker = next((i for i in group if isinstance(i, Undecodable) and not passes(i)), None)
        if blocker is not None:
            stop = _stop(blocker)
            break
        events = [i for i in group if isinstance(i, RecordedEvent) and not passes(i)]
        stop = _try(session, projection, events)
        if stop is not None:
            break
        done += group
        applied += len(events)
        passed += len(group) - len(events)
    result = _done(session, projection, checkpoint, done, applied, passed)
    return replace(result, stop=stop, rest=tuple(todo[len(done) :]))


def _try(session: Session, projection: Projection, events: list[RecordedEvent]) -> Stop | None:
    """Apply one atomic append in a savepoint: None when it was applied, else why not (and
    nothing of it written)."""
    try:
        with session.savepoint():
            rejected = projection.apply(session, events)
            if rejected is not None:
                raise rejected
    except EventRejected as exc:
        return Stop(exc.event.position, exc.event, exc.event.type, exc.reason)
    except (ReadModelUnavailable, CheckpointMoved):
        raise
    except Exception as exc:
        return _culprit(session, projection, events, exc)
    return None


def _culprit(
    session: Session, projection: Projection, events: list[RecordedEvent], error: Exception
) -> Stop:
    """Which event of an atomic append makes it fail: the first prefix that fails names it."""
    if not events:
        raise error
    count = 0
    for count in range(1, len(events) + 1):
        try:
            with session.savepoint():
                projection.apply(session, events[:count])
                raise _Undo
        except _Undo:
            continue
        except (ReadModelUnavailable, CheckpointMoved):
            raise
        except Exception as exc:
            error = exc
            break
    event = events[min(count, len(events)) - 1]
    return Stop(event.position, event, event.type, _describe(error))


def _describe(error: Exception) -> str:
    from eventledger.services.readside.db import ReadModelError

    if isinstance(error, ReadModelError):
        return f"the read model database refused it: {error}"
    return f"the projection failed on it: {type(error).__name__}: {error}"


def _stop(item: Item) -> Stop:
    if isinstance(item, Undecodable):
        return Stop(item.position, None, item.type, item.reason)
    return Stop(item.position, item, item.type, "not applied")


def _done(
    session: Session,
    projection: Projection,
    checkpoint: Checkpoint,
    done: Sequence[Item],
    applied: int,
    passed: int,
) -> Applied:
    if not done:
        return Applied(checkpoint, applied, passed)
    last = done[-1]
    assert last.position is not None
    digest = last.hash if isinstance(last, RecordedEvent) else None
    write_checkpoint(session, projection.name, last.position, hash=digest)
    until = checkpoint.rebuild_until
    moved = Checkpoint(
        last.position,
        digest or None,
        checkpoint.generation,
        None if until is None or until <= last.position else until,
    )
    return Applied(moved, applied, passed)


def decide(
    session: Session,
    projection: Projection,
    decision: Decision,
    *,
    envelope: str | None,
    held: Sequence[Item],
) -> Applied:
    """An operator's skip or park, in one transaction with the checkpoint: record it, then
    apply what was held behind the halted event (`held`: the items after the checkpoint that
    the halted batch did not apply), passing the event decided about."""
    claim_checkpoint(session, projection.name, decision.checkpoint)
    record_decision(session, decision, envelope=envelope)
    return apply_batch(session, projection, held, expected=decision.checkpoint)


def reset(session: Session, projection: Projection, *, rebuild_until: int | None) -> Checkpoint:
    """Empty the read model and put its checkpoint back to 0, in one transaction; decisions are
    kept. With `rebuild_until`, reads answer `rebuilding` until the replay gets there."""
    # The checkpoint first: on PostgreSQL its row lock waits for another writer's batch.
    checkpoint = reset_checkpoint(session, projection.name, rebuild_until=rebuild_until)
    projection.reset(session)
    return checkpoint
