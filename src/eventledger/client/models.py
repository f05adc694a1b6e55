"""What the client returns: frozen dataclasses of plain values, read from the API's JSON.

Money is an `int` of minor units, times are timezone-aware `datetime`s in UTC, positions are
`int`s. A result of a command carries `position` (the consistency token: pass the result to
`consistent_with` or its position as `min_position`) and `replayed` (True when the service
answered an earlier request with the same Idempotency-Key and wrote nothing).
A field the API promises but the answer lacks raises `UnexpectedResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from eventledger.client.errors import UnexpectedResponse

T = TypeVar("T")
ReadModel = Literal["accounting", "statistics"]


class Fields:
    """Typed access to one JSON object of an answer; a wrong shape is `UnexpectedResponse`."""

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise UnexpectedResponse(f"{what}: expected a JSON object, got {type(value).__name__}")
        self.doc: dict[str, Any] = value
        self.what = what

    def _get(self, key: str, kind: type | tuple[type, ...], optional: bool) -> Any:
        value = self.doc.get(key)
        if value is None and optional:
            return None
        # bool is an int in Python, never in our JSON
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UnexpectedResponse(f"{self.what}: field {key!r} is missing or not {kind}")
        return value

    def integer(self, key: str) -> int:
        return int(self._get(key, int, False))

    def opt_integer(self, key: str) -> int | None:
        value = self._get(key, int, True)
        return None if value is None else int(value)

    def text(self, key: str) -> str:
        return str(self._get(key, str, False))

    def opt_text(self, key: str) -> str | None:
        value = self._get(key, str, True)
        return None if value is None else str(value)

    def flag(self, key: str) -> bool:
        return bool(self._get(key, bool, False))

    def time(self, key: str) -> datetime:
        return parse_rfc3339(self.text(key), f"{self.what}.{key}")

    def obj(self, key: str) -> Fields:
        return Fields(self.doc.get(key), f"{self.what}.{key}")

    def array(self, key: str) -> list[Any]:
        return list(self._get(key, list, False))


def parse_rfc3339(text: str, what: str = "time") -> datetime:
    """An RFC 3339 time with its offset, as the services write them, in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise UnexpectedResponse(f"{what}: {text!r} is not an RFC 3339 time with an offset")
    return moment


# -- command results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountOpened:
    account_id: str
    currency: str
    overdraft_limit: int
    owner: str | None
    position: int
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> AccountOpened:
        f = Fields(body, "account opened")
        return cls(
            f.text("account_id"),
            f.text("currency"),
            f.opt_integer("overdraft_limit") or 0,
            f.opt_text("owner"),
            f.integer("position"),
            replayed,
        )


@dataclass(frozen=True, slots=True)
class MoneyMoved:
    """A deposit or a withdrawal: `balance` is the account's balance right after it."""

    transaction_id: str
    account_id: str
    amount: int
    balance: int
    position: int
    replayed: bool = False
    available: int = 0  # the balance less the account's holds, right after it

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> MoneyMoved:
        f = Fields(body, "money moved")
        transaction_id, account_id = f.text("transaction_id"), f.text("account_id")
        amount, balance = f.integer("amount"), f.integer("balance")
        available = f.opt_integer("available")  # servers before two-phase transfers: no holds
        return cls(
            transaction_id,
            account_id,
            amount,
            balance,
            f.integer("position"),
            replayed,
            balance if available is None else available,
        )


@dataclass(frozen=True, slots=True)
class Transfer:
    transaction_id: str
    from_account: str
    to_account: str
    amount: int
    from_balance: int
    to_balance: int
    position: int
    replayed: bool = False
    from_available: int = 0  # the sender's balance less its holds, right after it

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> Transfer:
        f = Fields(body, "transfer")
        transaction_id = f.text("transaction_id")
        from_account, to_account = f.text("from_account"), f.text("to_account")
        amount, from_balance = f.integer("amount"), f.integer("from_balance")
        from_available = f.opt_integer("from_available")
        return cls(
            transaction_id,
            from_account,
            to_account,
            amount,
            from_balance,
            f.integer("to_balance"),
            f.integer("position"),
            replayed,
            from_balance if from_available is None else from_available,
        )


@dataclass(frozen=True, slots=True)
class AccountClosed:
    account_id: str
    position: int
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Any, *, replayed: bool = False) -> AccountClosed:
        f = Fields(body, "account closed")
        return cls(f.text("account_id"), f.integer("position"), replayed)


