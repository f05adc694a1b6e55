"""The client's read models of two-phase transfers: what it makes of the accounting and
statistics answers, and of answers from a server that predates them (no holds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from eventledger.client import models as m

ACCOUNT: dict[str, Any] = {
    "account_id": "a",
    "currency": "EUR",
    "balance": 1000,
    "overdraft_limit": 0,
    "owner": None,
    "status": "open",
    "version": 3,
    "opened_at": "2026-11-27T10:00:00.000000Z",
    "updated_at": "2026-11-27T10:00:05.000000Z",
    "position": 9,
}


def test_an_account_reads_its_available_balance_and_pending_sums() -> None:
    body = ACCOUNT | {"available": 600, "pending_debits": 400, "pending_credits": 5}
    account = m.Account.from_json(body)
    assert (account.available, account.pending_debits, account.pending_credits) == (600, 400, 5)


def test_an_account_from_a_server_without_holds_has_its_balance_available() -> None:
    account = m.Account.from_json(ACCOUNT)
    assert (account.balance, account.available, account.pending_debits) == (1000, 1000, 0)


def test_a_history_item_reads_its_hold_and_available_after() -> None:
    body = {
        "transaction_id": "t",
        "kind": "transfer_pending",
        "amount": 0,
        "balance_after": 1000,
        "available_after": 600,
        "held": -400,
        "counterparty": "b",
        "reference": None,
        "recorded_at": "2026-11-27T10:00:05.000000Z",
        "position": 9,
    }
    item = m.HistoryItem.from_json(body)
    assert (item.kind, item.amount, item.held, item.available_after) == (
        "transfer_pending",
        0,
        -400,
        600,
    )
    old = m.HistoryItem.from_json(
        {k: v for k, v in body.items() if k not in ("held", "available_after")}
    )
    assert (old.held, old.available_after) == (None, 1000)


def test_a_pending_transfer_reads_its_expiry() -> None:
    transfer = m.PendingTransfer.from_json(
        {
            "transaction_id": "t",
            "direction": "in",
            "counterparty": "c",
            "amount": 5,
            "reference": "r",
            "expires_at": "2026-11-27T10:05:00.000000Z",
            "recorded_at": "2026-11-27T10:00:05.000000Z",
            "position": 12,
        }
    )
    assert transfer.expires_at == datetime(2026, 11, 27, 10, 5, tzinfo=UTC)
    assert (transfer.direction, transfer.amount) == ("in", 5)


def test_statistics_read_two_phase_counters_and_tolerate_their_absence() -> None:
    movements = {"count": 0, "volume": 0}
    currency: dict[str, Any] = {
        "accounts": {"open": 2, "closed": 0},
        "total_balance": 5000,
        "deposits": movements,
        "withdrawals": movements,
        "transfers": movements,
    }
    two_phase = {
        "placed": {"count": 4, "volume": 1000},
        "pending": {"count": 1, "volume": 100},
        "posted": {"count": 1, "volume": 350},
        "voided": {"count": 1, "volume": 300},
        "expired": {"count": 1, "volume": 200},
    }
    stats = m.Stats.from_json(
        {"position": 9, "currencies": {"EUR": currency | {"two_phase": two_phase}}}
    )
    counted = stats.currencies["EUR"].two_phase
    assert counted is not None and counted.pending == m.Movements(1, 100)
    assert counted.posted == m.Movements(1, 350)
    old = m.Stats.from_json({"position": 9, "currencies": {"EUR": currency}})
    assert old.currencies["EUR"].two_phase == m.TwoPhaseStats(*[m.Movements(0, 0)] * 5)
