"""A typed Python client of eventledger's public API, synchronous and asynchronous.

    from eventledger.client import Client, InsufficientFunds

    with Client(token="…") as ledger:            # or EVENTLEDGER_TOKEN; default local ports
        ledger.open_account("EUR", account_id="alice")
        moved = ledger.deposit("alice", 10_000, reference="salary")
        print(moved.balance, moved.position)     # 10000, the consistency token
        alice = ledger.consistent_with(moved).account("alice")  # waits for position
        try:
            ledger.withdraw("alice", 1_000_000)
        except InsufficientFunds as refused:
            print(refused.detail)

`AsyncClient` has the same methods, awaited (`async with AsyncClient() as ledger: …`;
`async for event in ledger.subscribe(after=0)`). Modules: `calls` (every operation as a
request and the reading of its answer: no I/O), `core` (what runs a call: config, retry
policy, SSE parser), `sync` and `aio` (the two clients), `models`, `events`, `holds`,
`reversals` and `rebuilds` (the frozen results), `errors` (the exception tree).
"""

from __future__ import annotations

from eventledger.client.aio import AsyncClient
from eventledger.client.errors import (
    AccountClosed,
    AccountExists,
    AccountNotFound,
    AmountExceedsHold,
    BalanceNotZero,
    BalanceOutOfRange,
    Conflict,
    CurrencyMismatch,
    EventLedgerError,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    NotCaughtUp,
    NotFound,
    NotHaltedHere,
    NotRebuilding,
    PendingTransfers,
    ProblemError,
    RateLimited,
    Rebuilding,
    RebuildInProgress,
    SameAccountTransfer,
    StreamNotFound,
    TransferNotFound,
    TransferNotPending,
    TransportError,
    Unauthenticated,
    Unavailable,
    UnexpectedResponse,
    ValidationError,
    WrongExpectedVersion,
)
from eventledger.client.events import Appended, LogPage, NewEvent, RecordedEvent, StreamPage
from eventledger.client.holds import Hold, HoldOutcome, TransferState
from eventledger.client.models import (
    Account,
    AccountOpened,
    BalanceAt,
    CurrencyStats,
    DailyStats,
    DayStats,
    Decision,
    HistoryItem,
    MoneyMoved,
    Movements,
    Page,
    PendingTransfer,
    ReadModelHealth,
    Stats,
    Transfer,
    TwoPhaseStats,
)
from eventledger.client.models import AccountClosed as AccountClosedResult
from eventledger.client.rebuilds import BlueGreenBuild, RebuildStatus
from eventledger.client.sync import Client

__all__ = [
    "Account",
    "AccountClosed",
    "AccountClosedResult",
    "AccountExists",
    "AccountNotFound",
    "AccountOpened",
    "AmountExceedsHold",
    "Appended",
    "AsyncClient",
    "BalanceAt",
    "BalanceNotZero",
    "BalanceOutOfRange",
    "BlueGreenBuild",
    "Client",
    "Conflict",
    "CurrencyMismatch",
    "CurrencyStats",
    "DailyStats",
    "DayStats",
    "Decision",
    "EventLedgerError",
    "Forbidden",
    "HistoryItem",
    "Hold",
    "HoldOutcome",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "LogPage",
    "MoneyMoved",
    "Movements",
    "NewEvent",
    "NotCaughtUp",
    "NotFound",
    "NotHaltedHere",
    "NotRebuilding",
    "Page",
    "PendingTransfer",
    "PendingTransfers",
    "ProblemError",
    "RateLimited",
    "ReadModelHealth",
    "RebuildInProgress",
    "RebuildStatus",
    "Rebuilding",
    "RecordedEvent",
    "SameAccountTransfer",
    "Stats",
    "StreamNotFound",
    "StreamPage",
    "Transfer",
    "TransferNotFound",
    "TransferNotPending",
    "TransferState",
    "TransportError",
    "TwoPhaseStats",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedResponse",
    "ValidationError",
    "WrongExpectedVersion",
]
