"""Money and the plain values of commands: ranges, currencies, identifiers, free text.

Money is an integer number of minor units (cents) with an ISO 4217 currency per account,
never a float. Each `check_*` function returns the value unchanged when it is valid and
raises the matching `InvalidCommand` subclass (with `field` set) when it is not.
"""

from __future__ import annotations

import re
import unicodedata

from eventledger.domain.errors import (
    BalanceOutOfRange,
    InvalidAccountId,
    InvalidAmount,
    InvalidCurrency,
    InvalidOverdraftLimit,
    InvalidOwner,
    InvalidReference,
    InvalidTransactionId,
)

# Amounts stop at 2^53-1 so that every JSON client, including those that read numbers as
# IEEE doubles (JavaScript), gets them exactly.
MIN_AMOUNT = 1
MAX_AMOUNT = 2**53 - 1
MAX_OVERDRAFT_LIMIT = 2**53 - 1
# Balances are stored as BIGINT, hence the signed 64-bit range.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

MAX_TEXT_LENGTH = 256

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# ISO 4217 list one (current currency and funds codes), as amended up to 2026: HRK (2023),
# ZWL (replaced by ZWG, 2024), SLL (replaced by SLE), ANG (replaced by XCG, 2025) and BGN
# (euro from 2026) are withdrawn. Codes are case-sensitive: "usd" is refused.
_ISO_4217_LIST_ONE = """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF
    BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF
    CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP
    DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ
    GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV
    MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR
    PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP
    SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY
    TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND
    VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD
    XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG
"""
CURRENCIES: frozenset[str] = frozenset(_ISO_4217_LIST_ONE.split())


def _show(value: object) -> str:
    """A short repr for error messages: a 10 kB string is not echoed back whole."""
    text = repr(value)
    return text if len(text) <= 70 else f"{text[:60]}… ({len(text)} characters)"


def check_amount(amount: object, *, field: str = "amount") -> int:
    """An amount of money: an int (not a bool, not a float) in MIN_AMOUNT..MAX_AMOUNT."""
    # `type(...) is int`, not isinstance: bool is a subclass of int, and True is not 1 cent.
    if type(amount) is int and MIN_AMOUNT <= amount <= MAX_AMOUNT:
        return amount
    raise InvalidAmount(
        f"{field} must be an integer number of minor units from {MIN_AMOUNT} "
        f"to {MAX_AMOUNT}, got {_show(amount)}",
        field=field,
    )


def check_overdraft_limit(limit: object, *, field: str = "overdraft_limit") -> int:
    """An overdraft limit: an int (not a bool) in 0..MAX_OVERDRAFT_LIMIT minor units."""
    if type(limit) is int and 0 <= limit <= MAX_OVERDRAFT_LIMIT:
        return limit
    raise InvalidOverdraftLimit(
        f"{field} must be an integer number of minor units from 0 "
        f"to {MAX_OVERDRAFT_LIMIT}, got {_show(limit)}",
        field=field,
    )


def check_currency(currency: object, *, field: str = "currency") -> str:
    """A currency: an active ISO 4217 alphabetic code, upper case."""
    if isinstance(currency, str) and currency in CURRENCIES:
        return currency
    raise InvalidCurrency(
        f"{field} must be an active ISO 4217 currency code such as 'EUR' or 'USD', "
        f"got {_show(currency)}",
        field=field,
    )


def check_balance(balance: int, *, account_id: str | None = None) -> int:
    """A balance: within the signed 64-bit range, else BalanceOutOfRange."""
    if INT64_MIN <= balance <= INT64_MAX:
        return balance
    raise BalanceOutOfRange(balance, account_id=account_id)


def check_account_id(account_id: object, *, field: str = "account_id") -> str:
    """An account id: 1-64 of letters, digits, '_', '.', '-', starting with a letter or digit."""
    # fullmatch, not match: with match, "$" would also accept a trailing newline.
    if isinstance(account_id, str) and ACCOUNT_ID.fullmatch(account_id) is not None:
        return account_id
    raise InvalidAccountId(
        f"{field} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a "
        f"letter or digit, got {_show(account_id)}",
        field=field,
    )


# The canonical spelling of a UUID, as `str(uuid.UUID(...))` writes it (a regex: 10x faster
# than parsing, and this runs for every money event the stream service takes).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _is_canonical_uuid(text: str) -> bool:
    return _CANONICAL_UUID.fullmatch(text) is not None


def check_transaction_id(transaction_id: object, *, field: str = "transaction_id") -> str:
    """A transaction id: a UUID in canonical form (lowercase hex, hyphenated, 36 characters)."""
    # One spelling per id, so that ids compare equal as strings in every read model.
    if isinstance(transaction_id, str) and _is_canonical_uuid(transaction_id):
        return transaction_id
    raise InvalidTransactionId(
        f"{field} must be a UUID in canonical form "
        f"('xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx', lowercase), got {_show(transaction_id)}",
        field=field,
    )


# Characters that text of the ledger never holds, by Unicode general category:
#   Cc  control characters (C0, DEL, C1): they move terminals' cursors and end lines;
#   Cs  lone surrogates: they cannot be encoded as UTF-8, so they would fail at the store;
#   Cf  format characters, invisible by design: the bidi embeddings, overrides and isolates
#       (U+202A-U+202E, U+2066-U+2069), the marks U+200E, U+200F, U+061C, the zero-width
#       space and joiners (U+200B-U+200D), the word joiner U+2060, the BOM U+FEFF, tags...:
#       they make a reference read differently from what it is (U+202E turns "gpj.exe" into
#       "exe.jpg") or two equal-looking references differ;
#   Zl, Zp  the line and paragraph separators U+2028, U+2029: line breaks in disguise.
# The price: emoji joined with U+200D (family, profession emoji) are refused too.
FORBIDDEN_TEXT_CATEGORIES = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})


def is_clean_text(text: str) -> bool:
    """Text of at most 256 characters holding none of FORBIDDEN_TEXT_CATEGORIES: the one text
    rule of references and owners, for commands and stored events alike."""
    if len(text) > MAX_TEXT_LENGTH:
        return False
    if text.isascii():
        # The fast path: printable ASCII is all most references are made of.
        return text.isprintable()
    category = unicodedata.category
    return not any(category(char) in FORBIDDEN_TEXT_CATEGORIES for char in set(text))


def check_reference(reference: object, *, field: str = "reference") -> str | None:
    """An optional reference: None, or at most 256 characters without control, format
    (bidi, zero-width) or separator characters (`is_clean_text`)."""
    if reference is None or (isinstance(reference, str) and is_clean_text(reference)):
        return reference
    raise InvalidReference(
        f"{field} must be text of at most {MAX_TEXT_LENGTH} characters without control, "
        f"bidi or invisible characters, got {_show(reference)}",
        field=field,
    )


def check_owner(owner: object, *, field: str = "owner") -> str | None:
    """An optional owner: None, or at most 256 characters without control, format (bidi,
    zero-width) or separator characters (`is_clean_text`)."""
    if owner is None or (isinstance(owner, str) and is_clean_text(owner)):
        return owner
    raise InvalidOwner(
        f"{field} must be text of at most {MAX_TEXT_LENGTH} characters without control, "
        f"bidi or invisible characters, got {_show(owner)}",
        field=field,
    )
