"""The HTTP side of account commands: `POST /accounts` (open), `POST
/accounts/{id}/deposits`, `POST /accounts/{id}/withdrawals` and `POST /accounts/{id}/close`.

A route only translates: it reads the body strictly, builds the domain command and validates
its values (nothing is loaded for a bad request), then hands it to `handlers.CommandHandler`
through the service's `execute` (`execution`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from eventledger.domain.commands import CloseAccount, Deposit, OpenAccount, Withdraw
from eventledger.services.http import read_model, serve_directly
from eventledger.services.transaction.command_docs import (
    INPUT_PROBLEMS,
    command_body,
    problems,
    replayed_response,
)
from eventledger.services.transaction.execution import checked, read_optional_model
from eventledger.services.transaction.handlers import CommandHandler
from eventledger.services.transaction.idempotency import CommandIds
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.schemas import (
    AccountClosedOut,
    AccountOpenedOut,
    CloseBody,
    MoneyBody,
    MoneyMovedOut,
    OpenAccountBody,
)
from eventledger.services.transaction.two_phase_routes import Execute


def add_account_routes(app: FastAPI, handler: CommandHandler, execute: Execute) -> None:
    """Add the routes to the transaction service's app."""

    @app.post(
        "/accounts",
        summary="Open an account",
        status_code=201,
        response_model=AccountOpenedOut,
        openapi_extra=command_body(OpenAccountBody),
        responses={
            **replayed_response(AccountOpenedOut),
            **problems(_409="`account-exists`", **INPUT_PROBLEMS),
        },
    )
    async def open_account(request: Request) -> Response:
        """Open an account in one ISO 4217 currency, with an optional overdraft limit. An
        account id is generated when none is given."""

        async def run(body: OpenAccountBody, ids: CommandIds) -> Result:
            command = OpenAccount(
                account_id=body.account_id if body.account_id is not None else ids.account_id(),
                currency=body.currency,
                overdraft_limit=body.overdraft_limit,
                owner=body.owner,
            )
            return await handler.open_account(checked(command), ids)

        return await execute(request, "open", lambda: read_model(request, OpenAccountBody), run)

    async def move_money(
        request: Request, account_id: str, kind: type[Deposit | Withdraw]
    ) -> Response:
        async def run(body: MoneyBody, ids: CommandIds) -> Result:
            values = (account_id, ids.transaction_id, body.amount, body.reference)
            if kind is Deposit:
                return await handler.deposit(checked(Deposit(*values)), ids)
            return await handler.withdraw(checked(Withdraw(*values)), ids)

        name = "deposit" if kind is Deposit else "withdraw"
        return await execute(
            request, name, lambda: read_model(request, MoneyBody), run, path_account_id=account_id
        )

    money_problems = problems(
        _404="`account-not-found`",
        _409="`account-closed`, `insufficient-funds`, `balance-out-of-range`",
        **INPUT_PROBLEMS,
    )

    @app.post(
        "/accounts/{account_id}/deposits",
        summary="Deposit money",
        status_code=201,
        response_model=MoneyMovedOut,
        openapi_extra=command_body(MoneyBody),
        responses={**replayed_response(MoneyMovedOut), **money_problems},
    )
    async def deposit(account_id: str, request: Request) -> Response:
        """Put `amount` minor units into the account."""
        return await move_money(request, account_id, Deposit)

    @app.post(
        "/accounts/{account_id}/withdrawals",
        summary="Withdraw money",
        status_code=201,
        response_model=MoneyMovedOut,
        openapi_extra=command_body(MoneyBody),
        responses={**replayed_response(MoneyMovedOut), **money_problems},
    )
    async def withdraw(account_id: str, request: Request) -> Response:
        """Take `amount` minor units out of the account, down to -overdraft_limit at most
        (409 `insufficient-funds` otherwise)."""
        return await move_money(request, account_id, Withdraw)

    @app.post(
        "/accounts/{account_id}/close",
        summary="Close an account",
        status_code=201,
        response_model=AccountClosedOut,
        openapi_extra=command_body(CloseBody, required=False),
        responses={
            **replayed_response(AccountClosedOut),
            **problems(
                _404="`account-not-found`",
                _409="`balance-not-zero`, `account-closed`, `pending-transfers`",
                **INPUT_PROBLEMS,
            ),
        },
    )
    async def close_account(account_id: str, request: Request) -> Response:
        """Close an account whose balance is exactly 0. The body is empty or `{}`."""

        async def run(_: CloseBody, ids: CommandIds) -> Result:
            command = CloseAccount(account_id=account_id)
            return await handler.close_account(checked(command), ids)

        return await execute(
            request,
            "close",
            lambda: read_optional_model(request, CloseBody),
            run,
            path_account_id=account_id,
        )

    # The command routes read and validate their own bodies (and `execute` checks the path's
    # account id): FastAPI's parameter resolution would only add ~50 µs a command.
    async def deposit_direct(request: Request) -> Response:
        return await deposit(request.path_params["account_id"], request)

    async def withdraw_direct(request: Request) -> Response:
        return await withdraw(request.path_params["account_id"], request)

    async def close_direct(request: Request) -> Response:
        return await close_account(request.path_params["account_id"], request)

    serve_directly(app, "POST", "/accounts/{account_id}/deposits", deposit_direct)
    serve_directly(app, "POST", "/accounts/{account_id}/withdrawals", withdraw_direct)
    serve_directly(app, "POST", "/accounts/{account_id}/close", close_direct)
    serve_directly(app, "POST", "/accounts", open_account)
