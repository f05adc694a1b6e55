"""Command handling, framework-free: the stream client and the caches come in as parameters.

Every command goes through the same four steps (the Decider pattern):

1. load the account stream(s) — or take the cached folded state;
2. fold them into the `Account` state (`accounts.fold_recorded`);
3. `decide` (or `decide_transfer`): the events, or a DomainError refusing the command;
4. append with the expected version = the version folded. On `wrong-expected-version`
   somebody else wrote first: read only the events after the version held (`catch_up`) and
   decide again at once; only when conflicts repeat (from the third attempt) wait a small
   jittered backoff first, a bounded number of times. Contention alone never refuses a
   command.

Inside one instance, commands on one account are serialised by a lock, so the instance
never conflicts with itself; across instances the expected version keeps the rules, and the
cache follows the log (`follower`), so a conflict means two commands really met.

Idempotency (see `idempotency`, `replays`): with a key, the event ids are derived from the
key, so the store itself tells whether the key is bound: an append whose ids are already
stored (replayed, or `duplicate-event-id`) answers the original result, rebuilt from the log
(or 422 when the key was bound by another request). The log is looked up by id only when
that is the only way to know: before answering a refusal (the first request may have been
accepted when the account allowed it). After a version conflict the events read to catch up
show whether a request with the same key wrote meanwhile. So a fresh keyed command costs one
append, like a command without a key.

    TooMuchContention     the append still conflicted after every retry (answer 503)
    IdempotencyKeyReused  the key is bound to another request (answer 422)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from uuid import UUID

from eventledger.domain.account import Account, decide, decide_transfer, evolve
from eventledger.domain.commands import CloseAccount, Deposit, OpenAccount, Transfer, Withdraw
from eventledger.domain.errors import DomainError
from eventledger.domain.events import Event, stream_name
from eventledger.eventstore.records import AppendResult, NewEvent, StreamAppend
from eventledger.services.transaction.accounts import (
    AccountCache,
    AccountLocks,
    catch_up,
    load_account,
    read_after,
)
from eventledger.services.transaction.idempotency import CommandIds, IdempotencyKeyReused
from eventledger.services.transaction.replays import answer_bound_key, find_replay
from eventledger.services.transaction.results import (
    AccountClosedResult,
    AccountOpenedResult,
    MoneyMovedResult,
    Result,
    TransferResult,
    result_of,
)
from eventledger.services.transaction.snapshots import Snapshots
from eventledger.services.transaction.stream_client import (
    DuplicateEventId,
    StreamClient,
    WrongExpectedVersion,
)

DEFAULT_MAX_RETRIES = 25
# The first retry after a conflict decides again at once (the events that beat us are read
# and folded; waiting would not make them more current); from this attempt on conflicts
# repeat, so competing writers are spread out by a jittered backoff.
BACKOFF_FROM_ATTEMPT = 2

T = TypeVar("T")


class TooMuchContention(Exception):
    """Raised when an append still met another writer after every retry. Nothing was written:
    the command can be sent again."""


async def jittered_backoff(attempt: int) -> None:
    """Wait a random 0..min(50 ms, 1 ms·2^attempt) so that competing writers spread out."""
    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _new_events(events: Sequence[Event], ids: CommandIds, first_index: int = 0) -> list[NewEvent]:
    metadata = ids.metadata()
    return [
        NewEvent(
            id=ids.event_id(first_index + i),
            type=event.TYPE,
            schema_version=event.SCHEMA_VERSION,
            data=event.to_data(),
            metadata=metadata,
        )
        for i, event in enumerate(events)
    ]


def _apply(state: Account, events: Sequence[Event]) -> Account:
    for event in events:
        state = evolve(state, event)
    return state


class CommandHandler:
    """Runs commands against the stream service."""

    def __init__(
        self,
        client: StreamClient,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        cache: AccountCache | None = None,
        locks: AccountLocks | None = None,
        on_retry: Callable[[str], None] | None = None,
        backoff: Callable[[int], Awaitable[None]] = jittered_backoff,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.client = client
        self.max_retries = max_retries
        self.cache = cache if cache is not None else AccountCache()
        self.locks = locks if locks is not None else AccountLocks()
        self._on_retry = on_retry
        self._backoff = backoff
        self.snapshots = snapshots

    # -- the commands -----------------------------------------------------------------------

    async def open_account(self, command: OpenAccount, ids: CommandIds) -> AccountOpenedResult:
        result = await self._run_single(command.account_id, command, ids)
        return _expect(result, AccountOpenedResult, ids)

    async def deposit(self, command: Deposit, ids: CommandIds) -> MoneyMovedResult:
        return _expect(
            await self._run_single(command.account_id, command, ids), MoneyMovedResult, ids
        )

    async def withdraw(self, command: Withdraw, ids: CommandIds) -> MoneyMovedResult:
        return _expect(
            await self._run_single(command.account_id, command, ids), MoneyMovedResult, ids
        )

    async def close_account(self, command: CloseAccount, ids: CommandIds) -> AccountClosedResult:
        result = await self._run_single(command.account_id, command, ids)
        return _expect(result, AccountClosedResult, ids)

    async def transfer(self, command: Transfer, ids: CommandIds) -> TransferResult:
        async with self.locks.hold(command.from_account, command.to_account):
            for attempt in range(self.max_retries + 1):
                if attempt:
                    await self._retry(ids.command, attempt)
                try:
                    (source, target), (sent, received) = await self._decide(
                        (command.from_account, command.to_account),
                        lambda states: decide_transfer(states[0], states[1], command),
                    )
                except DomainError:
                    if (replay := await self._written_meanwhile(ids)) is not None:
                        return _expect(replay, TransferResult, ids)
                    raise
                appends = [
                    StreamAppend(
                        stream_name(source.account_id), source.version, _new_events([sent], ids)
                    ),
                    StreamAppend(
                        stream_name(target.account_id),
                        target.version,
                        _new_events([received], ids, first_index=1),
                    ),
                ]
                try:
                    results = await self.client.append_batch(appends)
                except WrongExpectedVersion:
                    if await self._catch_up(ids, source, target):
                        return _expect(
                            await answer_bound_key(self.client, ids), TransferResult, ids
                        )
                    continue
                except DuplicateEventId:
                    self._forget(source.account_id, target.account_id)
                    return _expect(await answer_bound_key(self.client, ids), TransferResult, ids)
                except BaseException:
                    self._forget(source.account_id, target.account_id)
                    raise
                if any(r.replayed for r in results):
                    self._forget(source.account_id, target.account_id)
                    return _expect(await answer_bound_key(self.client, ids), TransferResult, ids)
                source_after = self._remember(
                    source, _apply(source, [sent]), results[0], ids.event_id(0)
                )
                target_after = self._remember(
                    target, _apply(target, [received]), results[1], ids.event_id(1)
                )
                return TransferResult(
                    transaction_id=command.transaction_id,
                    from_account=command.from_account,
                    to_account=command.to_account,
                    amount=command.amount,
                    from_balance=source_after.balance,
                    from_available=source_after.available,
                    to_balance=target_after.balance,
                    position=max(p for r in results for p in r.positions),
                )
        raise TooMuchContention(
            f"the accounts {command.from_account!r} and {command.to_account!r} kept changing "
            f"during {self.max_retries + 1} attempts; nothing was written"
        )

    # -- one account: the four steps --------------------------------------------------------

    async def _run_single(
        self,
        account_id: str,
        command: OpenAccount | Deposit | Withdraw | CloseAccount,
        ids: CommandIds,
    ) -> Result:
        async with self.locks.hold(account_id):
            for attempt in range(self.max_retries + 1):
                if attempt:
                    await self._retry(ids.command, attempt)
                # 1-3: load (or take from the cache), fold, decide.
                try:
                    (state,), events = await self._decide(
                        (account_id,), lambda s: decide(s[0], command)
                    )
                except DomainError:
                    # A refusal now does not undo an acceptance then: a bound key answers
                    # its first response.
                    if (replay := await self._written_meanwhile(ids)) is not None:
                        return replay
                    raise
                # 4: append, expecting the version we decided on.
                try:
                    result = await self.client.append(
                        stream_name(account_id),
                        expected_version=state.version,
                        events=_new_events(events, ids),
                    )
                except WrongExpectedVersion:
                    if await self._catch_up(ids, state):
                        return await answer_bound_key(self.client, ids)
                    continue
                except DuplicateEventId:
                    self._forget(account_id)
                    return await answer_bound_key(self.client, ids)
                except BaseException:
                    self._forget(account_id)
                    raise
                if result.replayed:
                    self._forget(account_id)
                    return await answer_bound_key(self.client, ids)
                after = self._remember(
                    state, _apply(state, events), result, ids.event_id(len(events) - 1)
                )
                return result_of(events[-1], after, result.positions[-1])
        raise TooMuchContention(
            f"account {account_id!r} kept changing during {self.max_retries + 1} attempts; "
            "nothing was written"
        )

    async def _decide(
        self, account_ids: Sequence[str], decider: Callable[[list[Account]], T]
    ) -> tuple[list[Account], T]:
        """Steps 1-3: the states of the accounts and the decision taken on them.

        Cached states are used as they are when the decision accepts the command (the
        expected version of the append checks them); a refusal decided on a cached state is
        decided again on fresh state, so that no command is refused on stale knowledge."""
        cached = [self.cache.get(a) for a in account_ids]
        states = [c for c in cached if c is not None]
        if len(states) < len(cached):
            # Only then gather: it makes a task per account and waits a turn of the loop.
            states = list(
                await asyncio.gather(
                    *(
                        _ready(c) if c is not None else self._load(a)
                        for a, c in zip(account_ids, cached, strict=True)
                    )
                )
            )
        for state in states:
            self.cache.put(state)
        try:
            return states, decider(states)
        except DomainError:
            if all(c is None for c in cached):
                raise
        states = list(
            await asyncio.gather(
                *(
                    catch_up(self.client, s) if c is not None else _ready(s)
                    for s, c in zip(states, cached, strict=True)
                )
            )
        )
        for state in states:
            self.cache.put(state)
        return states, decider(states)

    async def _written_meanwhile(self, ids: CommandIds) -> Result | None:
        """After a refusal or a conflict: did a request with the same key write (earlier, or
        on another instance)? Its answer is ours then, whatever deciding on the new state
        says."""
        return None if ids.key is None else await find_replay(self.client, ids)

    async def _catch_up(self, ids: CommandIds, *states: Account) -> bool:
        """After a conflict: the states we decided on, brought up to date by reading only the
        events that follow them, are what the next attempt decides on. True when those
        events include this command's own (a request with the same key wrote meanwhile,
        maybe on another instance): its answer is ours then. So a conflict needs no lookup
        by id; a key bound before the version held meets `duplicate-event-id` instead."""
        try:
            caught_up = await asyncio.gather(*(read_after(self.client, s) for s in states))
        except BaseException:
            self._forget(*(s.account_id for s in states))
            raise
        own = {ids.event_id(i) for i in range(2)} if ids.key is not None else set()
        written = False
        for state, events in caught_up:
            written = written or any(e.id in own for e in events)
            self.cache.offer(state)  # the follower may have brought the entry further
        return written

    async def _retry(self, command: str, attempt: int) -> None:
        if self._on_retry is not None:
            self._on_retry(command)
        if attempt >= BACKOFF_FROM_ATTEMPT:
            await self._backoff(attempt)

    async def _load(self, account_id: str) -> Account:
        """An account not cached: from its latest trusted snapshot, or its whole stream."""
        if self.snapshots is not None:
            return await self.snapshots.load(self.client, account_id)
        return await load_account(self.client, account_id)

    def _remember(
        self, before: Account, state: Account, result: AppendResult, last_event_id: UUID
    ) -> Account:
        if state.version == result.last_version:
            self.cache.offer(state)
            if self.snapshots is not None:  # kept off the hot path, every N events
                self.snapshots.note(state, last_event_id, before.version)
        else:  # cannot happen with a sound stream service; do not trust the guess then
            self.cache.drop(state.account_id)
        return state

    def _forget(self, *account_ids: str) -> None:
        for account_id in account_ids:
            self.cache.drop(account_id)


async def _ready(state: Account) -> Account:
    return state


def _expect(result: Result, kind: type[T], ids: CommandIds) -> T:
    """A replay of the same method, path and body is of the same kind; anything else means
    the key was bound by another request."""
    if not isinstance(result, kind):
        raise IdempotencyKeyReused(ids.key or "")
    return result
