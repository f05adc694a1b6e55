"""The accounting read model's queries: SQL in, plain data out. Each takes a read session."""

from __future__ import annotations

from eventledger.services.accounting.projection import Account, HistoryItem
from eventledger.services.accounting.store import (
    ACCOUNT_COLUMNS,
    ITEM_COLUMNS,
    account_from_row,
    item_from_row,
)
from eventledger.services.readside.db import Session


def get_account(session: Session, account_id: str) -> Account | None:
    row = session.fetchone(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?", (account_id,)
    )
    return None if row is None else account_from_row(row)


def list_accounts(session: Session, *, after: str | None, limit: int) -> list[Account]:
    """Accounts ordered by id, those after `after` only; at most `limit`."""
    rows = session.fetchall(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id > ? ORDER BY account_id LIMIT ?",
        (after or "", limit),
    )
    return [account_from_row(r) for r in rows]


def history(
    session: Session, account_id: str, *, before: int | None, limit: int
) -> list[HistoryItem]:
    """Movements of one account, newest first, those below position `before` only."""
    rows = session.fetchall(
        f"SELECT {ITEM_COLUMNS} FROM transactions WHERE account_id = ? AND position < ? "
        "ORDER BY position DESC LIMIT ?",
        (account_id, before if before is not None else 2**63 - 1, limit),
    )
    return [item_from_row(r) for r in rows]


def balance_at_position(session: Session, account: Account, position: int) -> tuple[int, int]:
    """(balance, position of the last event that set it) after every event up to `position`.
    The account must have been opened at or before `position`."""
    row = session.fetchone(
        "SELECT balance_after, position FROM transactions "
        "WHERE account_id = ? AND position <= ? ORDER BY position DESC LIMIT 1",
        (account.account_id, position),
    )
    return (0, account.opened_position) if row is None else (int(row[0]), int(row[1]))


def balance_at_time(session: Session, account: Account, at: str) -> tuple[int, int]:
    """(balance, position of the last event that set it) as of the RFC 3339 UTC time `at`
    (in the stored form). The account must have been opened at or before `at`."""
    row = session.fetchone(
        "SELECT balance_after, position FROM transactions "
        "WHERE account_id = ? AND recorded_at <= ? "
        "ORDER BY recorded_at DESC, position DESC LIMIT 1",
        (account.account_id, at),
    )
    return (0, account.opened_position) if row is None else (int(row[0]), int(row[1]))
