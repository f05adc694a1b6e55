"""The results of two-phase transfers (frozen, read strictly from the transaction service's
answers): a hold placed (`Hold`), its outcome (`HoldOutcome`: posted, voided or expired),
and a transfer's state (`TransferState`, `GET /transfers/{id}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventledger.client.models import Fields


@dataclass(frozen=True, slots=True)
class Hold:
    """A pending transfer placed: the sender's balance is unchanged, `from_available` is
    lower by `amount` until it is posted, voided or expires (`expires_at`, or None)."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    status: str  # "pending"
    expires_at: str | None
    from_balance: int
    from_available: int
    to_balance: int
    position: int
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> Hold:
        f = Fields(body, "hold")
        return cls(
            f.text("transaction_id"),
            f.text("from_account"),
            f.text("to_account"),
            f.integer("amount"),
            f.text("status"),
            f.opt_text("expires_at"),
            f.integer("from_balance"),
            f.integer("from_available"),
            f.integer("to_balance"),
            f.integer("position"),
            replayed,
        )


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """How a pending transfer ended: `status` posted (`amount` moved), voided or expired
    (`amount` released); `held` is what the hold was of."""

    transaction_id: str
    from_account: str
    to_account: str
    status: str
    amount: int
    held: int
    from_balance: int
    from_available: int
    to_balance: int
    position: int
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> HoldOutcome:
        f = Fields(body, "hold outcome")
        return cls(
            f.text("transaction_id"),
            f.text("from_account"),
            f.text("to_account"),
            f.text("status"),
            f.integer("amount"),
            f.integer("held"),
            f.integer("from_balance"),
            f.integer("from_available"),
            f.integer("to_balance"),
            f.integer("position"),
            replayed,
        )


@dataclass(frozen=True, slots=True)
class TransferState:
    """A two-phase transfer as the command side knows it now."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    status: str  # pending, posted, voided or expired
    expires_at: str | None

    @classmethod
    def from_json(cls, body: Any) -> TransferState:
        f = Fields(body, "transfer")
        return cls(
            f.text("transaction_id"),
            f.text("from_account"),
            f.text("to_account"),
            f.integer("amount"),
            f.text("status"),
            f.opt_text("expires_at"),
        )
