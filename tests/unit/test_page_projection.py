"""A page of the log evolved in one loop (`evolve_page`) gives exactly what evolving each of
its atomic appends (`evolve_commit`) gives, for both projections, refusals included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.eventstore.records import RecordedEvent
from eventledger.services.accounting import projection as accounting
from eventledger.services.readside.commits import commit_groups
from eventledger.services.statistics import projection as statistics

T0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
ACCOUNTS = ("a", "b", "c")

# One atomic append: (kind, account, other account, amount, batch_end known?)
appends = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("open", "deposit", "withdraw", "transfer", "transfer", "transfer"),
                *("sent-alone", "received-alone", "close", "other", "bad"),
            ]
        ),
        st.sampled_from(ACCOUNTS),
        st.sampled_from(ACCOUNTS),
        st.integers(min_value=1, max_value=50),
        st.booleans(),
    ),
    max_size=40,
)


def build(spec: list[tuple[str, str, str, int, bool]]) -> list[RecordedEvent]:
    """The log the appends write (many of them break a rule: that is the point)."""
    log: list[RecordedEvent] = []
    versions: dict[str, int] = {}

    def event(account: str, type: str, data: dict[str, Any], stream: str = "") -> dict[str, Any]:
        stream = stream or f"account-{account}"
        versions[stream] = versions.get(stream, 0) + 1
        return {
            "stream": stream,
            "type": type,
            "data": data,
            "schema_version": 2 if type == "AccountOpened" else 1,
            "stream_version": versions[stream],
        }

    def money(account: str, amount: int, **extra: Any) -> dict[str, Any]:
        tx = extra.pop("tx", str(uuid.uuid4()))
        return {"account_id": account, "transaction_id": tx, "amount": amount, "reference": None}

    for kind, account, other, amount, known in spec:
        tx = str(uuid.uuid4())
        match kind:
            case "open":
                data = {"account_id": account, "currency": "EUR", "overdraft_limit": 0}
                written = [event(account, "AccountOpened", {**data, "owner": None})]
            case "deposit":
                written = [event(account, "MoneyDeposited", money(account, amount))]
            case "withdraw":
                written = [event(account, "MoneyWithdrawn", money(account, amount))]
            case "received-alone":
                got = {**money(account, amount), "from_account": other}
                written = [event(account, "TransferReceived", got)]
            case "transfer" | "sent-alone":
                sent = {**money(account, amount, tx=tx), "transaction_id": tx, "to_account": other}
                got = {**money(other, amount), "transaction_id": tx, "from_account": account}
                written = [event(account, "TransferSent", sent)]
                if kind == "transfer":
                    written.append(event(other, "TransferReceived", got))
            case "close":
                written = [event(account, "AccountClosed", {"account_id": account})]
            case "other":
                written = [event(account, "Noted", {"x": 1}, stream=f"notes-{account}")]
            case _:
                written = [event(account, "MoneyDeposited", {"account_id": account})]
        first = len(log) + 1
        end = first + len(written) - 1 if known else 0
        for offset, fields in enumerate(written):
            position = first + offset
            log.append(
                RecordedEvent(
                    uuid.uuid4(),
                    metadata={},
                    position=position,
                    recorded_at=T0 + timedelta(seconds=position // 3),
                    batch_end=end,
                    **fields,
                )
            )
    return log


def by_appends(module: Any, events: list[RecordedEvent]) -> tuple[list[Any], str | None]:
    """The reference: each atomic append through `evolve_commit`, as the stores once did."""
    accounts: dict[str, Any] = {}
    changes: list[Any] = []
    for group, whole in commit_groups(events):
        done, rejected = module.evolve_commit(accounts, group, whole=whole)
        for change in done:
            accounts[change.account.account_id] = change.account
        changes += done
        if rejected is not None:
            return changes, str(rejected)
    return changes, None


@settings(max_examples=300, deadline=None)
@given(appends)
def test_a_page_evolves_as_its_appends_do(spec: list[tuple[str, str, str, int, bool]]) -> None:
    # Most logs start well (every account open, with money), then go wherever they go.
    start = [("open", a, a, 1, True) for a in ACCOUNTS] + [("deposit", "a", "a", 90, True)]
    events = build(start + spec)
    for module in (accounting, statistics):
        accounts: dict[str, Any] = {}
        changes, rejected = module.evolve_page(accounts, events)
        expected_changes, expected_rejected = by_appends(module, events)
        assert (changes, None if rejected is None else str(rejected)) == (
            expected_changes,
            expected_rejected,
        )
        for change in changes:  # the rows it leaves are those of its last changes
            assert accounts[change.account.account_id] is not None
        assert {c.account.account_id: c.account for c in changes}.items() <= accounts.items()


def test_the_statistics_total_is_the_sum_of_the_deltas() -> None:
    deltas = [
        statistics.Tally(opened=1),
        statistics.Tally(balance=5, deposits_count=1, deposits_volume=5),
        statistics.Tally(balance=-2, transfers_count=1, transfers_volume=2),
    ]
    assert statistics.total(deltas) == deltas[0] + deltas[1] + deltas[2]
    assert statistics.total([]) == statistics.Tally()
