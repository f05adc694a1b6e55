"""Idempotent replays: the first response to a request, rebuilt from the event log.

The events of a request sent with an Idempotency-Key have ids derived from the key (see
`idempotency`), so one lookup by id finds them. The response is rebuilt from what they
recorded: the same transaction id and amount, the position of the last event the request
wrote, and the balance right after it (the stream folded up to that event's version, so
later changes of the account do not show).
"""

from __future__ import annotations

import asyncio

from eventledger.domain.account import initial_state
from eventledger.domain.events import (
    AccountClosed,
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    PendingTransferPosted,
    PendingTransferSent,
    PendingTransferVoided,
    TransactionReversed,
    TransferReceived,
    TransferSent,
    decode,
)
from eventledger.domain.reversal import REVERSAL_RECORDED
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.accounts import load_account
from eventledger.services.transaction.idempotency import CommandIds, IdempotencyKeyReused
from eventledger.services.transaction.results import (
    Result,
    ReversalResult,
    ReversedAccount,
    TransferResult,
    as_replayed,
    result_of,
)
from eventledger.services.transaction.stream_client import StreamClient, UnexpectedResponse
from eventledger.services.transaction.two_phase_results import rebuild_hold, rebuild_outcome


async def find_replay(client: StreamClient, ids: CommandIds) -> Result | None:
    """The first response to the request bound to `ids.key`, or None when the key is not
    bound yet. IdempotencyKeyReused when it is bound to a request with another method, path
    or body."""
    assert ids.key is not None
    first = await client.get_event(ids.event_id(0))
    if first is None:
        return None
    stored = first.metadata.get("request_fingerprint")
    if stored is None or stored not in (ids.request_fingerprint, ids.legacy_fingerprint):
        raise IdempotencyKeyReused(ids.key)
    return await _rebuild(client, first, ids)


async def answer_bound_key(client: StreamClient, ids: CommandIds) -> Result:
    """An append found its event ids already stored: a request with the same key got there
    first (it raced us, maybe on another instance). Answer its response, or refuse the key."""
    if ids.key is None:
        raise UnexpectedResponse("freshly generated event ids were already stored", status=409)
    replay = await find_replay(client, ids)
    if replay is None:
        raise IdempotencyKeyReused(ids.key)
    return replay


async def _rebuild(client: StreamClient, first: RecordedEvent, ids: CommandIds) -> Result:
    assert ids.key is not None
    if first.type == REVERSAL_RECORDED:
        return await _rebuild_reversal(client, first, ids)
    event = decode(first.type, first.data)
    match event:
        case TransferSent():
            second = await client.get_event(ids.event_id(1))
            if second is None or second.type != TransferReceived.TYPE:
                raise IdempotencyKeyReused(ids.key)
            source, target = await asyncio.gather(
                load_account(client, event.account_id, to_version=first.stream_version),
                load_account(client, event.to_account, to_version=second.stream_version),
            )
            return TransferResult(
                transaction_id=event.transaction_id,
                from_account=event.account_id,
                to_account=event.to_account,
                amount=event.amount,
                from_balance=source.balance,
                from_available=source.available,
                to_balance=target.balance,
                position=max(first.position, second.position),
                replayed=True,
            )
        case MoneyDeposited() | MoneyWithdrawn():
            state = await load_account(client, event.account_id, to_version=first.stream_version)
            return as_replayed(result_of(event, state, first.position))
        case AccountOpened() | AccountClosed():
            # No balance in these answers: nothing to fold.
            return as_replayed(result_of(event, initial_state(event.account_id), first.position))
        case PendingTransferSent():
            return await rebuild_hold(client, first, event, ids)
        case PendingTransferPosted() | PendingTransferVoided():
            return await rebuild_outcome(client, first, event, ids)
        case _:
            raise IdempotencyKeyReused(ids.key)


async def _rebuild_reversal(
    client: StreamClient, marker: RecordedEvent, ids: CommandIds
) -> ReversalResult:
    """A reversal's first answer, from its marker event (`reversals`) and its account events
    (the key's ids 1..n): the balances right after them, whatever happened since."""
    assert ids.key is not None
    accounts = marker.data.get("accounts")
    if not isinstance(accounts, list) or not accounts:
        raise IdempotencyKeyReused(ids.key)
    changed = []
    position, reference = marker.position, None
    for index in range(1, len(accounts) + 1):
        recorded = await client.get_event(ids.event_id(index))
        if recorded is None or recorded.type != TransactionReversed.TYPE:
            raise IdempotencyKeyReused(ids.key)
        event = decode(recorded.type, recorded.data)
        assert isinstance(event, TransactionReversed)
        state = await load_account(client, event.account_id, to_version=recorded.stream_version)
        changed.append(ReversedAccount(event.account_id, event.amount, state.balance))
        position, reference = max(position, recorded.position), event.reference
    return ReversalResult(
        transaction_id=str(marker.data.get("transaction_id")),
        reverses=str(marker.data.get("reverses")),
        reference=reference,
        accounts=tuple(changed),
        position=position,
        replayed=True,
    )
