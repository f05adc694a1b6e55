"""The result of a reversal (`POST /transactions/{id}/reverse`), read strictly from the
transaction service's answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventledger.client.models import Fields


@dataclass(frozen=True, slots=True)
class ReversedAccount:
    """One account a reversal changed: by `amount` (signed), leaving `balance`."""

    account_id: str
    amount: int
    balance: int


@dataclass(frozen=True, slots=True)
class Reversal:
    """Transaction `reverses` undone by a new transaction (`transaction_id`), on every
    account it touched, in its order; `reference` is the reason given."""

    transaction_id: str
    reverses: str
    reference: str | None
    accounts: tuple[ReversedAccount, ...]
    position: int
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> Reversal:
        f = Fields(body, "reversal")
        accounts = []
        for item in f.array("accounts"):
            a = Fields(item, "reversed account")
            accounts.append(
                ReversedAccount(a.text("account_id"), a.integer("amount"), a.integer("balance"))
            )
        return cls(
            f.text("transaction_id"),
            f.text("reverses"),
            f.opt_text("reference"),
            tuple(accounts),
            f.integer("position"),
            replayed,
        )
