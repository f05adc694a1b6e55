"""Both read models' stores load of an account's pending transfers only what a page's events
need (`readside.holds`), on SQLite and on PostgreSQL, and still decide as the validity rule
does with every hold known: an outcome finds its hold in a later page, a hold id pending
already is refused, and so is closing an account that has holds the page never named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import queries
from eventledger.services.accounting.store import AccountingProjection
from eventledger.services.readside.db import ReadModelDB
from eventledger.services.readside.holds import holds_needed
from eventledger.services.readside.projection import EventRejected
from eventledger.services.statistics import queries as stats_queries
from eventledger.services.statistics.store import StatisticsProjection
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import OpenDB

open_db = support.open_db_fixture("holds")
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
Projection = AccountingProjection | StatisticsProjection


class Log:
    """Recorded events as the store numbers them; `append` makes one atomic append."""

    def __init__(self) -> None:
        self.position = 0
        self.versions: dict[str, int] = {}

    def append(self, *parts: tuple[str, str, dict[str, Any]]) -> list[RecordedEvent]:
        end = self.position + len(parts)
        events = []
        for account, type, data in parts:
            self.position += 1
            self.versions[account] = self.versions.get(account, 0) + 1
            events.append(
                RecordedEvent(
                    uuid.uuid4(),
                    f"account-{account}",
                    type,
                    2 if type == "AccountOpened" else 1,
                    data,
                    {},
                    self.versions[account],
                    self.position,
                    T0,
                    batch_end=end,
                )
            )
        return events

    def opened(self, account: str) -> list[RecordedEvent]:
        data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0, "owner": None}
        return self.append((account, "AccountOpened", data))

    def deposit(self, account: str, amount: int) -> list[RecordedEvent]:
        data = {"transaction_id": str(uuid.uuid4()), "amount": amount, "reference": None}
        return self.append((account, "MoneyDeposited", {"account_id": account, **data}))

    def hold(self, source: str, target: str, amount: int, tx: str) -> list[RecordedEvent]:
        common = {"transaction_id": tx, "amount": amount, "reference": "r", "expires_at": None}
        return self.append(
            (source, "PendingTransferSent", {"account_id": source, **common, "to_account": target}),
            (
                target,
                "PendingTransferReceived",
                {"account_id": target, **common, "from_account": source},
            ),
        )

    def post(self, source: str, target: str, tx: str, amount: int) -> list[RecordedEvent]:
        data = {"transaction_id": tx, "from_account": source, "to_account": target}
        return self.append(
            *(
                (a, "PendingTransferPosted", {"account_id": a, **data, "amount": amount})
                for a in (source, target)
            )
        )

    def close(self, account: str) -> list[RecordedEvent]:
        return self.append((account, "AccountClosed", {"account_id": account}))


@pytest.fixture(params=["accounting", "statistics"])
def projection(request: pytest.FixtureRequest) -> Projection:
    return AccountingProjection() if request.param == "accounting" else StatisticsProjection()


@pytest.fixture
def db(open_db: OpenDB, projection: Projection) -> Iterator[ReadModelDB]:
    database = open_db()
    database.migrate(projection.migrations)
    try:
        yield database
    finally:
        database.close()


def apply(db: ReadModelDB, projection: Projection, events: list[RecordedEvent]) -> str | None:
    """Apply one page in one transaction (rolled back when refused): why it was refused."""
    try:
        with db.transaction() as tx:
            rejected = projection.apply(tx, events)
            if rejected is not None:
                raise rejected
    except EventRejected as exc:
        return exc.reason
    return None


def test_a_page_names_the_holds_it_needs() -> None:
    log = Log()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    page = [
        *log.deposit("a", 5),
        *log.hold("a", "b", 10, first),
        *log.post("c", "d", second, 1),
        *log.close("e"),
    ]
    assert holds_needed(page, lambda s: s.removeprefix("account-")) == {
        "a": frozenset({first}),
        "b": frozenset({first}),
        "c": frozenset({second}),
        "d": frozenset({second}),
        "e": None,
    }


def test_pages_decide_as_the_rule_with_only_the_holds_they_need(
    db: ReadModelDB, projection: Projection
) -> None:
    log = Log()
    first, second, third, fourth = (str(uuid.uuid4()) for _ in range(4))
    setup = [*log.opened("a"), *log.opened("b"), *log.opened("c"), *log.deposit("a", 1000)]
    setup += [*log.hold("a", "b", 100, first), *log.hold("a", "b", 200, second)]
    setup += log.hold("a", "c", 50, fourth)  # c: at balance 0, owed a pending transfer
    assert apply(db, projection, setup) is None
    # A later page: a deposit (no hold loaded), the post of the first hold (its own only).
    assert apply(db, projection, [*log.deposit("a", 5), *log.post("a", "b", first, 60)]) is None
    # The second hold is still pending: placing it again is refused; c has a hold, so it
    # does not close, though neither page names it.
    again = Log()
    again.position, again.versions = log.position, dict(log.versions)
    assert "already pending" in (apply(db, projection, again.hold("a", "b", 1, second)) or "")
    again = Log()
    again.position, again.versions = log.position, dict(log.versions)
    assert "pending transfer" in (apply(db, projection, again.close("c")) or "")
    # Posting the second hold and placing a third in one page: both found, both written.
    page = [*log.post("a", "b", second, 200), *log.hold("a", "b", 30, third)]
    assert apply(db, projection, page) is None
    with db.read() as r:
        if isinstance(projection, AccountingProjection):
            a = queries.get_account(r, "a")
            assert a is not None
            assert (a.balance, a.pending_debits, a.available) == (745, 80, 665)
            pending = queries.pending_transfers(r, "b", after=None, limit=10)
            assert [(h.transaction_id, h.amount) for h in pending] == [(third, 30)]
        else:
            eur = stats_queries.currency_totals(r)["EUR"]
            assert (eur.pending_count, eur.pending_volume, eur.posted_volume) == (2, 80, 260)
            held = r.fetchall("SELECT account_id, transaction_id FROM stats_pending")
            assert sorted(held) == sorted(
                [("a", third), ("b", third), ("a", fourth), ("c", fourth)]
            )
