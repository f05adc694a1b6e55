"""What the two-phase transfer commands answer, built either from the events just written
(`two_phase`) or, for a retry with the same Idempotency-Key, from the log (`rebuild_hold`,
`rebuild_outcome`, called by `replays`): the two must agree to the byte.

A hold's events carry the key's ids 0 (sender), 1 (receiver) and 2 (the transfer stream's
record); an outcome's likewise. Balances are those right after the events (each account
folded up to its event's version), whatever happened since.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from eventledger.domain.events import (
    PendingTransferPosted,
    PendingTransferReceived,
    PendingTransferSent,
    PendingTransferVoided,
)
from eventledger.domain.pending import EXPIRED
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.accounts import load_account
from eventledger.services.transaction.idempotency import CommandIds, IdempotencyKeyReused
from eventledger.services.transaction.stream_client import StreamClient


@dataclass(frozen=True, slots=True)
class HoldResult:
    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    expires_at: str | None
    from_balance: int
    from_available: int
    to_balance: int
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "from_account": self.from_account,
            "to_account": self.to_account,
            "amount": self.amount,
            "status": "pending",
            "expires_at": self.expires_at,
            "from_balance": self.from_balance,
            "from_available": self.from_available,
            "to_balance": self.to_balance,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    transaction_id: str
    from_account: str
    to_account: str
    status: str  # posted, voided or expired
    amount: int  # posted: the amount moved; voided/expired: the amount released
    held: int  # the amount the hold was of
    from_balance: int
    from_available: int
    to_balance: int
    position: int
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "from_account": self.from_account,
            "to_account": self.to_account,
            "status": self.status,
            "amount": self.amount,
            "held": self.held,
            "from_balance": self.from_balance,
            "from_available": self.from_available,
            "to_balance": self.to_balance,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class TransferStatus:
    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    status: str
    expires_at: str | None

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "from_account": self.from_account,
            "to_account": self.to_account,
            "amount": self.amount,
            "status": self.status,
            "expires_at": self.expires_at,
        }


async def _others(
    client: StreamClient, ids: CommandIds, second_type: str
) -> tuple[RecordedEvent, RecordedEvent]:
    assert ids.key is not None
    second, third = await asyncio.gather(
        client.get_event(ids.event_id(1)), client.get_event(ids.event_id(2))
    )
    if second is None or second.type != second_type or third is None:
        raise IdempotencyKeyReused(ids.key)
    return second, third


async def rebuild_hold(
    client: StreamClient, first: RecordedEvent, event: PendingTransferSent, ids: CommandIds
) -> HoldResult:
    """A hold's first answer, from its three events."""
    second, third = await _others(client, ids, PendingTransferReceived.TYPE)
    source, target = await asyncio.gather(
        load_account(client, event.account_id, to_version=first.stream_version),
        load_account(client, event.to_account, to_version=second.stream_version),
    )
    return HoldResult(
        transaction_id=event.transaction_id,
        from_account=event.account_id,
        to_account=event.to_account,
        amount=event.amount,
        expires_at=event.expires_at,
        from_balance=source.balance,
        from_available=source.available,
        to_balance=target.balance,
        position=max(first.position, second.position, third.position),
        replayed=True,
    )


async def rebuild_outcome(
    client: StreamClient,
    first: RecordedEvent,
    event: PendingTransferPosted | PendingTransferVoided,
    ids: CommandIds,
) -> OutcomeResult:
    """A post's or void's first answer, from its three events."""
    second, third = await _others(client, ids, first.type)
    before, source, target = await asyncio.gather(
        # The sender just before: it still held the transfer, of the amount held.
        load_account(client, event.from_account, to_version=first.stream_version - 1),
        load_account(client, event.from_account, to_version=first.stream_version),
        load_account(client, event.to_account, to_version=second.stream_version),
    )
    hold = before.pending.get(event.transaction_id)
    if hold is None:  # cannot be, for events the guard accepted
        raise IdempotencyKeyReused(ids.key or "")
    if isinstance(event, PendingTransferPosted):
        status = "posted"
    else:
        status = EXPIRED if event.reason == EXPIRED else "voided"
    return OutcomeResult(
        transaction_id=event.transaction_id,
        from_account=event.from_account,
        to_account=event.to_account,
        status=status,
        amount=event.amount,
        held=hold.amount,
        from_balance=source.balance,
        from_available=source.available,
        to_balance=target.balance,
        position=max(first.position, second.position, third.position),
        replayed=True,
    )
