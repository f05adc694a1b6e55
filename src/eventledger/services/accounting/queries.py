"""The accounting read model's queries: SQL in, plain data out. Each takes a read session."""

from __future__ import annotations

from dataclasses import dataclass

from eventledger.services.accounting.projection import Account, HistoryItem, Hold
from eventledger.services.accounting.store import (
    ACCOUNT_COLUMNS,
    HOLD_COLUMNS,
    ITEM_COLUMNS,
    account_from_row,
    hold_from_row,
    item_from_row,
)
from eventledger.services.readside.db import Row, Session


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


# The reversal of an item, on the same account (a reversal touches every account the
# original did): one index seek per item of the page (transactions_by_reverses).
_REVERSED_BY = (
    "(SELECT r.transaction_id FROM transactions r"
    " WHERE r.account_id = t.account_id AND r.reverses = t.transaction_id LIMIT 1)"
)


def history(
    session: Session, account_id: str, *, before: int | None, limit: int
) -> list[HistoryItem]:
    """Movements of one account, newest first, those below position `before` only."""
    rows = session.fetchall(
        f"SELECT {ITEM_COLUMNS}, {_REVERSED_BY} FROM transactions t"
        " WHERE account_id = ? AND position < ? ORDER BY position DESC LIMIT ?",
        (account_id, before if before is not None else 2**63 - 1, limit),
    )
    return [item_from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class BalanceThen:
    """An account's sums as they were after the event at `position` (the last that set them)."""

    balance: int
    pending_debits: int
    pending_credits: int
    position: int

    @property
    def available(self) -> int:
        return self.balance - self.pending_debits


_THEN = "SELECT balance_after, pending_debits_after, pending_credits_after, position "


def _then(account: Account, row: Row | None) -> BalanceThen:
    # Every event that changes one of the sums adds a history item (a hold too, at amount 0),
    # so the last item says all three; before the first, the account was opened at zero.
    if row is None:
        return BalanceThen(0, 0, 0, account.opened_position)
    return BalanceThen(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def balance_at_position(session: Session, account: Account, position: int) -> BalanceThen:
    """The sums after every event up to `position`. The account must have been opened at or
    before `position`."""
    row = session.fetchone(
        f"{_THEN}FROM transactions WHERE account_id = ? AND position <= ? "
        "ORDER BY position DESC LIMIT 1",
        (account.account_id, position),
    )
    return _then(account, row)


def balance_at_time(session: Session, account: Account, at: str) -> BalanceThen:
    """The sums as of the RFC 3339 UTC time `at` (in the stored form). The account must have
    been opened at or before `at`."""
    row = session.fetchone(
        f"{_THEN}FROM transactions WHERE account_id = ? AND recorded_at <= ? "
        "ORDER BY recorded_at DESC, position DESC LIMIT 1",
        (account.account_id, at),
    )
    return _then(account, row)


def pending_transfers(
    session: Session, account_id: str, *, after: int | None, limit: int
) -> list[Hold]:
    """The transfers pending on one account, oldest first, those after position `after`."""
    rows = session.fetchall(
        f"SELECT {HOLD_COLUMNS} FROM pending_transfers WHERE account_id = ? AND position > ? "
        "ORDER BY position LIMIT ?",
        (account_id, after if after is not None else 0, limit),
    )
    return [hold_from_row(r) for r in rows]
