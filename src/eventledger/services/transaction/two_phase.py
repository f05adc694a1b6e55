"""Two-phase transfers on the command side: place a hold, then post, void or expire it.

Where a transfer is found by its id. A hold is appended in ONE atomic batch to three
streams: the sender's account stream (`PendingTransferSent`), the receiver's
(`PendingTransferReceived`) and the transfer's own stream `transfer-{transaction_id}`
(`TransferHoldRecorded`: who, how much, until when). A post, void or expiry reads that
stream to learn the two accounts, then decides on the two *account* states, which are the
authority (`domain.holds.decide_outcome`: both must hold the transfer, matching), and
appends the outcome to both account streams with their expected versions, plus
`TransferHoldEnded` to the transfer stream (expecting the version read), in one batch.

Why the transfer stream is only a hint: it is not an account stream, so the stream
service's guard does not check it. A forged or mismatched one names accounts that do not
hold the transfer (404 transfer-not-found), and the account events of any outcome are
checked by the guard against the accounts' pending holds; so it can never move money. How
a transfer that the accounts no longer hold ended (409 transfer-not-pending with `posted`,
`voided` or `expired`) is read from its account events, through the stream service's index
of transaction ids (`GET /transactions/{id}/events`), which the guard did check. A hold
written to the account streams without a transfer stream (by another writer of the stream
service) is found the same way, so it can still be posted, voided and expired.

Exactly one outcome: every outcome expects both account streams at the versions decided
on, so of a post and a void racing, one is written and the other conflicts, decides again
on the new states, finds the hold gone and answers 409 transfer-not-pending. An expiry's
event ids are derived from the transfer id under the installation's secret
(`expiry_ids`): two instances expiring one hold write it once (the second append is a
conflict or an idempotent replay).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from eventledger.domain.account import Account, decide_transfer, evolve
from eventledger.domain.commands import (
    ExpirePendingTransfer,
    HoldOutcome,
    PostPendingTransfer,
    Transfer,
    VoidPendingTransfer,
)
from eventledger.domain.errors import DomainError, TransferNotFound, TransferNotPending
from eventledger.domain.events import (
    Event,
    PendingTransferPosted,
    PendingTransferSent,
    PendingTransferVoided,
    UnknownEvent,
    decode,
    stream_name,
)
from eventledger.domain.holds import decide_outcome, find_hold
from eventledger.domain.money import ACCOUNT_ID, check_transaction_id
from eventledger.domain.pending import EXPIRED, format_time, is_due
from eventledger.eventstore.records import (
    AppendResult,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamState,
)
from eventledger.services.transaction.handlers import (
    CommandHandler,
    TooMuchContention,
    _new_events,
)
from eventledger.services.transaction.idempotency import (
    CommandIds,
    IdempotencyKeyReused,
    derived_id,
)
from eventledger.services.transaction.replays import answer_bound_key
from eventledger.services.transaction.stream_client import DuplicateEventId, WrongExpectedVersion
from eventledger.services.transaction.two_phase_results import (
    HoldResult,
    OutcomeResult,
    TransferStatus,
)

_R = TypeVar("_R")

TRANSFER_STREAM_PREFIX = "transfer-"
HOLD_RECORDED = "TransferHoldRecorded"
HOLD_ENDED = "TransferHoldEnded"


def transfer_stream(transaction_id: str) -> str:
    """The stream that records a two-phase transfer by its id."""
    return TRANSFER_STREAM_PREFIX + transaction_id


def expiry_ids(secret: bytes, transaction_id: str) -> CommandIds:
    """The ids of the expiry of one hold, the same on every instance: derived under the
    installation's secret (no one else can write an event with them first), from a "key"
    with a space in it, which no client's Idempotency-Key can be (so no client's ids meet
    these)."""
    ids = CommandIds(command="expire", secret=secret)
    key = f"expiry {transaction_id}"
    fresh = {str(i): derived_id(secret, key, str(i)) for i in range(3)}
    fresh["command"] = derived_id(secret, key, "command")
    ids._fresh.update(fresh)  # the ids a keyless command would draw, fixed in advance
    return ids


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """What the transfer stream says of a two-phase transfer (a hint: see the module)."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    expires_at: str | None
    status: str  # "pending", or what a later TransferHoldEnded read with it recorded (a hint)
    version: int  # of the transfer stream, for the outcome's expected version


