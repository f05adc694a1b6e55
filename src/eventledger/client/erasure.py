"""An account's personal data erased (`POST /accounts/{id}/forget`), read strictly from the
transaction service's answer, and the call that asks for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventledger.client.calls import segment
from eventledger.client.core import Call
from eventledger.client.models import Fields


@dataclass(frozen=True, slots=True)
class Erasure:
    """The account's owner and references read as null from `position` on (its
    `PersonalDataErased`, at `version` of its stream). `replayed`: nothing was left to
    erase, this is the earlier erasure. `plaintext_fields`: values written before personal
    data was sealed, which no erasure reaches."""

    account_id: str
    position: int
    version: int
    replayed: bool
    plaintext_fields: int

    @classmethod
    def from_json(cls, body: Any) -> Erasure:
        f = Fields(body, "erasure")
        return cls(
            f.text("account_id"),
            f.integer("position"),
            f.integer("version"),
            f.flag("replayed"),
            f.integer("plaintext_fields"),
        )


def forget(account_id: str) -> Call[Erasure]:
    """The call: safe to repeat (forgetting twice erases once), so it needs no key."""
    return Call(
        "transaction",
        "POST",
        f"/accounts/{segment(account_id)}/forget",
        lambda doc, _: Erasure.from_json(doc),
        headers={"Content-Type": "application/json"},
    )
