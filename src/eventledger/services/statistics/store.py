"""The statistics read model's tables, and the writer that applies a batch of events to them.

Counters of money (balances summed over accounts, volumes) are stored as decimal TEXT: they
are unbounded (enough maximal movements pass 2^63) and neither SQLite nor PostgreSQL has an
exact unbounded integer type in common. The sums are done in Python, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from eventledger.domain.pending import CREDIT, DEBIT, PendingHold
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.readside.db import Migration, Row, Session
from eventledger.services.readside.holds import Needed, holds_needed
from eventledger.services.readside.plain import Live, Move, fold_page
from eventledger.services.readside.projection import EventRejected
from eventledger.services.statistics.projection import (
    TALLY_FIELDS,
    StatsAccount,
    Tally,
    account_id_of,
    day_of,
    evolve_commit,
    total,
)

NAME = "statistics"

# Which counters are money (stored as TEXT) and which are counts (BIGINT).
MONEY_FIELDS = frozenset(
    {
        "balance",
        "deposits_volume",
        "withdrawals_volume",
        "transfers_volume",
        "holds_volume",
        "pending_volume",
        "posted_volume",
        "voided_volume",
        "expired_volume",
        "reversals_volume",
    }
)
# The counters of two-phase transfers (schema version 3).
TWO_PHASE_FIELDS = tuple(
    f"{what}_{unit}"
    for what in ("holds", "pending", "posted", "voided", "expired")
    for unit in ("count", "volume")
)
# The counters of schema version 1, spelled out: a migration must create the same table
# whatever counters later versions add (each adds its own columns).
_V1_FIELDS = (
    "opened",
    "closed",
    "balance",
    "deposits_count",
    "deposits_volume",
    "withdrawals_count",
    "withdrawals_volume",
    "transfers_count",
    "transfers_volume",
)
_COUNTER_DDL = ",\n".join(
    f"{f} {'TEXT' if f in MONEY_FIELDS else 'BIGINT'} NOT NULL" for f in _V1_FIELDS
)
TALLY_COLUMNS = ", ".join(TALLY_FIELDS)

MIGRATIONS: Sequence[Migration] = (
    (
        """CREATE TABLE stats_accounts (
            account_id TEXT PRIMARY KEY,
            currency TEXT NOT NULL,
            status TEXT NOT NULL,
            version BIGINT NOT NULL
        )""",
        f"CREATE TABLE stats_currencies (currency TEXT PRIMARY KEY, {_COUNTER_DDL})",
        f"""CREATE TABLE stats_daily (
            day TEXT NOT NULL,
            currency TEXT NOT NULL,
            {_COUNTER_DDL},
            PRIMARY KEY (day, currency)
        )""",
    ),
    # 2: each account's balance, so that the statistics apply the validity rule (a balance
    # stays in the signed 64-bit range, an account closes at 0) as the accounting model does.
    # Rows of version 1 do not know it: the model is emptied and its checkpoint dropped, so the
    # runner replays the log from position 0 and fills it in.
    (
        "ALTER TABLE stats_accounts ADD COLUMN balance BIGINT NOT NULL DEFAULT 0",
        "DELETE FROM stats_daily",
        "DELETE FROM stats_currencies",
        "DELETE FROM stats_accounts",
        f"DELETE FROM readmodel_checkpoints WHERE name = '{NAME}'",
    ),
    # 3: two-phase transfers. The log a version-2 model applied held none, so its counters are
    # right at 0 and nothing is replayed: columns with a constant default (no table rewrite on
    # either database), and the holds pending on each account (the validity rule's facts).
    (
        "ALTER TABLE stats_accounts ADD COLUMN pending_debits BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE stats_accounts ADD COLUMN pending_credits BIGINT NOT NULL DEFAULT 0",
        *(
            f"ALTER TABLE {table} ADD COLUMN {f} "
            + ("TEXT NOT NULL DEFAULT '0'" if f in MONEY_FIELDS else "BIGINT NOT NULL DEFAULT 0")
            for table in ("stats_currencies", "stats_daily")
            for f in TWO_PHASE_FIELDS
        ),
        """CREATE TABLE stats_pending (
            account_id TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            side TEXT NOT NULL,
            amount BIGINT NOT NULL,
            counterparty TEXT NOT NULL,
            expires_at TEXT,
            PRIMARY KEY (account_id, transaction_id)
        )""",
    ),
    # 4: reversals. Counters with a constant default, nothing replayed: a version-3 model
    # applied no reversal it could count (rebuild one that did: `eventledger rebuild
    # statistics`).
    tuple(
        f"ALTER TABLE {table} ADD COLUMN {f} "
        + ("TEXT NOT NULL DEFAULT '0'" if f in MONEY_FIELDS else "BIGINT NOT NULL DEFAULT 0")
        for table in ("stats_currencies", "stats_daily")
        for f in ("reversals_count", "reversals_volume")
    ),
)

_UPSERT_ACCOUNT = (
    "INSERT INTO stats_accounts "
    "(account_id, currency, status, version, balance, pending_debits, pending_credits) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
    "status = excluded.status, version = excluded.version, balance = excluded.balance, "
    "pending_debits = excluded.pending_debits, pending_credits = excluded.pending_credits"
)
_INSERT_HOLD = (
    "INSERT INTO stats_pending (account_id, transaction_id, side, amount, counterparty, "
    "expires_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_DELETE_HOLD = "DELETE FROM stats_pending WHERE account_id = ? AND transaction_id = ?"
_SET_TALLY = ", ".join(f"{f} = excluded.{f}" for f in TALLY_FIELDS)
_MARKS = ", ".join("?" * len(TALLY_FIELDS))
_UPSERT_CURRENCY = (
    f"INSERT INTO stats_currencies (currency, {TALLY_COLUMNS}) VALUES (?, {_MARKS}) "
    f"ON CONFLICT (currency) DO UPDATE SET {_SET_TALLY}"
)
_UPSERT_DAY = (
    f"INSERT INTO stats_daily (day, currency, {TALLY_COLUMNS}) VALUES (?, ?, {_MARKS}) "
    f"ON CONFLICT (day, currency) DO UPDATE SET {_SET_TALLY}"
)


# The counters plain events move (`readside.plain`), and where each type counts: -1 an
# opening, 0 the balance only (a transfer's receiving side), else the index of its count
# (its volume follows).
_PLAIN_COUNTERS = (
    "opened",
    "balance",
    "deposits_count",
    "deposits_volume",
    "withdrawals_count",
    "withdrawals_volume",
    "transfers_count",
    "transfers_volume",
)
_PLAIN_INDEX = {
    "AccountOpened": -1,
    "MoneyDeposited": 2,
    "MoneyWithdrawn": 4,
    "TransferSent": 6,
    "TransferReceived": 0,
}


def _caught_up(account: StatsAccount, state: Live) -> StatsAccount:
    """The row of an account that plain events moved, as of the last of them."""
    return StatsAccount(
        account.account_id,
        account.currency,
        account.status,
        state.version,
        state.balance,
        account.pending_debits,
        account.pending_credits,
        account.holds,
    )


def tally_from_row(row: Row) -> Tally:
    """A Tally from its columns in TALLY_FIELDS order (money read back from TEXT)."""
    return Tally(*(int(value) for value in row))


def tally_to_row(tally: Tally) -> tuple[object, ...]:
    return tuple(
        str(getattr(tally, f)) if f in MONEY_FIELDS else getattr(tally, f) for f in TALLY_FIELDS
    )


def _in(count: int) -> str:
    return ", ".join("?" * count)


class StatisticsProjection:
    """Per-currency and per-day counters, from the `account-<id>` streams."""

    name = NAME
    migrations = MIGRATIONS

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> EventRejected | None:
        # Streams that are not accounts' are skipped; the checkpoint still moves past them.
        accounts = self._load_accounts(
            session,
            {a for e in events if (a := account_id_of(e.stream)) is not None},
            holds_needed(events, account_id_of),
        )
        changed: dict[str, StatsAccount] = {}
        before = dict(accounts)  # the rows as loaded: whose holds the table has
        # A page's deltas per currency and day, summed once (not a Tally per event and key).
        by_currency: dict[str, list[Tally]] = {}
        by_day: dict[tuple[str, str], list[Tally]] = {}
        # Plain appends are folded on `live` without domain objects (`readside.plain`), their
        # counters summed in `sums` per (day, currency); `moved`: the accounts whose row in
        # `accounts` is behind their `live` state.
        live = {a: Live.of(row) for a, row in accounts.items()}
        moved: set[str] = set()
        sums: dict[tuple[str, str], list[int]] = {}

        def plain(moves: list[Move]) -> None:
            for account_id, event, amount, _, _, _, _ in moves:
                moved.add(account_id)
                state = live[account_id]
                key = (day_of(event.recorded_at), state.currency)
                counters = sums.get(key)
                if counters is None:
                    counters = sums[key] = [0] * len(_PLAIN_COUNTERS)
                index = _PLAIN_INDEX[event.type]
                if index < 0:  # AccountOpened
                    counters[0] += 1
                    accounts[account_id] = StatsAccount(account_id, state.currency, "open", 1)
                    continue
                counters[1] += amount
                if index:  # the counted side: a count and a volume
                    counters[index] += 1
                    counters[index + 1] += abs(amount)

        def full(group: Sequence[RecordedEvent], whole: bool) -> EventRejected | None:
            for event in group:  # the rows the rule reads, caught up with `live`
                account_id = account_id_of(event.stream)
                if account_id is not None and account_id in moved:
                    moved.discard(account_id)
                    caught_up = _caught_up(accounts[account_id], live[account_id])
                    accounts[account_id] = changed[account_id] = caught_up
            changes, rejected = evolve_commit(accounts, group, whole=whole)
            for change in changes:
                account = change.account
                accounts[account.account_id] = changed[account.account_id] = account
                live[account.account_id] = Live.of(account)
                by_currency.setdefault(change.currency, []).append(change.delta)
                by_day.setdefault((change.day, change.currency), []).append(change.delta)
            return rejected

        rejected = fold_page(events, live, plain=plain, full=full)
        for account_id in moved:
            changed[account_id] = _caught_up(accounts[account_id], live[account_id])
        for (day, currency), counters in sums.items():
            delta = Tally(**dict(zip(_PLAIN_COUNTERS, counters, strict=True)))
            by_currency.setdefault(currency, []).append(delta)
            by_day.setdefault((day, currency), []).append(delta)
        currencies = {key: total(deltas) for key, deltas in by_currency.items()}
        days = {key: total(deltas) for key, deltas in by_day.items()}
        if changed:
            session.executemany(
                _UPSERT_ACCOUNT,
                [
                    (
                        a.account_id,
                        a.currency,
                        a.status,
                        a.version,
                        a.balance,
                        a.pending_debits,
                        a.pending_credits,
                    )
                    for a in changed.values()
                ],
            )
            self._write_holds(session, before, changed)
        if currencies:
            self._add_currencies(session, currencies)
        if days:
            self._add_days(session, days)
        return rejected

    def reset(self, session: Session) -> None:
        for table in ("stats_daily", "stats_currencies", "stats_pending", "stats_accounts"):
            session.execute(f"DELETE FROM {table}")

    @staticmethod
    def _load_accounts(
        session: Session, account_ids: set[str], needed: Needed
    ) -> dict[str, StatsAccount]:
        ids = sorted(account_ids)
        found: dict[str, StatsAccount] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = session.fetchall(
                "SELECT account_id, currency, status, version, balance, pending_debits, "
                f"pending_credits FROM stats_accounts WHERE account_id IN ({_in(len(chunk))})",
                chunk,
            )
            for account_id, currency, status, version, balance, debits, credits in rows:
                found[account_id] = StatsAccount(
                    account_id,
                    currency,
                    "closed" if status == "closed" else "open",
                    int(version),
                    int(balance),
                    int(debits),
                    int(credits),
                )
        # The holds the page needs (`readside.holds`), of accounts that have some at all.
        holding = [a for a, row in found.items() if row.pending_debits or row.pending_credits]
        every = [a for a in holding if a in needed and needed[a] is None]
        pairs = sorted((a, t) for a in holding for t in needed.get(a) or ())
        holds: dict[str, dict[str, PendingHold]] = {}
        for account_id, transaction_id, side, amount, counterparty, expires_at in _hold_rows(
            session, every, pairs
        ):
            holds.setdefault(account_id, {})[transaction_id] = PendingHold(
                CREDIT if side == CREDIT else DEBIT, int(amount), counterparty, expires_at
            )
        for account_id, held in holds.items():
            found[account_id] = replace(found[account_id], holds=held)
        return found

    @staticmethod
    def _write_holds(
        session: Session, before: dict[str, StatsAccount], after: dict[str, StatsAccount]
    ) -> None:
        """Bring `stats_pending` from the holds of the rows as loaded to those of the rows
        after the page (compared by identity: an untouched mapping is the same object)."""
        gone: list[tuple[str, str]] = []
        new: list[tuple[object, ...]] = []
        for account_id, account in after.items():
            old = before.get(account_id)
            old_holds = old.holds if old is not None else {}
            if account.holds is old_holds:
                continue
            gone += [(account_id, t) for t, h in old_holds.items() if account.holds.get(t) is not h]
            new += [
                (account_id, t, h.side, h.amount, h.counterparty, h.expires_at)
                for t, h in account.holds.items()
                if old_holds.get(t) is not h
            ]
        if gone:
            session.executemany(_DELETE_HOLD, gone)
        if new:
            session.executemany(_INSERT_HOLD, new)

    @staticmethod
    def _add_currencies(session: Session, deltas: dict[str, Tally]) -> None:
        keys = sorted(deltas)
        rows = session.fetchall(
            f"SELECT currency, {TALLY_COLUMNS} FROM stats_currencies "
            f"WHERE currency IN ({_in(len(keys))})",
            keys,
        )
        totals = {row[0]: tally_from_row(row[1:]) for row in rows}
        session.executemany(
            _UPSERT_CURRENCY,
            [
                (currency, *tally_to_row(totals.get(currency, Tally()) + delta))
                for currency, delta in deltas.items()
            ],
        )

    @staticmethod
    def _add_days(session: Session, deltas: dict[tuple[str, str], Tally]) -> None:
        totals: dict[tuple[str, str], Tally] = {}
        for day in sorted({day for day, _ in deltas}):
            for row in session.fetchall(
                f"SELECT currency, {TALLY_COLUMNS} FROM stats_daily WHERE day = ?", (day,)
            ):
                totals[(day, row[0])] = tally_from_row(row[1:])
        session.executemany(
            _UPSERT_DAY,
            [
                (day, currency, *tally_to_row(totals.get((day, currency), Tally()) + delta))
                for (day, currency), delta in deltas.items()
            ],
        )


def _hold_rows(
    session: Session, every: Sequence[str], pairs: Sequence[tuple[str, str]]
) -> list[Row]:
    """The `stats_pending` rows of every hold of the accounts `every`, and of the (account,
    transaction id) `pairs`."""
    columns = "account_id, transaction_id, side, amount, counterparty, expires_at"
    rows: list[Row] = []
    for start in range(0, len(every), 500):
        chunk = every[start : start + 500]
        rows += session.fetchall(
            f"SELECT {columns} FROM stats_pending WHERE account_id IN ({_in(len(chunk))})", chunk
        )
    for start in range(0, len(pairs), 400):
        asked = pairs[start : start + 400]
        # Row values: one primary-key lookup per pair (as accounting's store does).
        rows += session.fetchall(
            f"SELECT {columns} FROM stats_pending WHERE (account_id, transaction_id) "
            f"IN (VALUES {', '.join(['(?, ?)'] * len(asked))})",
            [value for pair in asked for value in pair],
        )
    return rows
