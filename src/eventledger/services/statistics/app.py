"""The statistics service over HTTP: per-currency and per-day counters, fed by its own
subscription and checkpoint, independent of the accounting service.

Money is always an integer of minor units; counters of money may exceed 2^53 (JSON integers
stay exact; clients that read numbers as doubles should read them as big integers).
`create_app` is `ReadModelService.create_app` (readside/http.py) with the routes below.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from eventledger.services.readside.db import Session
from eventledger.services.readside.http import (
    MinPosition,
    ReadModelService,
    Reads,
    invalid_param,
    query_responses,
)
from eventledger.services.statistics import queries
from eventledger.services.statistics.projection import Tally
from eventledger.services.statistics.store import StatisticsProjection

SERVICE = "statistics"
MAX_DAYS = 366
DEFAULT_DAYS = 30
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _add_routes(app: FastAPI, reads: Reads) -> None:
    """The statistics queries, on top of what every read-model service has."""

    @app.get("/stats", tags=["statistics"], responses=query_responses())
    async def stats(floor: MinPosition) -> JSONResponse:
        """Per currency: accounts open and closed, total balance, count and volume of
        deposits, withdrawals and transfers (a transfer counts once), and of two-phase
        transfers: holds placed, pending now (their held amount), posted (the amount that
        moved), voided and expired (the held amount). `transfers` counts immediate transfers
        only; a posted two-phase transfer is counted under `two_phase.posted`."""

        def query(session: Session) -> tuple[int, dict[str, Tally]]:
            return queries.applied_position(session), queries.currency_totals(session)

        position, totals = await reads.answer(query, min_position=floor)
        return JSONResponse(
            {
                "position": position,
                "currencies": {
                    currency: {
                        "accounts": {"open": t.opened - t.closed, "closed": t.closed},
                        "total_balance": t.balance,
                        **_movements(t),
                        "two_phase": _two_phase(t, pending=True),
                    }
                    for currency, t in totals.items()
                },
            }
        )

    @app.get("/stats/daily", tags=["statistics"], responses=query_responses())
    async def daily(
        floor: MinPosition,
        from_: Annotated[
            str | None, Query(alias="from", description="First day, YYYY-MM-DD (UTC)")
        ] = None,
        to: Annotated[
            str | None, Query(description="Last day, YYYY-MM-DD (UTC); default today")
        ] = None,
    ) -> JSONResponse:
        """Per UTC day of `recorded_at` and per currency: accounts opened and closed, the net
        flow of money and the count and volume of each kind of movement (two-phase: holds
        placed, posted, voided and expired that day). Every day of the
        range is listed, at most 366 days; by default the last 30 days up to today."""
        last = _day("to", to) if to is not None else datetime.now(UTC).date()
        if from_ is not None:
            first = _day("from", from_)
        else:  # the last 30 days, but never before 0001-01-01 (date.min)
            first = date.fromordinal(max(1, last.toordinal() - (DEFAULT_DAYS - 1)))
        if first > last:
            raise invalid_param("from", f"must not be after `to` ({last.isoformat()})")
        if (last - first).days + 1 > MAX_DAYS:
            raise invalid_param("to", f"the range may span at most {MAX_DAYS} days")

        def query(session: Session) -> tuple[int, dict[tuple[str, str], Tally]]:
            rows = queries.daily_totals(session, first=first.isoformat(), last=last.isoformat())
            return queries.applied_position(session), rows

        position, totals = await reads.answer(query, min_position=floor)
        days: list[dict[str, Any]] = []
        for offset in range((last - first).days + 1):
            day = (first + timedelta(offset)).isoformat()
            days.append(
                {
                    "date": day,
                    "currencies": {
                        currency: {
                            "accounts_opened": t.opened,
                            "accounts_closed": t.closed,
                            "net_flow": t.balance,
                            **_movements(t),
                            "two_phase": _two_phase(t, pending=False),
                        }
                        for (d, currency), t in totals.items()
                        if d == day
                    },
                }
            )
        return JSONResponse(
            {"from": first.isoformat(), "to": last.isoformat(), "position": position, "days": days}
        )


STATISTICS = ReadModelService(
    name=SERVICE,
    title="eventledger statistics",
    description="Counters per currency and per day: a read model fed by the stream service.",
    projection=StatisticsProjection,
    add_routes=_add_routes,
)
create_app = STATISTICS.create_app


def _movements(t: Tally) -> dict[str, Any]:
    return {
        "deposits": {"count": t.deposits_count, "volume": t.deposits_volume},
        "withdrawals": {"count": t.withdrawals_count, "volume": t.withdrawals_volume},
        "transfers": {"count": t.transfers_count, "volume": t.transfers_volume},
        "reversals": {"count": t.reversals_count, "volume": t.reversals_volume},
    }


def _two_phase(t: Tally, *, pending: bool) -> dict[str, Any]:
    """Two-phase transfers; `pending` (those not yet settled) only where it is a state, not
    a day's flow."""
    counters: dict[str, Any] = {"placed": {"count": t.holds_count, "volume": t.holds_volume}}
    if pending:
        counters["pending"] = {"count": t.pending_count, "volume": t.pending_volume}
    counters["posted"] = {"count": t.posted_count, "volume": t.posted_volume}
    counters["voided"] = {"count": t.voided_count, "volume": t.voided_volume}
    counters["expired"] = {"count": t.expired_count, "volume": t.expired_volume}
    return counters


def _day(name: str, text: str) -> date:
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise invalid_param(name, f"must be a date YYYY-MM-DD, got {text!r}") from None
