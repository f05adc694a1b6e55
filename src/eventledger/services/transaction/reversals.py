"""Reversing a transaction: the command side of `POST /transactions/{id}/reverse`.

The steps, around the pure decision (`domain.reversal.decide_reversal`):

1. find the original: the stream service's index of transaction ids
   (`GET /transactions/{id}/events`) names the account events that carry it; each is
   verified against its account stream (the streams are the authority: the event at that
   version must be that event);
2. was it reversed already? The marker stream `reversal-{original id}` holds one event once
   it was: 409 `already-reversed` naming the reversal (or, when that event is this request's
   own, the first answer again: an idempotent replay); a marker that names no reversal the
   accounts hold (forged by another writer) is 409 `reversal-blocked`;
3. load the accounts it touched (the cache, a snapshot or the stream), decide;
4. append in ONE atomic batch: the marker event with expected version `no_stream`, and one
   `TransactionReversed` per account at the version decided on. Two reversals of one
   transaction racing, on one instance or several, both pass step 2, but only one batch can
   create the marker stream: the other meets `wrong-expected-version`, starts over and is
   refused at step 2. A conflict on an account stream (someone moved money meanwhile)
   decides again on the new state, like every command.

The marker event is `ReversalRecorded` {transaction_id (the reversal's), reverses, accounts}:
not an account event (no read model applies it), the first event of the request (its id is
the key's first derived id), so an idempotent replay is rebuilt from it (`replays`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventledger.domain.account import Account, evolve
from eventledger.domain.errors import (
    AlreadyReversed,
    DomainError,
    InvalidAccountEvent,
    InvalidTransactionId,
    ReversalBlocked,
)
from eventledger.domain.events import Event, TransactionReversed, stream_name
from eventledger.domain.money import check_transaction_id
from eventledger.domain.reversal import (
    REVERSAL_RECORDED,
    ReverseTransaction,
    decide_reversal,
    reversal_stream,
    validate_reversal,
)
from eventledger.domain.validity import decode_event
from eventledger.eventstore.records import NewEvent, RecordedEvent, StreamAppend, StreamState
from eventledger.services.transaction.accounts import InvalidAccountHistory
from eventledger.services.transaction.handlers import CommandHandler, TooMuchContention
from eventledger.services.transaction.idempotency import CommandIds, IdempotencyKeyReused
from eventledger.services.transaction.replays import answer_bound_key
from eventledger.services.transaction.results import ReversalResult, ReversedAccount
from eventledger.services.transaction.stream_client import (
    DuplicateEventId,
    StreamClient,
    UnexpectedResponse,
    WrongExpectedVersion,
)


async def find_original(client: StreamClient, transaction_id: str) -> list[Event]:
    """The account events of transaction `transaction_id`, oldest first, each verified
    against its stream; [] when there are none."""
    found = await client.read_transaction(transaction_id)
    events: list[Event] = []
    for recorded in found:
        page = await client.read_stream(
            recorded.stream,
            from_version=recorded.stream_version,
            to_version=recorded.stream_version,
        )
        if [e.id for e in page.events] != [recorded.id]:
            raise UnexpectedResponse(
                f"the index of transaction {transaction_id} names event {recorded.id} at "
                f"version {recorded.stream_version} of {recorded.stream!r}, which holds another",
                status=200,
            )
        events.append(_decoded(recorded))
    return events


async def reversed_by(client: StreamClient, transaction_id: str) -> RecordedEvent | None:
    """The marker event of the reversal of `transaction_id`, or None when it is not reversed."""
    page = await client.read_stream(reversal_stream(transaction_id), to_version=1)
    return page.events[0] if page.events else None


def marker_event(
    command: ReverseTransaction, events: Sequence[TransactionReversed], ids: CommandIds
) -> NewEvent:
    data: dict[str, Any] = {
        "transaction_id": command.transaction_id,
        "reverses": command.reverses,
        "accounts": [e.account_id for e in events],
    }
    return NewEvent(
        id=ids.event_id(0), type=REVERSAL_RECORDED, schema_version=1, data=data,
        metadata=ids.metadata(),
    )  # fmt: skip


async def reverse(
    handler: CommandHandler, command: ReverseTransaction, ids: CommandIds
) -> ReversalResult:
    """Carry out a reversal (the module docstring's steps), retrying on conflicts."""
    validate_reversal(command)
    client = handler.client
    for attempt in range(handler.max_retries + 1):
        if attempt:
            await handler._retry(ids.command, attempt)
        # 1-2: the original, and whether it is reversed already.
        original = await find_original(client, command.reverses)
        if (done := await _already_reversed(client, command, ids)) is not None:
            return done
        accounts = list(dict.fromkeys(e.account_id for e in original))
        async with handler.locks.hold(*accounts):
            # 3: the accounts' states, and the decision.
            try:
                states, events = await handler._decide(
                    accounts,
                    _decider(command, original, accounts),
                )
            except DomainError:
                if (replay := await handler._written_meanwhile(ids)) is not None:
                    return _reversal(replay, ids)
                # Decided on the state another reversal of it left (the money it moved back
                # is not there twice): the answer is that one, not the rule it now breaks.
                if (done := await _already_reversed(client, command, ids)) is not None:
                    return done
                raise
            by_account = {s.account_id: s for s in states}
            # 4: the marker and the correcting events, atomically.
            appends = [StreamAppend(reversal_stream(command.reverses), StreamState.NO_STREAM,
                                    [marker_event(command, events, ids)])]  # fmt: skip
            for index, event in enumerate(events, start=1):
                state = by_account[event.account_id]
                appends.append(
                    StreamAppend(
                        stream_name(event.account_id),
                        state.version,
                        [_new_event(event, ids, index)],
                    )
                )
            try:
                results = await client.append_batch(appends)
            except WrongExpectedVersion:
                # The marker (another reversal won: step 2 says so next time) or an account
                # (money moved meanwhile: decide again on what the streams say now).
                handler._forget(*accounts)
                continue
            except DuplicateEventId:
                handler._forget(*accounts)
                return _reversal(await answer_bound_key(client, ids), ids)
            except BaseException:
                handler._forget(*accounts)
                raise
            if any(r.replayed for r in results):
                handler._forget(*accounts)
                return _reversal(await answer_bound_key(client, ids), ids)
            changed = []
            for index, (event, result) in enumerate(zip(events, results[1:], strict=True), 1):
                before = by_account[event.account_id]
                after = handler._remember(
                    before, _applied(before, event), result, ids.event_id(index)
                )
                changed.append(ReversedAccount(event.account_id, event.amount, after.balance))
            return ReversalResult(
                transaction_id=command.transaction_id,
                reverses=command.reverses,
                reference=command.reference,
                accounts=tuple(changed),
                position=max(p for r in results for p in r.positions),
            )
    raise TooMuchContention(
        f"the accounts of transaction {command.reverses} kept changing during "
        f"{handler.max_retries + 1} attempts; nothing was written"
    )


async def _already_reversed(
    client: StreamClient, command: ReverseTransaction, ids: CommandIds
) -> ReversalResult | None:
    """None while the original is not reversed; this request's first answer when it was the
    one that reversed it; AlreadyReversed (naming the reversal) otherwise."""
    marker = await reversed_by(client, command.reverses)
    if marker is None:
        return None
    if marker.id == ids.event_id(0):  # this request's own, written before
        return _reversal(await answer_bound_key(client, ids), ids)
    reversal_id = await _reversal_of(client, marker, command.reverses)
    if reversal_id is None:
        raise ReversalBlocked(command.reverses, marker_stream=reversal_stream(command.reverses))
    raise AlreadyReversed(command.reverses, reversed_by=reversal_id)


async def _reversal_of(client: StreamClient, marker: RecordedEvent, original: str) -> str | None:
    """The id of the reversal `marker` records, when the accounts hold it; else None."""
    # Why: the marker stream is not an account stream, so the guard does not check it: anyone
    # with `events:append` can write it. A real marker is appended in one batch with its
    # account events, so they are there; a forged one named no reversal ("reversed by None").
    if marker.type != REVERSAL_RECORDED or marker.data.get("reverses") != original:
        return None
    try:
        reversal_id = check_transaction_id(marker.data.get("transaction_id"))
    except InvalidTransactionId:
        return None
    found = await client.read_transaction(reversal_id)
    if any(
        e.type == TransactionReversed.TYPE and e.data.get("reverses") == original for e in found
    ):
        return reversal_id
    return None


def _decider(
    command: ReverseTransaction, original: Sequence[Event], accounts: Sequence[str]
) -> Callable[[list[Account]], list[TransactionReversed]]:
    def decider(states: list[Account]) -> list[TransactionReversed]:
        return decide_reversal(command, original, dict(zip(accounts, states, strict=True)))

    return decider


def _decoded(recorded: RecordedEvent) -> Event:
    try:
        return decode_event(recorded.type, recorded.data, schema_version=recorded.schema_version)
    except InvalidAccountEvent as exc:
        raise InvalidAccountHistory(
            recorded.stream, recorded.stream_version, recorded.position, exc.reason
        ) from None


def _new_event(event: TransactionReversed, ids: CommandIds, index: int) -> NewEvent:
    return NewEvent(
        id=ids.event_id(index), type=event.TYPE, schema_version=event.SCHEMA_VERSION,
        data=event.to_data(), metadata=ids.metadata(),
    )  # fmt: skip


def _applied(state: Account, event: TransactionReversed) -> Account:
    return evolve(state, event)


def _reversal(result: object, ids: CommandIds) -> ReversalResult:
    """A replay of the same request is a reversal; anything else: the key was bound by
    another request."""
    if not isinstance(result, ReversalResult):
        raise IdempotencyKeyReused(ids.key or "")
    return result
