"""The HTTP side of `POST /transfers`: a transfer between two accounts, or with
`"pending": true` the hold of a two-phase transfer (`two_phase`; its post, void and status
routes are in `two_phase_routes`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.responses import Response

from eventledger.domain.commands import Transfer
from eventledger.domain.errors import InvalidExpiry
from eventledger.domain.pending import expiry_after
from eventledger.services.http import read_model, serve_directly
from eventledger.services.transaction.command_docs import (
    INPUT_PROBLEMS,
    command_body,
    problems,
    replayed_response,
)
from eventledger.services.transaction.execution import checked
from eventledger.services.transaction.handlers import CommandHandler
from eventledger.services.transaction.idempotency import CommandIds
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.schemas import HoldOut, TransferBody, TransferOut
from eventledger.services.transaction.two_phase import TwoPhaseTransfers
from eventledger.services.transaction.two_phase_routes import Execute


def add_transfer_route(
    app: FastAPI,
    handler: CommandHandler,
    two_phase: TwoPhaseTransfers,
    execute: Execute,
    *,
    clock: Callable[[], datetime],
) -> None:
    """Add the route to the transaction service's app; `clock` dates a hold's expiry."""

    @app.post(
        "/transfers",
        summary="Transfer money between two accounts",
        status_code=201,
        response_model=TransferOut | HoldOut,
        openapi_extra=command_body(TransferBody),
        responses={
            **replayed_response(TransferOut),
            **problems(
                _404="`account-not-found`",
                _409="`account-closed`, `currency-mismatch`, `insufficient-funds`, "
                "`balance-out-of-range`",
                **{
                    **INPUT_PROBLEMS,
                    "_422": INPUT_PROBLEMS["_422"]
                    + " `same-account-transfer`, `invalid-expires-at` (a timeout without "
                    "`pending`).",
                },
            ),
        },
    )
    async def transfer(request: Request) -> Response:
        """Move `amount` from one account to another of the same currency, atomically: both
        accounts change, or neither does. With `"pending": true`, only hold it (a two-phase
        transfer: `status` pending; the sender's `available` drops, its balance does not),
        to post or void later (`/transfers/{id}/post`, `/void`), voided automatically
        (`expired`) after `timeout_seconds` when given."""

        async def run(body: TransferBody, ids: CommandIds) -> Result:
            if body.timeout_seconds is not None and not body.pending:
                raise InvalidExpiry(
                    "only a pending transfer has a timeout", field="timeout_seconds"
                )
            command = Transfer(
                transaction_id=ids.transaction_id,
                from_account=body.from_account,
                to_account=body.to_account,
                amount=body.amount,
                reference=body.reference,
                pending=body.pending,
                expires_at=None
                if body.timeout_seconds is None
                else expiry_after(clock(), body.timeout_seconds),
            )
            if command.pending:
                return await two_phase.hold(checked(command), ids)
            return await handler.transfer(checked(command), ids)

        return await execute(request, "transfer", lambda: read_model(request, TransferBody), run)

    serve_directly(app, "POST", "/transfers", transfer)
