"""`POST /transactions/{transaction_id}/reverse`: the HTTP side of reversals (`reversals`).

Registered by `app.create_app` with the service's own `execute` (Idempotency-Key, problem
documents, metrics), like every command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from eventledger.domain.money import check_transaction_id
from eventledger.domain.reversal import ReverseTransaction
from eventledger.services.http import StrictModel
from eventledger.services.transaction.handlers import CommandHandler
from eventledger.services.transaction.idempotency import CommandIds
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.reversals import reverse
from eventledger.services.transaction.schemas import Reference


class ReverseBody(StrictModel):
    """`POST /transactions/{id}/reverse`: the reason, or no body at all."""

    reference: Reference = None


class ReversedAccountOut(BaseModel):
    account_id: str
    amount: int = Field(description="The reversal's change to the balance (signed).")
    balance: int = Field(description="The balance right after the reversal.")


class ReversalOut(BaseModel):
    transaction_id: str = Field(
        json_schema_extra={"format": "uuid"}, description="The reversal's own transaction id."
    )
    reverses: str = Field(
        json_schema_extra={"format": "uuid"}, description="The transaction reversed."
    )
    reference: str | None = Field(description="The reason given.")
    accounts: list[ReversedAccountOut] = Field(
        description="Every account the original touched, in its order."
    )
    position: int = Field(description="Global position of the last event written.")


class Execute(Protocol):
    def __call__(
        self,
        request: Request,
        name: str,
        read: Callable[[], Awaitable[BaseModel]],
        run: Callable[[Any, CommandIds], Awaitable[Result]],
        *,
        path_account_id: str | None = None,
    ) -> Awaitable[Response]: ...


def add_reversal_route(
    app: FastAPI,
    handler: CommandHandler,
    execute: Execute,
    *,
    read_body: Callable[[Request], Awaitable[ReverseBody]],
    openapi_extra: dict[str, Any],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """Add the route to the transaction service's app."""

    @app.post(
        "/transactions/{transaction_id}/reverse",
        summary="Reverse a transaction",
        status_code=201,
        response_model=ReversalOut,
        openapi_extra=openapi_extra,
        responses=responses,
    )
    async def reverse_transaction(transaction_id: str, request: Request) -> Response:
        """Undo a deposit, withdrawal, transfer or posted two-phase transfer with new events:
        one `TransactionReversed` on every account it touched, written atomically (the
        original stays in the log). A transaction is reversed at most once (409
        `already-reversed` naming the reversal); the account rules apply as to any movement
        of money (409 `insufficient-funds` when the money was spent, `account-closed`); a
        reversal is not itself reversible (409 `not-reversible`), nor is a two-phase transfer
        while pending (409 `transfer-pending`). The body (optional) gives the reason."""

        async def run(body: ReverseBody, ids: CommandIds) -> Result:
            check_transaction_id(transaction_id, field="transaction_id")
            command = ReverseTransaction(
                transaction_id=ids.transaction_id,
                reverses=transaction_id,
                reference=body.reference,
            )
            return await reverse(handler, command, ids)

        return await execute(request, "reverse", lambda: read_body(request), run)
