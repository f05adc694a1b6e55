"""The accounting read model's tables, and the writer that applies a batch of events to them.

Thin SQL: the rows are computed by the pure `projection.evolve`; this module loads the rows a
batch touches, folds the batch in memory and writes each changed account once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from operator import itemgetter

from eventledger.domain.pending import CREDIT, DEBIT
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting.projection import (
    Account,
    HistoryItem,
    Hold,
    Kind,
    account_id_of,
    evolve_commit,
    time_text,
)
from eventledger.services.readside.db import Migration, Row, Session
from eventledger.services.readside.holds import Needed, holds_needed
from eventledger.services.readside.plain import OPENED, Live, Move, fold_page
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
    # 2: two-phase transfers. Columns with a constant default (no table rewrite on either
    # database) and a new table: a model made by version 1 holds no pending transfer (the log
    # it applied had none), so every existing row is already right and nothing is replayed.
    # `held` is the amount a two-phase item concerns (NULL on other items); the pending sums
    # after each item give `available_after` and the available balance at a time.
    (
        "ALTER TABLE accounts ADD COLUMN pending_debits BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN pending_credits BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE transactions ADD COLUMN held BIGINT",
        "ALTER TABLE transactions ADD COLUMN pending_debits_after BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE transactions ADD COLUMN pending_credits_after BIGINT NOT NULL DEFAULT 0",
        # The transfers pending right now on each account (a row leaves when posted, voided
        # or expired): the validity rule's facts and the `/pending` listing.
        """CREATE TABLE pending_transfers (
            account_id TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            direction TEXT NOT NULL,
            counterparty TEXT NOT NULL,
            amount BIGINT NOT NULL,
            reference TEXT,
            expires_at TEXT,
            recorded_at TEXT NOT NULL,
            position BIGINT NOT NULL,
            PRIMARY KEY (account_id, transaction_id)
        )""",
        "CREATE INDEX pending_by_position ON pending_transfers (account_id, position)",
    ),
    # 3: reversals. A reversal's item names what it `reverses`; the history finds the
    # reversal of an item through the index (`reversed_by`), so no row is ever rewritten.
    # Rows of version 2 are right as they are: their log held no reversal that this read
    # model applied with a link (rebuild one that applied reversals before: `eventledger
    # rebuild accounting`).
    (
        "ALTER TABLE transactions ADD COLUMN reverses TEXT",
        "CREATE INDEX transactions_by_reverses ON transactions (account_id, reverses)",
    ),
    # 4: that index holds only the items that reverse something. Nearly every item has no
    # `reverses`, and each of them cost a third B-tree insert when applied (catch-up on
    # SQLite, 200,000 items: 28-32 µs CPU per item with the full index, 21-22 with this one,
    # as with none). `r.reverses = t.transaction_id` implies `reverses IS NOT NULL`, so both
    # databases still answer `reversed_by` from it.
    (
        "DROP INDEX transactions_by_reverses",
        "CREATE INDEX transactions_by_reverses ON transactions (account_id, reverses) "
        "WHERE reverses IS NOT NULL",
    ),
)

ACCOUNT_COLUMNS = (
    "account_id, currency, balance, overdraft_limit, owner, status, version, "
    "opened_at, opened_position, updated_at, position, pending_debits, pending_credits"
)
ITEM_COLUMNS = (
    "account_id, position, transaction_id, kind, amount, balance_after, counterparty, "
    "reference, recorded_at, held, pending_debits_after, pending_credits_after, reverses"
)
HOLD_COLUMNS = (
    "account_id, transaction_id, direction, counterparty, amount, reference, expires_at, "
    "recorded_at, position"
)

ITEM_COLUMN_NAMES = tuple(ITEM_COLUMNS.split(", "))
HOLD_COLUMN_NAMES = tuple(HOLD_COLUMNS.split(", "))

_UPSERT_ACCOUNT = (
    f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (account_id) DO UPDATE SET balance = excluded.balance, owner = excluded.owner, "
    "status = excluded.status, version = excluded.version, "
    "updated_at = excluded.updated_at, position = excluded.position, "
    "pending_debits = excluded.pending_debits, pending_credits = excluded.pending_credits"
)
_DELETE_HOLD = "DELETE FROM pending_transfers WHERE account_id = ? AND transaction_id = ?"
# PersonalDataErased: what the read model keeps of the account's references goes too.
_ERASE_ITEMS = "UPDATE transactions SET reference = NULL WHERE account_id = ?"
_ERASE_HOLDS = "UPDATE pending_transfers SET reference = NULL WHERE account_id = ?"


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
        pending_debits=int(row[11]),
        pending_credits=int(row[12]),
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
        held=None if row[9] is None else int(row[9]),
        pending_debits_after=int(row[10]),
        pending_credits_after=int(row[11]),
        reverses=row[12],
        reversed_by=row[13] if len(row) > 13 else None,  # the history query's extra column
    )


def hold_from_row(row: Row) -> Hold:
    return Hold(
        CREDIT if row[2] == "in" else DEBIT,
        int(row[4]),
        row[3],
        row[6],
        row[0],
        row[1],
        row[5],
        row[7],
        int(row[8]),
    )


def load_accounts(
    session: Session, account_ids: Iterable[str], needed: Needed | None = None
) -> dict[str, Account]:
    """The rows of these accounts, each with the pending transfers `needed` names (None: all
    of every account's; see `readside.holds`)."""
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
    # Only accounts with pending sums have holds; most accounts, most of the time, have none.
    holding = [a for a, row in found.items() if row.pending_debits or row.pending_credits]
    if needed is None:
        every, named = holding, {}
    else:
        every = [a for a in holding if a in needed and needed[a] is None]
        named = {a: wanted for a in holding if (wanted := needed.get(a))}
    holds: dict[str, dict[str, Hold]] = {}
    for hold in _every_hold(session, every) + _named_holds(session, named):
        holds.setdefault(hold.account_id, {})[hold.transaction_id] = hold
    for account_id, held in holds.items():
        found[account_id] = replace(found[account_id], holds=held)
    return found


def _every_hold(session: Session, account_ids: Sequence[str]) -> list[Hold]:
    ids = sorted(account_ids)
    holds: list[Hold] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = session.fetchall(
            f"SELECT {HOLD_COLUMNS} FROM pending_transfers WHERE account_id IN ({marks})", chunk
        )
        holds += [hold_from_row(row) for row in rows]
    return holds


def _named_holds(session: Session, wanted: Mapping[str, frozenset[str] | None]) -> list[Hold]:
    # Row values: one primary-key lookup per pair, on SQLite and PostgreSQL alike (two IN
    # lists made SQLite probe every account with every id: 4x slower on a page of holds).
    pairs = sorted((a, t) for a, ids in wanted.items() for t in ids or ())
    holds: list[Hold] = []
    for start in range(0, len(pairs), 400):
        chunk = pairs[start : start + 400]
        rows = session.fetchall(
            f"SELECT {HOLD_COLUMNS} FROM pending_transfers WHERE (account_id, transaction_id) "
            f"IN (VALUES {', '.join(['(?, ?)'] * len(chunk))})",
            [value for pair in chunk for value in pair],
        )
        holds += [hold_from_row(row) for row in rows]
    return holds


class AccountingProjection:
    """Balances and histories of every account, from the `account-<id>` streams."""

    name = NAME
    migrations = MIGRATIONS

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        accounts = load_accounts(
            session,
            # Streams first: a page has far fewer streams than events.
            (a for a in map(account_id_of, {e.stream for e in events}) if a is not None),
            holds_needed(events, account_id_of),
        )
        changed: dict[str, Account] = {}
        items: list[ItemRow] = []
        # The page's net effect on `pending_transfers`: deleted first, then inserted, so a
        # hold placed and settled within the page is never written.
        placed: dict[tuple[str, str], Hold] = {}
        released: set[tuple[str, str]] = set()
        erased: set[str] = set()  # accounts whose stored references are blanked
        # Plain appends (opens, deposits, withdrawals, transfers) are folded on `live`
        # without domain objects (`readside.plain`); `moved` holds the last plain event of
        # each account whose `accounts` row is behind its `live` state.
        live = {a: Live.of(row) for a, row in accounts.items()}
        moved: dict[str, RecordedEvent] = {}

        def plain(moves: list[Move]) -> None:
            for account_id, event, amount, other, tx, reference, balance in moves:
                moved[account_id] = event
                if event.type == OPENED:
                    accounts[account_id] = _opened(account_id, event)
                    continue
                state = live[account_id]
                items.append(
                    (
                        account_id,
                        event.position,
                        tx,
                        _PLAIN_KINDS[event.type],
                        amount,
                        balance,
                        other,
                        reference,
                        time_text(event.recorded_at),
                        None,
                        state.pending_debits,
                        state.pending_credits,
                        None,
                    )
                )

        def full(group: Sequence[RecordedEvent], whole: bool) -> EventRejected | None:
            nonlocal items, placed
            for event in group:  # the rows the rule reads, caught up with `live`
                account_id = account_id_of(event.stream)
                if account_id is not None and account_id in moved:
                    caught_up = _caught_up(accounts[account_id], live, moved)
                    accounts[account_id] = changed[account_id] = caught_up
            changes, rejected = evolve_commit(accounts, group, whole=whole)
            for change in changes:
                account = change.account
                accounts[account.account_id] = changed[account.account_id] = account
                live[account.account_id] = Live.of(account)
                if change.erased:  # PersonalDataErased: this page's rows too, before it
                    erased.add(account.account_id)
                    items = [_blanked_item(i, account.account_id) for i in items]
                    placed = {k: _blanked(h, account.account_id) for k, h in placed.items()}
                if change.item is not None:
                    items.append(_item_row(change.item))
                if change.hold is not None:
                    placed[(account.account_id, change.hold.transaction_id)] = change.hold
                if change.released is not None:
                    key = (account.account_id, change.released)
                    if placed.pop(key, None) is None:
                        released.add(key)
            return rejected

        rejected = fold_page(events, live, plain=plain, full=full)
        for account_id in list(moved):
            changed[account_id] = _caught_up(accounts[account_id], live, moved)
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
                        a.pending_debits,
                        a.pending_credits,
                    )
                    for _, a in sorted(changed.items())  # in key order, as the items
                ],
            )
        if released:
            session.executemany(_DELETE_HOLD, sorted(released))
        if erased:
            session.executemany(_ERASE_ITEMS, [(a,) for a in sorted(erased)])
            session.executemany(_ERASE_HOLDS, [(a,) for a in sorted(erased)])
        if placed:
            session.insert_many(
                "pending_transfers",
                HOLD_COLUMN_NAMES,
                [
                    (
                        h.account_id,
                        h.transaction_id,
                        h.direction,
                        h.counterparty,
                        h.amount,
                        h.reference,
                        h.expires_at,
                        h.recorded_at,
                        h.position,
                    )
                    for h in placed.values()
                ],
            )
        if items:  # the bulk of a page: COPY on PostgreSQL (`Session.insert_many`)
            # In key order: each B-tree page is visited once, not once per row (SQLite,
            # 4,000-row pages of 1,000 accounts: 8 µs CPU a row against 11 in log order).
            items.sort(key=_ITEM_KEY)
            session.insert_many("transactions", ITEM_COLUMN_NAMES, items)
        return rejected

    def reset(self, session: Session) -> None:
        session.execute("DELETE FROM pending_transfers")
        session.execute("DELETE FROM transactions")
        session.execute("DELETE FROM accounts")