def record_of(
    transaction_id: str, events: list[tuple[str, dict[str, Any]]]
) -> TransferRecord | None:
    """The record from the transfer stream's events (type, data), or None when its first
    event is not a well-formed `TransferHoldRecorded` of this transfer."""
    if not events or events[0][0] != HOLD_RECORDED:
        return None
    data = events[0][1]
    source, target, amount = data.get("from_account"), data.get("to_account"), data.get("amount")
    expires_at = data.get("expires_at")
    # Ids checked as account ids: a junk record naming 'a/b' or 200 characters was read as
    # one and its streams asked for (502), one naming '' or one account twice answered 422.
    if (
        data.get("transaction_id") != transaction_id
        or not isinstance(source, str)
        or not isinstance(target, str)
        or ACCOUNT_ID.fullmatch(source) is None
        or ACCOUNT_ID.fullmatch(target) is None
        or source == target
        or type(amount) is not int
        or not (expires_at is None or isinstance(expires_at, str))
    ):
        return None
    status = "pending"
    for event_type, later in events[1:]:
        if event_type == HOLD_ENDED and later.get("status") in ("posted", "voided", "expired"):
            status = str(later["status"])
    return TransferRecord(transaction_id, source, target, amount, expires_at, status, len(events))


@dataclass(frozen=True, slots=True)
class _Written:
    """What `_run` wrote: the accounts after it, its two account events, the results."""

    source: Account
    target: Account
    events: tuple[Event, Event]
    results: list[AppendResult]

    @property
    def position(self) -> int:
        return max(p for r in self.results for p in r.positions)


def record_from_accounts(
    transaction_id: str, events: Sequence[RecordedEvent], version: int
) -> TransferRecord | None:
    """The record of a transfer from its account events (the stream service's index), or
    None when they hold no `PendingTransferSent` of it. `version`: the transfer stream's."""
    for recorded in events:
        if recorded.type != PendingTransferSent.TYPE:
            continue
        try:
            event = decode(recorded.type, recorded.data)
        except (ValueError, UnknownEvent):
            return None
        assert isinstance(event, PendingTransferSent)
        if event.transaction_id != transaction_id:
            return None
        return TransferRecord(
            transaction_id,
            event.account_id,
            event.to_account,
            event.amount,
            event.expires_at,
            ended_status(events) or "pending",
            version,
        )
    return None


def ended_status(events: Sequence[RecordedEvent]) -> str | None:
    """posted, voided or expired: the outcome among a transfer's account events, if any."""
    for recorded in events:
        if recorded.type == PendingTransferPosted.TYPE:
            return "posted"
        if recorded.type == PendingTransferVoided.TYPE:
            reason = recorded.data.get("reason")
            return EXPIRED if reason == EXPIRED else "voided"
    return None


