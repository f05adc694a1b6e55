"""The HTTP side of two-phase transfers (`two_phase`): `POST /transfers/{id}/post`,
`POST /transfers/{id}/void` and `GET /transfers/{id}`. (The hold itself is `POST /transfers`
with `"pending": true`, in `transfer_routes`.)

Registered by `app.create_app` with the service's own `execute` (Idempotency-Key, problem
documents, metrics), like every command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from eventledger.domain.money import check_transaction_id
from eventledger.services.transaction.idempotency import CommandIds
from eventledger.services.transaction.problems import problem_for
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.schemas import (
    OutcomeOut,
    PostBody,
    TransferStatusOut,
    VoidBody,
)
from eventledger.services.transaction.two_phase import TwoPhaseTransfers


class Execute(Protocol):
    """The service's `execute` (`execution.command_executor`): checks the input, runs the
    command, answers."""

    def __call__(
        self,
        request: Request,
        name: str,
        read: Callable[[], Awaitable[BaseModel]],
        run: Callable[[Any, CommandIds], Awaitable[Result]],
        *,
        path_account_id: str | None = None,
    ) -> Awaitable[Response]: ...


OUTCOME_PROBLEMS = {
    "_404": "`transfer-not-found`: no two-phase transfer has this id.",
    "_409": "`transfer-not-pending` (with `transfer_status`: posted, voided or expired; a "
    "hold past its `expires_at` is expired even before its expiry is written).",
}


def add_two_phase_routes(
    app: FastAPI,
    two_phase: TwoPhaseTransfers,
    execute: Execute,
    *,
    read_optional: Callable[[Request, type[Any]], Awaitable[Any]],
    command_body: Callable[..., dict[str, Any]],
    responses: Callable[[type[Any], dict[str, str]], dict[int | str, dict[str, Any]]],
) -> None:
    """Add the routes to the transaction service's app. `responses(model, problems)` gives a
    route's documented answers, `command_body(model, required=...)` its body and headers."""

    @app.post(
        "/transfers/{transaction_id}/post",
        summary="Post a pending transfer",
        status_code=201,
        response_model=OutcomeOut,
        openapi_extra=command_body(PostBody, required=False),
        responses=responses(
            OutcomeOut,
            {
                **OUTCOME_PROBLEMS,
                "_422": "`amount-exceeds-hold`: more than the hold is of.",
            },
        ),
    )
    async def post_transfer(transaction_id: str, request: Request) -> Response:
        """Complete a pending transfer: move `amount` (at most the held amount; absent: all
        of it) from the sender's balance to the receiver's, atomically, and release the rest
        of the hold. A hold has exactly one outcome: posted, voided or expired."""

        async def run(body: PostBody, ids: CommandIds) -> Result:
            check_transaction_id(transaction_id, field="transaction_id")
            return await two_phase.post(transaction_id, body.amount, ids)

        return await execute(
            request, "post-transfer", lambda: read_optional(request, PostBody), run
        )

    @app.post(
        "/transfers/{transaction_id}/void",
        summary="Void a pending transfer",
        status_code=201,
        response_model=OutcomeOut,
        openapi_extra=command_body(VoidBody, required=False),
        responses=responses(OutcomeOut, OUTCOME_PROBLEMS),
    )
    async def void_transfer(transaction_id: str, request: Request) -> Response:
        """Release a pending transfer without moving money (status `voided`). The body is
        empty or `{}`."""

        async def run(_: VoidBody, ids: CommandIds) -> Result:
            check_transaction_id(transaction_id, field="transaction_id")
            return await two_phase.void(transaction_id, ids)

        return await execute(
            request, "void-transfer", lambda: read_optional(request, VoidBody), run
        )

    @app.get(
        "/transfers/{transaction_id}",
        summary="A two-phase transfer",
        response_model=TransferStatusOut,
        responses={
            k: v
            for k, v in responses(TransferStatusOut, {"_404": OUTCOME_PROBLEMS["_404"]}).items()
            if k not in (200, 400, 413, 415)  # a GET has no body and no key
        },
    )
    async def get_transfer(transaction_id: str) -> Response:
        """A two-phase transfer as its accounts know it now: `pending`, or how it ended
        (`posted`, `voided`, `expired`), with the amount held and its expiry."""
        try:
            check_transaction_id(transaction_id, field="transaction_id")
            status = await two_phase.status(transaction_id)
        except Exception as exc:
            problem = problem_for(exc)
            if problem is None:
                raise
            raise problem from exc
        return JSONResponse(status.body())
