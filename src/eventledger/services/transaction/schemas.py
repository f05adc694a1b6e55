"""The transaction service's wire shapes: request bodies (strict) and documented responses.

Bodies are validated strictly (`StrictModel`): an amount is a JSON integer from 1 to 2^53-1
("10", 10.0, true and 1e3 are refused), unknown fields are refused. Values that only the
domain can judge (currencies, account ids, free text) are checked by the domain's `check_*`
functions, so that one rule has one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from eventledger.domain.money import MAX_AMOUNT, MAX_OVERDRAFT_LIMIT, MAX_TEXT_LENGTH
from eventledger.services.http import StrictModel

MAX_TIMEOUT_SECONDS = 30 * 24 * 3600  # a hold waits at most 30 days for its outcome
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


def _not_null(value: object) -> object:
    """A before-validator of an optional number: leaving it out means its default, an
    explicit null is refused."""
    # Why: null read as "absent" made `{"amount": null}` post the whole hold (money moved on
    # what is likely a client's unset variable) and `{"timeout_seconds": null}` a hold that
    # never expires; the documented shape is an integer or nothing.
    if value is None:
        raise PydanticCustomError(
            "null_number", "must be an integer when given (leave the field out for the default)"
        )
    return value


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
    pending: bool = Field(
        default=False,
        description="Two-phase: only place a hold (`status` pending), to post or void later.",
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] | SkipJsonSchema[None] = (
        Field(
            default=None,
            description="With `pending`: void the hold automatically (reason `expired`) this many "
            f"seconds from now unless posted first; 1 to {MAX_TIMEOUT_SECONDS} (30 days). "
            "Absent: the hold waits until posted or voided.",
        )
    )

    _given_timeout = field_validator("timeout_seconds", mode="before")(_not_null)

    @model_serializer(mode="wrap")
    def _fingerprinted(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # What an Idempotency-Key's fingerprint hashes: a one-phase transfer's body reads as
        # it did before two-phase transfers, so keys bound then still replay.
        data: dict[str, Any] = handler(self)
        if not self.pending and self.timeout_seconds is None:
            data.pop("pending", None)
            data.pop("timeout_seconds", None)
        return data


class PostBody(StrictModel):
    """`POST /transfers/{id}/post`: the amount to post (at most the held amount; absent:
    all of it), or an empty object / no body."""

    amount: Amount | SkipJsonSchema[None] = None

    _given_amount = field_validator("amount", mode="before")(_not_null)


class VoidBody(StrictModel):
    """`POST /transfers/{id}/void`: an empty object, or no body at all."""


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
    available: int = Field(
        description="What the account can spend right after it: the balance less its holds."
    )
    position: int = Field(description="Global position of the event written: a read token.")


class TransferOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    from_account: str
    to_account: str
    amount: int
    from_balance: int
    from_available: int = Field(description="The sender's balance less its holds, after it.")
    to_balance: int
    position: int = Field(description="Global position of the last event written.")


class HoldOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    from_account: str
    to_account: str
    amount: int
    status: Literal["pending"]
    expires_at: str | None = Field(
        description="When the hold is voided unless posted first (RFC 3339 UTC), or null."
    )
    from_balance: int = Field(description="The sender's balance: a hold does not change it.")
    from_available: int = Field(description="The sender's balance less its holds.")
    to_balance: int
    position: int = Field(description="Global position of the last event written.")


class OutcomeOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    from_account: str
    to_account: str
    status: Literal["posted", "voided", "expired"]
    amount: int = Field(description="Posted: the amount moved. Voided: the amount released.")
    held: int = Field(description="The amount the hold was of.")
    from_balance: int
    from_available: int
    to_balance: int
    position: int = Field(description="Global position of the last event written.")


class TransferStatusOut(BaseModel):
    transaction_id: str = Field(json_schema_extra={"format": "uuid"})
    from_account: str
    to_account: str
    amount: int = Field(description="The amount held.")
    status: Literal["pending", "posted", "voided", "expired"]
    expires_at: str | None


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
