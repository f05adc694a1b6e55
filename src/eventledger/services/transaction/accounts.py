"""Account state on the command side: folded from the stream service, cached, locked.

* `fold_recorded` turns recorded events into an `Account` with the domain's `evolve`, each
  checked first with the validity rule the readers apply: a history that breaks it is not
  decided on (`InvalidAccountHistory`, answered 500 `invalid-account-history`).
* `AccountCache` keeps the folded state of recently used accounts, keyed by its version.
  A cached state is only ever a guess: the expected-version check of the append decides,
  and a conflict drops the entry. A refusal decided on a cached state is checked again on
  fresh state before it is answered (see `handlers`).
* `AccountLocks` serialises commands per account inside one instance, so one instance never
  conflicts with itself; several instances still stay correct thanks to expected versions.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

from eventledger.domain.account import Account, evolve, facts_of, initial_state
from eventledger.domain.errors import InvalidAccountEvent
from eventledger.domain.events import stream_name
from eventledger.domain.validity import check_event, decode_event
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.transaction.stream_client import StreamClient

DEFAULT_CACHE_SIZE = 10_000


class InvalidAccountHistory(Exception):
    """Raised when the stored events of an account break the account rules
    (`domain.validity`): written before the rule, or behind the stream service's back. No
    command is decided on such a history; the read models halt at the same event."""

    def __init__(self, stream: str, version: int, position: int, reason: str) -> None:
        super().__init__(
            f"the stored event at version {version} (position {position}) of stream "
            f"{stream!r} breaks the account rules: {reason}"
        )
        self.stream = stream
        self.version = version
        self.position = position
        self.reason = reason


def fold_recorded(state: Account, events: Iterable[RecordedEvent]) -> Account:
    """`state` after the recorded events, which must follow it in its stream; each is checked
    with the validity rule the readers apply (InvalidAccountHistory otherwise)."""
    for recorded in events:
        try:
            event = decode_event(
                recorded.type, recorded.data, schema_version=recorded.schema_version
            )
            check_event(facts_of(state), event, stream_version=recorded.stream_version)
        except InvalidAccountEvent as exc:
            raise InvalidAccountHistory(
                recorded.stream, recorded.stream_version, recorded.position, exc.reason
            ) from None
        state = evolve(state, event)
    return state


async def load_account(
    client: StreamClient, account_id: str, *, to_version: int | None = None
) -> Account:
    """The account folded from its whole stream (or up to `to_version`)."""
    page = await client.read_stream(stream_name(account_id), to_version=to_version)
    return fold_recorded(initial_state(account_id), page.events)


async def catch_up(client: StreamClient, state: Account) -> Account:
    """`state` brought up to date by reading only the events after its version."""
    return (await read_after(client, state))[0]


async def read_after(
    client: StreamClient, state: Account
) -> tuple[Account, tuple[RecordedEvent, ...]]:
    """`catch_up`, and the events it folded (the whole stream when it had to start over)."""
    stream = stream_name(state.account_id)
    if state.version > 0:
        page = await client.read_stream(stream, from_version=state.version + 1)
        if page.version >= state.version:
            return fold_recorded(state, page.events), page.events
        # The stream is shorter than what we folded (a store that was reset): start over.
    page = await client.read_stream(stream)
    return fold_recorded(initial_state(state.account_id), page.events), page.events


class AccountCache:
    """The folded state of the most recently used accounts (LRU, bounded)."""

    def __init__(self, max_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._max_size = max_size
        self._states: OrderedDict[str, Account] = OrderedDict()

    def get(self, account_id: str) -> Account | None:
        state = self._states.get(account_id)
        if state is not None:
            self._states.move_to_end(account_id)
        return state

    def put(self, state: Account) -> None:
        # Accounts that do not exist are not kept: unknown ids would only fill the cache.
        if not state.exists or self._max_size <= 0:
            self.drop(state.account_id)
            return
        self._states[state.account_id] = state
        self._states.move_to_end(state.account_id)
        while len(self._states) > self._max_size:
            self._states.popitem(last=False)

    def offer(self, state: Account) -> None:
        """`put`, unless the entry is already further (the log follower advanced it while a
        command of this instance waited for its answer)."""
        cached = self._states.get(state.account_id)
        if cached is not None and cached.version > state.version:
            self._states.move_to_end(state.account_id)
            return
        self.put(state)

    def peek(self, account_id: str) -> Account | None:
        """The cached state, without counting as a use (the log follower's look)."""
        return self._states.get(account_id)

    def advance(self, state: Account) -> None:
        """Replace the entry of this account, if still cached, in place (no use counted)."""
        if state.account_id in self._states:
            self._states[state.account_id] = state

    def drop(self, account_id: str) -> None:
        self._states.pop(account_id, None)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


class AccountLocks:
    """One asyncio lock per account, created on demand and forgotten when nobody holds or
    waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, *account_ids: str) -> AsyncIterator[None]:
        """Hold the locks of these accounts. Always taken in sorted order, so that two
        transfers between the same accounts in opposite directions cannot deadlock."""
        async with AsyncExitStack() as stack:
            for account_id in sorted(set(account_ids)):
                await stack.enter_async_context(self._one(account_id))
            yield

    @asynccontextmanager
    async def _one(self, account_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(account_id)
        if lock is None:
            lock = self._locks[account_id] = asyncio.Lock()
        self._users[account_id] = self._users.get(account_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[account_id] -= 1
            if self._users[account_id] == 0:
                del self._users[account_id]
                del self._locks[account_id]

    def __len__(self) -> int:
        return len(self._locks)
