"""The keys of personal data (pii.py): one per account, in a table of the store beside the log,
never in it, so that deleting a key erases what was sealed under it from every copy of the log.

    personal_data_keys (account_id PRIMARY KEY, key_id, secret, created_at)

Every change to the table happens in the transaction of an append, so that the log and the
keys never disagree:

    create   an append that seals an account's first personal data inserts its new key; if
             another append created one meanwhile, this append fails with KeyConflict before
             anything is written, and the store seals it again under the stored key
    use      an append that sealed under a key the store remembered (its writers keep the
             keys they seal with, so an append reads no key) names the key ids it used; if
             one is no longer the account's (a forget, here or on another instance), it
             fails with KeyConflict, and the store reads the keys again
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
    append created it after this one looked), or sealed under a key that is no longer the
    account's (deleted by a forget): nothing was written; seal again and retry."""

    def __init__(self) -> None:
        super().__init__("the account's personal data key changed while this append was sealed")


@dataclass(frozen=True, slots=True)
class KeyWork:
    """What an append does to the key table in its transaction."""

    create: Mapping[str, AccountKey] = field(default_factory=dict)
    use: Mapping[str, str] = field(default_factory=dict)  # account -> key id sealed under
    erase: tuple[str, ...] = ()
    notice: str = ""  # the forget's event id, named in what it tells other instances

    def __bool__(self) -> bool:
        return bool(self.create or self.use or self.erase)

    def accounts(self) -> set[str]:
        """The accounts whose current key the transaction must check."""
        return {*self.create, *self.use}


NO_KEY_WORK = KeyWork()
KEY_WORK: ContextVar[KeyWork] = ContextVar("eventledger_key_work", default=NO_KEY_WORK)


def conflicts(work: KeyWork, current: Mapping[str, str]) -> bool:
    """Whether `work` would create a key for an account that has one, or sealed under a key
    that is not the account's current one (`current`: account -> key id, read in the
    transaction)."""
    return any(a in current for a in work.create) or any(
        current.get(a) != key_id for a, key_id in work.use.items()
    )


def after(work: KeyWork, current: dict[str, str]) -> None:
    """`current` once `work` is applied (for the next request of the same group)."""
    current.update({a: k.key_id for a, k in work.create.items()})
    for account in work.erase:
        current.pop(account, None)


class MemoryKeys:
    """The key table of the memory store (and of anything that keeps keys in a dict)."""

    def __init__(self) -> None:
        self._keys: dict[str, AccountKey] = {}

    def load(self, accounts: Collection[str]) -> dict[str, AccountKey]:
        return {a: self._keys[a] for a in accounts if a in self._keys}

    def check(self, work: KeyWork) -> None:
        current = {a: k.key_id for a, k in self._keys.items()}
        if conflicts(work, current):
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
