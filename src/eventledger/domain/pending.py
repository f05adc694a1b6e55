"""Holds: what an account knows of the two-phase transfers it is a party to.

A two-phase transfer places a hold first (`PendingTransferSent` on the sender's stream,
`PendingTransferReceived` on the receiver's): the amount is no longer *available* to the
sender (`available = balance - pending_debits`) but is not yet the receiver's. It ends once,
by a post (`PendingTransferPosted`: some or all of the held amount moves, the rest is
released) or a void (`PendingTransferVoided`, reason "voided" or "expired": nothing moves).

Both the Decider (`account.Account`) and the validity rule (`validity.AccountFacts`) keep
the holds an account is party to as `{transaction_id: PendingHold}`, so that an outcome can
only end a hold that exists, on the right side, between the same two accounts, for at most
the held amount. Everything here is pure: times come in as RFC 3339 text, never from a clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from eventledger.domain.errors import InvalidExpiry
from eventledger.domain.money import INT64_MAX, INT64_MIN

Side = Literal["debit", "credit"]
DEBIT: Side = "debit"  # this account sends the held amount
CREDIT: Side = "credit"  # this account receives it

VOIDED = "voided"
EXPIRED = "expired"
VOID_REASONS = frozenset({VOIDED, EXPIRED})

# RFC 3339 in UTC with a `Z`, at most microseconds: one spelling per instant, so that the
# two sides of a hold carry the same text and a deterministic id can be derived from it.
_EXPIRY = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


@dataclass(frozen=True, slots=True)
class PendingHold:
    """One pending transfer seen from one of its accounts."""

    side: Side
    amount: int
    counterparty: str  # the other account of the transfer
    expires_at: str | None  # RFC 3339 UTC, or None: no timeout


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC time (`...Z`) as an aware datetime; ValueError otherwise."""
    if not isinstance(text, str) or _EXPIRY.fullmatch(text) is None:
        raise ValueError(f"not an RFC 3339 UTC time ending in 'Z': {text!r}"[:200])
    return datetime.fromisoformat(text[:-1] + "+00:00")


def format_time(moment: datetime) -> str:
    """`moment` as RFC 3339 UTC with microseconds and a `Z` (the spelling holds carry)."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no place on the timeline")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expiry_after(now: datetime, seconds: int) -> str:
    """The `expires_at` of a hold placed at `now` with a timeout of `seconds`."""
    return format_time(now + timedelta(seconds=seconds))


def check_expires_at(value: object, *, field: str = "expires_at") -> str | None:
    """The expiry when it is None or an RFC 3339 UTC time; InvalidExpiry otherwise."""
    if value is None:
        return None
    try:
        parse_time(value)  # type: ignore[arg-type]  # checked inside
    except (ValueError, TypeError, OverflowError):
        raise InvalidExpiry(
            f"{field} must be an RFC 3339 time in UTC ending in 'Z' (e.g. "
            "2026-12-03T10:00:00Z), or absent",
            field=field,
        ) from None
    assert isinstance(value, str)
    return value


def is_due(expires_at: str | None, now: str) -> bool:
    """True when a hold with this expiry has expired at `now`: its deadline is at or before
    `now` (a hold without one never expires)."""
    return expires_at is not None and parse_time(expires_at) <= parse_time(now)


def out_of_range(balance: int, pending_debits: int, pending_credits: int) -> int | None:
    """The first of balance, balance less the holds on it and balance plus the holds coming
    in that leaves the signed 64-bit range, or None. Checking the last two when a hold is
    placed means no post or void of it can leave the range later."""
    for value in (balance, balance - pending_debits, balance + pending_credits):
        if not INT64_MIN <= value <= INT64_MAX:
            return value
    return None


def with_hold(
    holds: Mapping[str, PendingHold], transaction_id: str, hold: PendingHold
) -> dict[str, PendingHold]:
    """A copy of `holds` with one more (the mappings of a frozen state are never mutated)."""
    copy = dict(holds)
    copy[transaction_id] = hold
    return copy


def without_hold(holds: Mapping[str, PendingHold], transaction_id: str) -> dict[str, PendingHold]:
    """A copy of `holds` without this one."""
    copy = dict(holds)
    copy.pop(transaction_id, None)
    return copy


def encode_holds(holds: Mapping[str, PendingHold]) -> list[list[Any]]:
    """Holds as plain JSON values (snapshots of state and facts keep them so)."""
    return [[t, h.side, h.amount, h.counterparty, h.expires_at] for t, h in holds.items()]


def decode_holds(rows: object) -> dict[str, PendingHold] | None:
    """Holds from their encoding, or None when any part of it is not sound."""
    if not isinstance(rows, list):
        return None
    holds: dict[str, PendingHold] = {}
    for row in rows:
        if not isinstance(row, list) or len(row) != 5:
            return None
        tid, side, amount, counterparty, expires_at = row
        sound = (
            isinstance(tid, str)
            and tid not in holds
            and side in (DEBIT, CREDIT)
            and type(amount) is int
            and amount > 0
            and isinstance(counterparty, str)
            and (expires_at is None or isinstance(expires_at, str))
        )
        if not sound:
            return None
        holds[tid] = PendingHold(side, amount, counterparty, expires_at)
    return holds