# A `transactions` row in ITEM_COLUMNS order.
ItemRow = tuple[
    str, int, str, str, int, int, str | None, str | None, str, int | None, int, int, str | None
]
_ITEM_KEY = itemgetter(0, 1)  # the primary key (account_id, position)
_PLAIN_KINDS: dict[str, Kind] = {
    "MoneyDeposited": "deposit",
    "MoneyWithdrawn": "withdrawal",
    "TransferSent": "transfer_out",
    "TransferReceived": "transfer_in",
}


def _item_row(i: HistoryItem) -> ItemRow:
    return (
        i.account_id,
        i.position,
        i.transaction_id,
        i.kind,
        i.amount,
        i.balance_after,
        i.counterparty,
        i.reference,
        i.recorded_at,
        i.held,
        i.pending_debits_after,
        i.pending_credits_after,
        i.reverses,
    )


def _opened(account_id: str, event: RecordedEvent) -> Account:
    """The row of an account a plain AccountOpened opens (its data checked by the fold)."""
    data = event.data
    at = time_text(event.recorded_at)
    return Account(
        account_id,
        data["currency"],
        0,
        data["overdraft_limit"],
        data["owner"],
        "open",
        1,
        at,
        event.position,
        at,
        event.position,
    )


def _caught_up(
    account: Account, live: Mapping[str, Live], moved: dict[str, RecordedEvent]
) -> Account:
    """The row of an account that plain events moved, as of the last of them (it leaves
    `moved`)."""
    event = moved.pop(account.account_id)
    state = live[account.account_id]
    # Spelled out rather than dataclasses.replace (3x the cost; a page may do it per hold).
    return Account(
        account.account_id,
        account.currency,
        state.balance,
        account.overdraft_limit,
        account.owner,
        account.status,
        state.version,
        account.opened_at,
        account.opened_position,
        time_text(event.recorded_at),
        event.position,
        account.pending_debits,
        account.pending_credits,
        account.holds,
    )


def _blanked_item(row: ItemRow, account_id: str) -> ItemRow:
    """The history row without its reference when it is the erased account's."""
    return (*row[:7], None, *row[8:]) if row[0] == account_id else row


def _blanked(row: Hold, account_id: str) -> Hold:
    """The hold without its reference when it is the erased account's."""
    return replace(row, reference=None) if row.account_id == account_id else row
