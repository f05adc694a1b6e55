"""The accounting read model's tables, and the writer that applies a batch of events to them.

Thin SQL: the rows are computed by the pure `projection.evolve`; this module loads the rows a
batch touches, folds the batch in memory and writes each changed account once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.projection import (
    Account,
    HistoryItem,
    Kind,
    account_id_of,
    evolve_commit,
)
from eventledger.services.readside.commits import commit_groups
from eventledger.services.readside.db import Migration, Row, Session
from eventledger.services.readside.projection import EventRejected

NAME = "accounting"

MIGRATIONS: Sequence[Migration] = (
    (
        """CREATE TABLE accounts (
            account_id TEXT PRIMARY KEY,
            currency TEXT NOT NULL,
            balance BIGINT NOT NULL,
            overdraft_limit BIGINT NOT NULL,
            owner TEXT,
            status TEXT NOT NULL,
            version BIGINT NOT NULL,
            opened_at TEXT NOT NULL,
            opened_position BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            position BIGINT NOT NULL
        )""",
        # `amount` is signed; `recorded_at` is RFC 3339 UTC with microseconds and a `Z`, so
        # text order is time order on both databases.
        """CREATE TABLE transactions (
            account_id TEXT NOT NULL,
            position BIGINT NOT NULL,
            transaction_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            amount BIGINT NOT NULL,
            balance_after BIGINT NOT NULL,
            counterparty TEXT,
            reference TEXT,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (account_id, position)
        )""",
        "CREATE INDEX transactions_by_time ON transactions (account_id, recorded_at, position)",
    ),
)

ACCOUNT_COLUMNS = (
    "account_id, currency, balance, overdraft_limit, owner, status, version, "
    "opened_at, opened_position, updated_at, position"
)
ITEM_COLUMNS = (
    "account_id, position, transaction_id, kind, amount, balance_after, counterparty, "
    "reference, recorded_at"
)

_UPSERT_ACCOUNT = (
    f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (account_id) DO UPDATE SET balance = excluded.balance, "
    "status = excluded.status, version = excluded.version, "
    "updated_at = excluded.updated_at, position = excluded.position"
)
_INSERT_ITEM = f"INSERT INTO transactions ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def account_from_row(row: Row) -> Account:
    return Account(
        account_id=row[0],
        currency=row[1],
        balance=int(row[2]),
        overdraft_limit=int(row[3]),
        owner=row[4],
        status="closed" if row[5] == "closed" else "open",
        version=int(row[6]),
        opened_at=row[7],
        opened_position=int(row[8]),
        updated_at=row[9],
        position=int(row[10]),
    )


def item_from_row(row: Row) -> HistoryItem:
    kind: Kind = row[3]
    return HistoryItem(
        account_id=row[0],
        position=int(row[1]),
        transaction_id=row[2],
        kind=kind,
        amount=int(row[4]),
        balance_after=int(row[5]),
        counterparty=row[6],
        reference=row[7],
        recorded_at=row[8],
    )


def load_accounts(session: Session, account_ids: Iterable[str]) -> dict[str, Account]:
    ids = sorted(set(account_ids))
    found: dict[str, Account] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in session.fetchall(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id IN ({marks})", chunk
        ):
            account = account_from_row(row)
            found[account.account_id] = account
    return found


class AccountingProjection:
    """Balances and histories of every account, from the `account-<id>` streams."""

    name = NAME
    migrations = MIGRATIONS

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        accounts = load_accounts(
            session, (a for a in (account_id_of(e.stream) for e in events) if a is not None)
        )
        changed: dict[str, Account] = {}
        items: list[HistoryItem] = []
        rejected: EventRejected | None = None
        # One atomic append at a time: some rules (transfers come in pairs) span an append.
        for group, whole in commit_groups(events):
            changes, rejected = evolve_commit(accounts, group, whole=whole)
            for change in changes:
                account = change.account
                accounts[account.account_id] = changed[account.account_id] = account
                if change.item is not None:
                    items.append(change.item)
            if rejected is not None:
                break
        if changed:
            session.executemany(
                _UPSERT_ACCOUNT,
                [
                    (
                        a.account_id,
                        a.currency,
                        a.balance,
                        a.overdraft_limit,
                        a.owner,
                        a.status,
                        a.version,
                        a.opened_at,
                        a.opened_position,
                        a.updated_at,
                        a.position,
                    )
                    for a in changed.values()
                ],
            )
        if items:
            session.executemany(
                _INSERT_ITEM,
                [
                    (
                        i.account_id,
                        i.position,
                        i.transaction_id,
                        i.kind,
                        i.amount,
                        i.balance_after,
                        i.counterparty,
                        i.reference,
                        i.recorded_at,
                    )
                    for i in items
                ],
            )
        return rejected

    def reset(self, session: Session) -> None:
        session.execute("DELETE FROM transactions")
        session.execute("DELETE FROM accounts")
