"""Idempotency keys, with no state in memory: the proof that a key was used is in the event log.

A command sent with an `Idempotency-Key` gets ids derived from the key: its event ids, its
transaction id and, for an account opened without an id, the account id, each the HMAC-SHA256
of `f"{key}\\n{name}"` under the installation's idempotency secret, as a UUID (version 8).
Only the transaction service holds the secret, so no one else can compute the id a key will
produce and write an event with it first (which would make the key's first use a 422, or
pass someone else's event off as the command's result). The secret persists
(`<data-dir>/idempotency.secret` or EVENTLEDGER_IDEMPOTENCY_SECRET), so replays keep working
across restarts; every transaction instance of an installation shares it.

The command's events carry the key and a fingerprint of the request in their metadata. So
before deciding, one lookup of the first derived event id tells whether the key is already
bound, and to which request; and if two requests with one key race, the event
store's deduplication by id lets exactly one of them write.

Without a key, ids are fresh (uuid4, or whatever `new_id` the app was given).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

# 1-255 visible ASCII characters (RFC 9110 token-ish, as API.md says).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
CORRELATION_ID_HEADER = "X-Correlation-ID"


class InvalidIdempotencyKey(ValueError):
    """Raised when an Idempotency-Key header is not 1-255 visible ASCII characters."""


class IdempotencyKeyReused(Exception):
    """Raised when a key is already bound to a request with another method, path or body."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the Idempotency-Key {key!r} was already used for a different request; "
            "send a new key for a new request"
        )
        self.key = key


def check_key(value: str | None) -> str | None:
    """The key when given and valid, None when not given; InvalidIdempotencyKey otherwise."""
    if value is None:
        return None
    if _KEY.fullmatch(value) is None:
        raise InvalidIdempotencyKey(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters "
            "(no spaces, no control characters)"
        )
    return value


def check_correlation_id(value: str | None) -> str | None:
    """A caller's correlation id, kept when it is 1-255 visible ASCII characters."""
    return value if value is not None and _KEY.fullmatch(value) else None


def fingerprint(method: str, path: str, body: Mapping[str, Any], secret: bytes = b"") -> str:
    """HMAC-SHA256 under the installation's `secret` of the method, the path and the canonical
    JSON of the validated body: equal for two requests that mean the same thing (key order,
    spacing and defaults do not count). Keyed because it is stored in the log and the body
    holds personal data (an owner, a reference): a plain hash would let anyone holding the
    log confirm a guessed name even after the account was forgotten (eventstore/pii.py).
    Without a secret: the plain sha256 that events written before this change carry."""
    return _fingerprint(_fingerprinted(method, path, body), secret)


def fingerprints(method: str, path: str, body: Mapping[str, Any], secret: bytes) -> tuple[str, str]:
    """`fingerprint` under `secret` and without it (the legacy one), from one canonical JSON."""
    text = _fingerprinted(method, path, body)
    return _fingerprint(text, secret), _fingerprint(text, b"")


def _fingerprinted(method: str, path: str, body: Mapping[str, Any]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{method.upper()}\n{path}\n{canonical}".encode()


def _fingerprint(text: bytes, secret: bytes) -> str:
    if secret:
        return hmac.new(secret, text, hashlib.sha256).hexdigest()
    return hashlib.sha256(text).hexdigest()


def derived_id(secret: bytes, key: str, name: str) -> UUID:
    """The id `name` of the command sent with `key`: HMAC-SHA256 under `secret`, as a version 8
    UUID (RFC 9562: the version and variant bits set, the other 122 bits from the HMAC)."""
    digest = bytearray(hmac.new(secret, f"{key}\n{name}".encode(), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return UUID(bytes=bytes(digest))


@dataclass
class CommandIds:
    """The ids of one command and the metadata of its events."""

    key: str | None = None
    secret: bytes = field(default=b"", repr=False)  # the installation's idempotency secret
    request_fingerprint: str | None = None
    # The unkeyed fingerprint events bound before fingerprints were keyed carry: a retry of
    # such a request still matches it (never written: `metadata` stores the keyed one).
    legacy_fingerprint: str | None = field(default=None, repr=False)
    correlation_id: str | None = None
    command: str = ""
    new_id: Callable[[], UUID] = uuid4
    _fresh: dict[str, UUID] = field(default_factory=dict, repr=False)

    def _id(self, name: str) -> UUID:
        # Fresh ids are drawn once per command, so a retry after a conflict reuses them;
        # derived ones are kept too (an HMAC and a UUID each, asked for several times).
        made = self._fresh.get(name)
        if made is None:
            key = self.key
            made = self.new_id() if key is None else derived_id(self.secret, key, name)
            self._fresh[name] = made
        return made

    def event_id(self, index: int) -> UUID:
        return self._id(str(index))

    @property
    def transaction_id(self) -> str:
        return str(self._id("transaction"))

    @property
    def command_id(self) -> str:
        return str(self._id("command"))

    def account_id(self) -> str:
        """An account id for an open without one: `acc-` and 20 hex digits."""
        return "acc-" + self._id("account").hex[:20]

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "correlation_id": self.correlation_id or self.command_id,
            "causation_id": self.command_id,
            "command": self.command,
        }
        if self.key is not None:
            meta["idempotency_key"] = self.key
            meta["request_fingerprint"] = self.request_fingerprint
        return meta