class TwoPhaseTransfers:
    """Holds and their outcomes, run with the command handler's client, cache and locks."""

    def __init__(
        self, handler: CommandHandler, *, clock: Callable[[], datetime], secret: bytes
    ) -> None:
        self.handler = handler
        self.client = handler.client
        self.clock = clock
        self.secret = secret

    def now(self) -> str:
        return format_time(self.clock())

    # -- looking a transfer up --------------------------------------------------------------

    async def lookup(self, transaction_id: str) -> TransferRecord:
        """Where a two-phase transfer is: the transfer stream's record (one read), else, when
        that stream is missing or not a record (a hold written to the account streams by
        another writer), its `PendingTransferSent` found through the stream service's index
        of transaction ids. TransferNotFound when neither knows it."""
        check_transaction_id(transaction_id)
        # Only the first event is read: the stream is not guarded, and reading all of it let a
        # writer of 100,000 events there make every lookup of this id read them all. The
        # version (for the outcome's expected version) is the stream's, from the same page;
        # the status of later records is a hint nothing decides on.
        page = await self.client.read_stream(transfer_stream(transaction_id), to_version=1)
        record = record_of(transaction_id, [(e.type, dict(e.data)) for e in page.events])
        if record is not None:
            record = replace(record, version=page.version)
        if record is None:
            events = await self.client.read_transaction(transaction_id)
            record = record_from_accounts(transaction_id, events, page.version)
        if record is None:
            raise TransferNotFound(transaction_id)
        return record

    async def ended_as(self, transaction_id: str) -> str | None:
        """How a transfer ended, from its outcome events on the account streams (which the
        guard checked, unlike the transfer stream): posted, voided, expired, or None."""
        return ended_status(await self.client.read_transaction(transaction_id))

    async def status(self, transaction_id: str) -> TransferStatus:
        """A two-phase transfer: pending when its accounts hold it, else how its account
        events say it ended (TransferNotFound when neither knows it: a forged record)."""
        record = await self.lookup(transaction_id)
        source, target = await asyncio.gather(
            self.handler._load(record.from_account), self.handler._load(record.to_account)
        )
        if find_hold(source, target, transaction_id) is not None:
            # Past its deadline a hold can only expire: say so, as a post or void would.
            status: str | None = EXPIRED if is_due(record.expires_at, self.now()) else "pending"
        else:
            status = await self.ended_as(transaction_id)
        if status is None:
            raise TransferNotFound(transaction_id)
        return TransferStatus(
            transaction_id=transaction_id,
            from_account=record.from_account,
            to_account=record.to_account,
            amount=record.amount,
            status=status,
            expires_at=record.expires_at,
        )

    # -- phase one --------------------------------------------------------------------------

    async def hold(self, command: Transfer, ids: CommandIds) -> HoldResult:
        """Place the hold: the two account events and the transfer stream's record, in one
        atomic batch (the record's stream must not exist yet)."""
        assert command.pending
        record = NewEvent(
            id=ids.event_id(2),
            type=HOLD_RECORDED,
            schema_version=1,
            data={
                "transaction_id": command.transaction_id,
                "from_account": command.from_account,
                "to_account": command.to_account,
                "amount": command.amount,
                "expires_at": command.expires_at,
            },
            metadata=ids.metadata(),
        )
        append = StreamAppend(
            transfer_stream(command.transaction_id), StreamState.NO_STREAM, (record,)
        )

        async def third() -> StreamAppend:
            return append

        written = await self._run(
            command.from_account,
            command.to_account,
            lambda states: decide_transfer(states[0], states[1], command),
            ids,
            third,
        )
        if written is None:
            return _expect(await answer_bound_key(self.client, ids), HoldResult, ids)
        return HoldResult(
            transaction_id=command.transaction_id,
            from_account=command.from_account,
            to_account=command.to_account,
            amount=command.amount,
            expires_at=command.expires_at,
            from_balance=written.source.balance,
            from_available=written.source.available,
            to_balance=written.target.balance,
            position=written.position,
        )

    # -- phase two --------------------------------------------------------------------------

    async def post(self, transaction_id: str, amount: int | None, ids: CommandIds) -> OutcomeResult:
        """Post all (`amount` None) or part of the hold."""
        result = await self._end(
            transaction_id,
            lambda r, now: PostPendingTransfer(
                transaction_id, r.from_account, r.to_account, amount, now
            ),
            ids,
        )
        if result is None:
            return _expect(await answer_bound_key(self.client, ids), OutcomeResult, ids)
        return result

    async def void(self, transaction_id: str, ids: CommandIds) -> OutcomeResult:
        """Release the hold, moving nothing."""
        result = await self._end(
            transaction_id,
            lambda r, now: VoidPendingTransfer(transaction_id, r.from_account, r.to_account, now),
            ids,
        )
        if result is None:
            return _expect(await answer_bound_key(self.client, ids), OutcomeResult, ids)
        return result

    async def expire(self, transaction_id: str) -> OutcomeResult | None:
        """Write the expiry of a hold that is due; None when it is not pending (any more),
        not due yet, or its expiry was written by another instance meanwhile. Safe to run on
        every instance at once: see `expiry_ids`."""
        try:
            return await self._end(
                transaction_id,
                lambda r, now: ExpirePendingTransfer(
                    transaction_id, r.from_account, r.to_account, now
                ),
                expiry_ids(self.secret, transaction_id),
            )
        except (TransferNotFound, TransferNotPending):
            return None

    async def _end(
        self,
        transaction_id: str,
        make: Callable[[TransferRecord, str], HoldOutcome],
        ids: CommandIds,
    ) -> OutcomeResult | None:
        """The outcome written, or None when these ids were written already (a replay)."""
        record = await self.lookup(transaction_id)
        command = make(record, self.now())

        def decide(states: list[Account]) -> tuple[Event, Event]:
            return decide_outcome(states[0], states[1], command)

        attempts = 0

        async def ended() -> StreamAppend:
            # Read again at each retry: another outcome may have been recorded meanwhile.
            nonlocal record, attempts
            attempts += 1
            if attempts > 1:
                record = await self.lookup(transaction_id)
            event = NewEvent(
                id=ids.event_id(2),
                type=HOLD_ENDED,
                schema_version=1,
                data={"transaction_id": transaction_id, "status": _status(command)},
                metadata=ids.metadata(),
            )
            expected = record.version or StreamState.NO_STREAM
            return StreamAppend(transfer_stream(transaction_id), expected, (event,))

        try:
            written = await self._run(record.from_account, record.to_account, decide, ids, ended)
        except TransferNotFound:
            # The accounts do not hold it (any more): say how it ended, from its account
            # events (read now: the outcome that beat this one may be a moment old).
            how = await self.ended_as(transaction_id)
            if how is not None:
                raise TransferNotPending(transaction_id, status=how) from None
            raise
        if written is None:
            return None
        first = written.events[0]
        assert isinstance(first, PendingTransferPosted | PendingTransferVoided)
        return OutcomeResult(
            transaction_id=transaction_id,
            from_account=record.from_account,
            to_account=record.to_account,
            status=_status(command),
            amount=first.amount,
            held=record.amount,
            from_balance=written.source.balance,
            from_available=written.source.available,
            to_balance=written.target.balance,
            position=written.position,
        )

    # -- the loop: load, decide, append with expected versions, retry ------------------------

    async def _run(
        self,
        from_account: str,
        to_account: str,
        decide: Callable[[list[Account]], tuple[Event, Event]],
        ids: CommandIds,
        third: Callable[[], Awaitable[StreamAppend]],
    ) -> _Written | None:
        """Decide on both accounts and append the two events and `third()` atomically, each
        account at the version decided on; after a conflict, catch up and decide again.
        None when the command's own ids were found written (its first answer stands)."""
        handler = self.handler
        async with handler.locks.hold(from_account, to_account):
            for attempt in range(handler.max_retries + 1):
                if attempt:
                    await handler._retry(ids.command, attempt)
                try:
                    (source, target), (first, second) = await handler._decide(
                        (from_account, to_account), decide
                    )
                except DomainError:
                    if await handler._written_meanwhile(ids) is not None:
                        return None
                    raise
                appends = [
                    StreamAppend(
                        stream_name(from_account), source.version, _new_events([first], ids)
                    ),
                    StreamAppend(
                        stream_name(to_account),
                        target.version,
                        _new_events([second], ids, first_index=1),
                    ),
                    await third(),
                ]
                try:
                    results = await self.client.append_batch(appends)
                except WrongExpectedVersion:
                    if await handler._catch_up(ids, source, target):
                        return None
                    continue
                except DuplicateEventId:
                    handler._forget(from_account, to_account)
                    return None
                except BaseException:
                    handler._forget(from_account, to_account)
                    raise
                if any(r.replayed for r in results):
                    handler._forget(from_account, to_account)
                    return None
                source_after = handler._remember(
                    source, evolve(source, first), results[0], ids.event_id(0)
                )
                target_after = handler._remember(
                    target, evolve(target, second), results[1], ids.event_id(1)
                )
                return _Written(source_after, target_after, (first, second), results)
        raise TooMuchContention(
            f"the accounts {from_account!r} and {to_account!r} kept changing during "
            f"{handler.max_retries + 1} attempts; nothing was written"
        )


def _status(command: HoldOutcome) -> str:
    if isinstance(command, PostPendingTransfer):
        return "posted"
    return EXPIRED if isinstance(command, ExpirePendingTransfer) else "voided"


def _expect(result: object, kind: type[_R], ids: CommandIds) -> _R:
    """A replay of the same method, path and body is of the same kind; anything else means
    the key was bound by another request."""
    if not isinstance(result, kind):
        raise IdempotencyKeyReused(ids.key or "")
    return result
