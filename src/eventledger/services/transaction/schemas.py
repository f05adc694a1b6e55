"""The transaction service's wire shapes: request bodies (strict) and documented responses.

Bodies are validated strictly (`StrictModel`): an amount is a JSON integer from 1 to 2^53-1
("10", 10.0, true and 1e3 are refused), unknown fields are refused. Values that only the
domain can judge (currencies, account ids, free text) are checked by the domain's `check_*`
functions, so that one rule has one place.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from eventledger.domain.money import MAX_AMOUNT, MAX_OVERDRAFT_LIMIT, MAX_TEXT_LENGTH
from eventledger.services.http import StrictModel

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

Amount = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_AMOUNT,
        description="Minor units (cents) as a JSON integer, 1 to 2^53-1.",
        examples=[2500],
    ),
]
Reference = Annotated[
    str | None,
    Field(
        max_length=MAX_TEXT_LENGTH,
        description="Free text for the statement, at most 256 characters.",
        examples=["invoice 2026-117"],
    ),
]
AccountId = Annotated[
    str,
    Field(
        description="1-64 letters, digits, '_', '.', '-', starting with a letter or digit.",
        json_schema_extra={"pattern": ACCOUNT_ID_PATTERN},
        examples=["acc-42"],
    ),
]


# -- request bodies -----------------------------------------------------------------------


class OpenAccountBody(StrictModel):
    """`POST /accounts`."""

    account_id: AccountId | None = Field(
        default=None, description="Generated (`acc-` and 20 hex digits) when absent."
    )
    currency: str = Field(
        description="An active ISO 4217 code, upper case.",
        examples=["EUR"],
        json_schema_extra={"pattern": "^[A-Z]{3}$"},
    )
    overdraft_limit: int = Field(
        default=0,
        ge=0,
        le=MAX_OVERDRAFT_LIMIT,
        description="How far below zero the balance may go, in minor units.",
    )
    owner: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class MoneyBody(StrictModel):
    """`POST /accounts/{id}/deposits` and `/withdrawals`."""

    amount: Amount
    reference: Reference = None


class TransferBody(StrictModel):
    """`POST /transfers`."""

    from_account: AccountId
    to_account: AccountId
    amount: Amount
    reference: Reference = None


class CloseBody(StrictModel):
    """`POST /accounts/{id}/close`: an empty object, or no body at all."""


# -- responses ----------------------------------------------------------------------------


class AccountOpenedOut(BaseModel):
    account_id: str
    currency: str
    overdraft_limit: int
    owner: str | None
    position: int = Field(description="Global position of the event written.")


class MoneyMovedOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    account_id: str
    amount: int
    balance: int = Field(description="The balance right after this transaction.")
    position: int = Field(description="Global position of the event written: a read token.")


class TransferOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    from_account: str
    to_account: str
    amount: int
    from_balance: int
    to_balance: int
    position: int = Field(description="Global position of the last event written.")


class AccountClosedOut(BaseModel):
    account_id: str
    status: Literal["closed"]
    position: int


class Health(BaseModel):
    status: Literal["ok"]
    service: Literal["transaction"]
    stream: Literal["up"]


class Problem(BaseModel):
    """An RFC 9457 problem document; extra members depend on `type` (e.g. `account_id`,
    `balance`; `errors` lists the offending fields of a validation problem)."""

    type: str = Field(examples=["insufficient-funds"])
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None
