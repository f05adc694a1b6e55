"""The values of the common ("plain") account events checked by the rule's own functions
(`domain.money`, as `check_event` calls them) without decoding the events into domain
objects. Pure, no I/O.

Three doors take a fast path with these on the bulk of the log: the stream's guard
(services/stream/guard_plain.py), the read models' fold (services/readside/plain.py) and the
transaction service's log follower. Each answers None for anything these do not vouch for,
and the full rule (`domain.validity`) decides and words it.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventledger.domain.errors import InvalidCommand
from eventledger.domain.money import (
    check_account_id,
    check_amount,
    check_currency,
    check_overdraft_limit,
    check_owner,
    check_reference,
    check_transaction_id,
)
from eventledger.domain.pending import out_of_range

OPENED = "AccountOpened"
# type -> (the sign of its amount on the balance, the field naming the other account).
MONEY: dict[str, tuple[int, str | None]] = {
    "MoneyDeposited": (1, None),
    "MoneyWithdrawn": (-1, None),
    "TransferSent": (-1, "to_account"),
    "TransferReceived": (1, "from_account"),
}

# (signed amount, the other account or None, transaction id, reference)
MoneyValues = tuple[int, str | None, str, str | None]


def opened_currency(schema_version: object, data: Mapping[str, object]) -> str | None:
    """The currency of an AccountOpened (schema version 2) whose account id, currency,
    overdraft limit and owner the rule accepts; else None."""
    if schema_version != 2:
        return None
    try:
        check_account_id(data.get("account_id"))
        currency = check_currency(data.get("currency"))
        check_overdraft_limit(data.get("overdraft_limit"))
        check_owner(data.get("owner"))
    except InvalidCommand:
        return None
    return currency


def money_values(
    event_type: object, schema_version: object, data: Mapping[str, object]
) -> MoneyValues | None:
    """The values of a MoneyDeposited, MoneyWithdrawn, TransferSent or TransferReceived
    (schema version 1) when the rule accepts each of them (a canonical transaction id, an
    amount of 1..2^53-1, clean reference text, for a transfer a valid other account); else
    None."""
    kind = MONEY.get(event_type) if isinstance(event_type, str) else None
    if kind is None or schema_version != 1:
        return None
    sign, field = kind
    try:
        transaction_id = check_transaction_id(data.get("transaction_id"))
        amount = sign * check_amount(data.get("amount"))
        reference = check_reference(data.get("reference"))
        other = None if field is None else check_account_id(data.get(field))
    except InvalidCommand:
        return None
    return (amount, other, transaction_id, reference)


def money_move(
    event_type: object,
    schema_version: object,
    data: Mapping[str, object],
    account_id: str,
    balance: int,
    pending_debits: int,
    pending_credits: int,
) -> tuple[int, str | None, str, str | None, int] | None:
    """(signed amount, the other account or None, transaction id, reference, balance after)
    of a plain money event (`money_values`) of `account_id`'s stream on an open account at
    `balance` with these holds, when the rule accepts it there; else None. The caller checks
    the stream version and that the account is open."""
    values = money_values(event_type, schema_version, data)
    if values is None or data.get("account_id") != account_id:
        return None
    amount, other, transaction_id, reference = values
    after = balance + amount
    if other == account_id or out_of_range(after, pending_debits, pending_credits) is not None:
        return None
    return (amount, other, transaction_id, reference, after)