# -- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; `next` is the cursor of the following page (None: the last)."""

    items: tuple[T, ...]
    next: str | None


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    currency: str
    balance: int
    overdraft_limit: int
    owner: str | None
    status: str  # "open" | "closed"
    version: int
    opened_at: datetime | None
    updated_at: datetime
    position: int  # the last position this read model applied to the account
    # Two-phase transfers: `available` = balance - pending_debits (the holds going out);
    # pending_credits is held for the account, not yet its. A server without them: no holds.
    available: int = 0
    pending_debits: int = 0
    pending_credits: int = 0

    @classmethod
    def from_json(cls, body: Any) -> Account:
        f = Fields(body, "account")
        opened = f.opt_text("opened_at")
        balance = f.integer("balance")
        available = f.opt_integer("available")
        return cls(
            f.text("account_id"),
            f.text("currency"),
            balance,
            f.integer("overdraft_limit"),
            f.opt_text("owner"),
            f.text("status"),
            f.integer("version"),
            None if opened is None else parse_rfc3339(opened, "account.opened_at"),
            f.time("updated_at"),
            f.integer("position"),
            balance if available is None else available,
            f.opt_integer("pending_debits") or 0,
            f.opt_integer("pending_credits") or 0,
        )


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One movement of money on an account; `amount` is signed (negative: money out): what
    the balance changed, 0 for a hold or a void. `held` is a two-phase item's hold, signed
    the same way (None on other items)."""

    transaction_id: str
    # deposit | withdrawal | transfer_in | transfer_out | transfer_pending | transfer_posted
    # | transfer_voided | transfer_expired
    kind: str
    amount: int
    balance_after: int
    counterparty: str | None
    reference: str | None
    recorded_at: datetime
    position: int
    available_after: int = 0
    held: int | None = None
    reverses: str | None = None  # a reversal's: the transaction it undid
    reversed_by: str | None = None  # a reversed transaction's: the reversal that undid it

    @classmethod
    def from_json(cls, body: Any) -> HistoryItem:
        f = Fields(body, "history item")
        balance_after = f.integer("balance_after")
        available_after = f.opt_integer("available_after")
        return cls(
            f.text("transaction_id"),
            f.text("kind"),
            f.integer("amount"),
            balance_after,
            f.opt_text("counterparty"),
            f.opt_text("reference"),
            f.time("recorded_at"),
            f.integer("position"),
            balance_after if available_after is None else available_after,
            f.opt_integer("held"),
            f.opt_text("reverses"),
            f.opt_text("reversed_by"),
        )


@dataclass(frozen=True, slots=True)
class PendingTransfer:
    """A two-phase transfer pending on an account (`GET /accounts/{id}/pending`): `direction`
    "out" (this account sends `amount`, held) or "in" (it is to receive it)."""

    transaction_id: str
    direction: str  # "out" | "in"
    counterparty: str
    amount: int
    reference: str | None
    expires_at: datetime | None
    recorded_at: datetime
    position: int

    @classmethod
    def from_json(cls, body: Any) -> PendingTransfer:
        f = Fields(body, "pending transfer")
        expires = f.opt_text("expires_at")
        return cls(
            f.text("transaction_id"),
            f.text("direction"),
            f.text("counterparty"),
            f.integer("amount"),
            f.opt_text("reference"),
            None if expires is None else parse_rfc3339(expires, "pending transfer.expires_at"),
            f.time("recorded_at"),
            f.integer("position"),
        )


@dataclass(frozen=True, slots=True)
class BalanceAt:
    """The balance as it was at a time or position; `as_of_position`: the event that set it."""

    account_id: str
    currency: str
    balance: int
    as_of_position: int
    available: int = 0  # the balance less the holds going out, then

    @classmethod
    def from_json(cls, body: Any) -> BalanceAt:
        f = Fields(body, "balance")
        balance = f.integer("balance")
        available = f.opt_integer("available")
        return cls(
            f.text("account_id"),
            f.text("currency"),
            balance,
            f.integer("as_of_position"),
            balance if available is None else available,
        )


@dataclass(frozen=True, slots=True)
class Movements:
    count: int
    volume: int

    @classmethod
    def from_json(cls, f: Fields) -> Movements:
        return cls(f.integer("count"), f.integer("volume"))


@dataclass(frozen=True, slots=True)
class TwoPhaseStats:
    """Two-phase transfers of one currency: holds placed, pending now (overall only),
    posted (the amount moved), voided and expired (the held amount)."""

    placed: Movements
    pending: Movements | None
    posted: Movements
    voided: Movements
    expired: Movements

    @classmethod
    def from_json(cls, f: Fields) -> TwoPhaseStats:
        none = Movements(0, 0)
        if f.doc.get("two_phase") is None:  # a server from before two-phase transfers
            return cls(none, none, none, none, none)
        t = f.obj("two_phase")
        pending = None if t.doc.get("pending") is None else Movements.from_json(t.obj("pending"))
        return cls(
            Movements.from_json(t.obj("placed")),
            pending,
            Movements.from_json(t.obj("posted")),
            Movements.from_json(t.obj("voided")),
            Movements.from_json(t.obj("expired")),
        )


@dataclass(frozen=True, slots=True)
class CurrencyStats:
    open_accounts: int
    closed_accounts: int
    total_balance: int
    deposits: Movements
    withdrawals: Movements
    transfers: Movements
    two_phase: TwoPhaseStats | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """`GET /stats`: per currency, as of `position`."""

    position: int
    currencies: Mapping[str, CurrencyStats]

    @classmethod
    def from_json(cls, body: Any) -> Stats:
        f = Fields(body, "stats")
        per: dict[str, CurrencyStats] = {}
        for currency in f.obj("currencies").doc:
            c = f.obj("currencies").obj(currency)
            per[currency] = CurrencyStats(
                c.obj("accounts").integer("open"),
                c.obj("accounts").integer("closed"),
                c.integer("total_balance"),
                Movements.from_json(c.obj("deposits")),
                Movements.from_json(c.obj("withdrawals")),
                Movements.from_json(c.obj("transfers")),
                TwoPhaseStats.from_json(c),
            )
        return cls(f.integer("position"), per)


@dataclass(frozen=True, slots=True)
class DayStats:
    accounts_opened: int
    accounts_closed: int
    net_flow: int
    deposits: Movements
    withdrawals: Movements
    transfers: Movements
    two_phase: TwoPhaseStats | None = None  # `pending` is None: a state, not a day's flow


@dataclass(frozen=True, slots=True)
class DailyStats:
    """`GET /stats/daily`: every UTC day of the range, per currency."""

    first: date
    last: date
    position: int
    days: Mapping[date, Mapping[str, DayStats]]

    @classmethod
    def from_json(cls, body: Any) -> DailyStats:
        f = Fields(body, "daily stats")
        days: dict[date, dict[str, DayStats]] = {}
        for raw in f.array("days"):
            d = Fields(raw, "day")
            per = days.setdefault(date.fromisoformat(d.text("date")), {})
            for currency in d.obj("currencies").doc:
                c = d.obj("currencies").obj(currency)
                per[currency] = DayStats(
                    c.integer("accounts_opened"),
                    c.integer("accounts_closed"),
                    c.integer("net_flow"),
                    Movements.from_json(c.obj("deposits")),
                    Movements.from_json(c.obj("withdrawals")),
                    Movements.from_json(c.obj("transfers")),
                    TwoPhaseStats.from_json(c),
                )
        first, last = date.fromisoformat(f.text("from")), date.fromisoformat(f.text("to"))
        return cls(first, last, f.integer("position"), days)


@dataclass(frozen=True, slots=True)
class ReadModelHealth:
    """A read model's `/health`: where it is, how far behind, halted or rebuilding."""

    service: str
    status: str
    position: int
    head_position: int | None
    lag: int | None
    rebuilding: bool
    halted: Mapping[str, Any] | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Any) -> ReadModelHealth:
        f = Fields(body, "health")
        halted = f.doc.get("halted")
        return cls(
            f.opt_text("service") or "",
            f.opt_text("status") or f.opt_text("state") or "",
            f.integer("position"),
            f.opt_integer("head_position"),
            f.opt_integer("lag"),
            bool(f.doc.get("rebuilding")),
            halted if isinstance(halted, dict) else None,
            f.doc,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """An operator's skip or park of the event a read model halted on (the audit record)."""

    position: int
    action: str
    stream: str
    type: str
    by: str
    at: datetime
    reason: str
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Any) -> Decision:
        f = Fields(body, "decision")
        return cls(
            f.integer("position"),
            f.text("action"),
            f.text("stream"),
            f.text("type"),
            f.text("by"),
            f.time("at"),
            f.opt_text("reason") or "",
            f.doc,
        )
