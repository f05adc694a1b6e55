"""Personal data in events, stored encrypted under a key per account kept outside the log, so
that deleting the key erases it from every copy of the log at once (crypto-shredding).

Personal data is exactly the fields named `owner` and `reference` of the events of `account-*`
streams, when they hold text. On append, the store seals each such value under its account's
key (`seal`); what is stored, hashed and chained is the sealed text:

    "pii1:<key id, 16 hex>:<base64url of nonce (12 bytes) + AES-256-GCM ciphertext and tag>"

The associated data binds a sealed value to its event id and field: moved to another event
or field, it no longer opens. On every read the store opens what it can (`reveal`):

    key present, same key id   the plaintext, as it was written
    key deleted (forgotten)    null, and the field named in `metadata.erased`
    key present, wrong tag     PersonalDataUnreadable: the stored text was altered

Values stored before this module existed are plaintext and stay so: an append-only log cannot
erase them (`plaintext_fields` finds them, so a forget can say so).

    EventStoreError
     └── PersonalDataUnreadable   a sealed value failed authentication under its own key
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.records import NewEvent, RecordedEvent, StreamAppend

ACCOUNT_STREAM = "account-"
FIELDS = ("owner", "reference")  # events.md: personal data lives only in these fields
PREFIX = "pii1:"
ERASED = "erased"  # the metadata key that lists the fields a reader sees erased
_KEY_ID = 16  # hex characters of a key id
_NONCE = 12


class PersonalDataUnreadable(EventStoreError):
    """Raised when a sealed value does not open under its account's key of the same key id:
    its stored text was altered (the hash chain names the event too)."""

    def __init__(self, event_id: UUID, field: str) -> None:
        super().__init__(f"the sealed {field!r} of event {event_id} fails authentication")
        self.event_id = event_id
        self.field = field


@dataclass(frozen=True, slots=True)
class AccountKey:
    """One account's data key: `key_id` names it inside every value sealed under it, so that
    a value sealed under a deleted key is told apart from one that was altered."""

    key_id: str
    secret: bytes = b""

    def __repr__(self) -> str:  # never the secret in a log line or a traceback
        return f"AccountKey(key_id={self.key_id!r})"

    def cipher(self) -> AESGCM:
        return AESGCM(self.secret)


def new_key() -> AccountKey:
    """A fresh random 256-bit key with a random id."""
    return AccountKey(secrets.token_hex(_KEY_ID // 2), AESGCM.generate_key(bit_length=256))


def account_of(stream: str) -> str | None:
    """The account whose key seals the personal data of `stream`, or None (not an account
    stream)."""
    return stream[len(ACCOUNT_STREAM) :] if stream.startswith(ACCOUNT_STREAM) else None


def _aad(event_id: UUID, field: str) -> bytes:
    return f"{event_id}/{field}".encode()


def seal(key: AccountKey, value: str, *, event_id: UUID, field: str) -> str:
    """`value` encrypted under `key`, bound to the event and field, as stored text."""
    return _seal(key.key_id, key.cipher(), value, event_id, field)


def _seal(key_id: str, cipher: AESGCM, value: str, event_id: UUID, field: str) -> str:
    nonce = os.urandom(_NONCE)
    sealed = cipher.encrypt(nonce, value.encode(), _aad(event_id, field))
    text = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
    return f"{PREFIX}{key_id}:{text}"


def is_sealed(value: object) -> bool:
    return type(value) is str and value.startswith(PREFIX)


def key_id_of(sealed: str) -> str:
    """The key id a sealed value names ("" when it is not sealed text)."""
    return sealed[len(PREFIX) : len(PREFIX) + _KEY_ID] if is_sealed(sealed) else ""


def open_sealed(key: AccountKey, sealed: str, *, event_id: UUID, field: str) -> str:
    """The plaintext of a value sealed under `key`; PersonalDataUnreadable when it does not
    authenticate (altered, moved to another event or field, or another key)."""
    return _open(key.cipher(), sealed, event_id, field)


def _open(cipher: AESGCM, sealed: str, event_id: UUID, field: str) -> str:
    body = sealed[len(PREFIX) + _KEY_ID + 1 :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        # Only the one text that encodes these bytes: another spelling of them (spare bits
        # of the last character set) is an alteration too, which decryption alone misses.
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != body.encode():
            raise ValueError("not the canonical base64 of its bytes")
        plain = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(event_id, field))
        return plain.decode()
    except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError):
        raise PersonalDataUnreadable(event_id, field) from None


# -- the events of an append ----------------------------------------------------------------


def _personal(data: Mapping[str, Any]) -> bool:
    # Two lookups: all the work an event without personal data costs on append.
    return type(data.get("owner")) is str or type(data.get("reference")) is str


def accounts_to_seal(appends: Sequence[StreamAppend]) -> set[str]:
    """The accounts whose keys the appends need (empty: nothing to seal, the common case)."""
    accounts: set[str] = set()
    for append in appends:
        if append.stream.startswith(ACCOUNT_STREAM) and any(
            _personal(e.data) for e in append.events
        ):
            accounts.add(append.stream[len(ACCOUNT_STREAM) :])
    return accounts


def seal_appends(
    appends: Sequence[StreamAppend], keys: Mapping[str, AccountKey]
) -> list[StreamAppend]:
    """The appends with every personal value sealed under its account's key (`keys` holds a
    key for every account `accounts_to_seal` named)."""
    sealed: list[StreamAppend] = []
    for append in appends:
        account = account_of(append.stream)
        if account is None or account not in keys:
            sealed.append(append)
            continue
        key = keys[account]
        cipher = key.cipher()  # one per append, not per value
        events = [
            _seal_event(key.key_id, cipher, e) if _personal(e.data) else e for e in append.events
        ]
        sealed.append(StreamAppend(append.stream, append.expected_version, events))
    return sealed


def _seal_event(key_id: str, cipher: AESGCM, event: NewEvent) -> NewEvent:
    data = dict(event.data)
    for field in FIELDS:
        value = data.get(field)
        if type(value) is str:
            data[field] = _seal(key_id, cipher, value, event.id, field)
    return NewEvent(event.id, event.type, data, event.metadata, event.schema_version)


# -- the events of a read -------------------------------------------------------------------


def _sealed_fields(event: RecordedEvent) -> bool:
    data = event.data
    return is_sealed(data.get("owner")) or is_sealed(data.get("reference"))


def accounts_to_open(events: Iterable[RecordedEvent]) -> set[str]:
    """The accounts whose keys opening `events` needs (empty: nothing sealed, no key read)."""
    return {
        e.stream[len(ACCOUNT_STREAM) :]
        for e in events
        if e.stream.startswith(ACCOUNT_STREAM) and _sealed_fields(e)
    }


def reveal(events: Sequence[RecordedEvent], keys: Mapping[str, AccountKey]) -> list[RecordedEvent]:
    """The events as readers see them: sealed values opened, or null where the account's key
    was deleted (the field then named in `metadata.erased`)."""
    # One cipher per key for the whole page: a catch-up page holds many events of few accounts.
    ciphers = {account: (key.key_id, key.cipher()) for account, key in keys.items()}
    return [_reveal(e, ciphers) if _sealed_fields(e) else e for e in events]


def _reveal(event: RecordedEvent, ciphers: Mapping[str, tuple[str, AESGCM]]) -> RecordedEvent:
    found = ciphers.get(event.stream[len(ACCOUNT_STREAM) :])
    data = dict(event.data)
    erased: list[str] = []
    for field in FIELDS:
        value = data.get(field)
        if type(value) is not str or not value.startswith(PREFIX):
            continue
        if found is None or found[0] != value[len(PREFIX) : len(PREFIX) + _KEY_ID]:
            data[field] = None
            erased.append(field)
        else:
            data[field] = _open(found[1], value, event.id, field)
    metadata = {**event.metadata, ERASED: erased} if erased else event.metadata
    # Spelled out rather than dataclasses.replace: a catch-up page reveals thousands.
    return RecordedEvent(
        event.id,
        event.stream,
        event.type,
        event.schema_version,
        data,
        metadata,
        event.stream_version,
        event.position,
        event.recorded_at,
        event.hash,
        event.batch_end,
    )


def plaintext_fields(events: Iterable[RecordedEvent]) -> int:
    """How many personal values of these stored events are plaintext (written before personal
    data was sealed): values no forget can erase from an append-only log."""
    return sum(
        1
        for e in events
        for field in FIELDS
        if type(e.data.get(field)) is str and not is_sealed(e.data.get(field))
    )
