"""The keys of personal data (pii.py): one per account, in a table of the store beside the log,
never in it, so that deleting a key erases what was sealed under it from every copy of the log.

    personal_data_keys (account_id PRIMARY KEY, key_id, secret, created_at)

Every change to the table happens in the transaction of an append, so that the log and the
keys never disagree:

    create   an append that seals an account's first personal data inserts its new key; if
             another append created one meanwhile, this append fails with KeyConflict before
             anything is written, and the store seals it again under the stored key
    erase    a forget deletes the account's key and appends its PersonalDataErased: both, or
             neither (a crash between them cannot leave a log that says "erased" with the key
             still there, nor a key gone without the event readers blank their copies on)

The work travels with the batch as `KEY_WORK` (a context variable the store sets around its
`_append_batch` call and the backend reads when it queues the request).

    EventStoreError
     └── KeyConflict   another append created the account's key first (retried by the store)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.pii import AccountKey

KEY_ATTEMPTS = 5  # seal-and-append attempts when new keys keep colliding (two at most in practice)


class KeyConflict(EventStoreError):
    """Raised when an append would create a key for an account that has one already (another
    append created it after this one looked): nothing was written; seal again and retry."""

    def __init__(self) -> None:
        super().__init__("another append created this account's personal data key first")


@dataclass(frozen=True, slots=True)
class KeyWork:
    """What an append does to the key table in its transaction."""

    create: Mapping[str, AccountKey] = field(default_factory=dict)
    erase: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.create or self.erase)


NO_KEY_WORK = KeyWork()
KEY_WORK: ContextVar[KeyWork] = ContextVar("eventledger_key_work", default=NO_KEY_WORK)


def conflicts(work: KeyWork, existing: Collection[str]) -> bool:
    """Whether `work` would create a key that `existing` (the accounts that have one, read in
    the transaction) already holds."""
    return any(account in existing for account in work.create)


class MemoryKeys:
    """The key table of the memory store (and of anything that keeps keys in a dict)."""

    def __init__(self) -> None:
        self._keys: dict[str, AccountKey] = {}

    def load(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        return {a: self._keys[a] for a in accounts if a in self._keys}

    def check(self, work: KeyWork) -> None:
        if conflicts(work, self._keys.keys()):
            raise KeyConflict()

    def apply(self, work: KeyWork) -> None:
        self._keys.update(work.create)
        for account in work.erase:
            self._keys.pop(account, None)


# -- SQL shared by the SQL backends (placeholders differ: `?` in SQLite, `%s` in psycopg) -----

SQLITE_KEYS_TABLE = """
    CREATE TABLE personal_data_keys (
        account_id TEXT PRIMARY KEY,
        key_id     TEXT NOT NULL,
        secret     BLOB NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )
"""

POSTGRES_KEYS_TABLE = """
    CREATE TABLE personal_data_keys (
        account_id text PRIMARY KEY,
        key_id     text NOT NULL,
        secret     bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
"""


def rows_to_keys(rows: Collection[tuple[str, str, bytes]]) -> dict[str, AccountKey]:
    return {account: AccountKey(key_id, bytes(secret)) for account, key_id, secret in rows}
