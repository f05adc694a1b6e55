"""The credentials of an installation, as files: the auth file, token files, the idempotency
secret. No web framework here: the command line reads its token without loading one.

* The **auth file** `{"tokens": [{"name", "sha256", "scopes": [...]}]}` (API.md, "Security")
  holds the SHA-256 of each token, never a token. `load_auth_file` validates it strictly and
  names the file and the problem (`AuthFileError`). A file that others may write is refused:
  whoever can write it can give themselves every scope.
* **Token files** hold one token each, mode 0600 in a 0700 folder (`<data-dir>/tokens/`).
* `add_token` / `revoke_token` change an auth file under a lock, by atomic replacement
  (a reader sees the old file or the new one, never half of one), mode 0600.
* `provision` is what `eventledger up` does on every start: the auth file and one token per
  internal caller, least privilege (`INTERNAL_CALLERS`), created once and then reused.
* `idempotency_secret`: the per-installation key from which the transaction service derives
  the ids of a keyed command (see services/transaction/idempotency.py).

Nothing here ever writes a token to a log or an error message; errors name files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventledger.config import ConfigError, Settings, check_token

log = logging.getLogger(__name__)

SCOPES = ("events:read", "events:append", "ledger:write", "ledger:read", "admin", "metrics")
# The callers `eventledger up` makes a token for, and what each may do: only the transaction
# service appends; the read models only read the log; the command line has every scope.
INTERNAL_CALLERS: Mapping[str, tuple[str, ...]] = {
    "transaction": ("events:read", "events:append"),
    "accounting": ("events:read",),
    "statistics": ("events:read",),
    # The browser console reads the log and the read models, and sends the command form's
    # commands; never `admin` (the operator pastes an admin token into the page for that).
    "console": ("events:read", "ledger:read", "ledger:write", "metrics"),
    "cli": SCOPES,
}
SECRET_BYTES = 32

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as the auth file stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AuthFileError(ValueError):
    """Raised when an auth file cannot be read or is not valid; the message names the file."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token of an auth file: its name, the SHA-256 digest of the token, its scopes."""

    name: str
    sha256: str  # lowercase hex
    scopes: frozenset[str]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes)}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def parse_auth_file(text: str, *, source: str) -> tuple[TokenEntry, ...]:
    """The tokens of an auth file's text; `AuthFileError` naming `source` and the problem."""

    def bad(problem: str) -> AuthFileError:
        return AuthFileError(f"auth file {source}: {problem}")

    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise bad('must be a JSON object with exactly one member, "tokens"')
    tokens = document["tokens"]
    if not isinstance(tokens, list):
        raise bad('"tokens" must be a list')
    entries: list[TokenEntry] = []
    for index, raw in enumerate(tokens):
        where = f"tokens[{index}]"
        if not isinstance(raw, dict) or set(raw) != {"name", "sha256", "scopes"}:
            raise bad(f'{where} must be an object with exactly "name", "sha256" and "scopes"')
        name, digest, scopes = raw["name"], raw["sha256"], raw["scopes"]
        if not isinstance(name, str) or TOKEN_NAME.fullmatch(name) is None:
            raise bad(
                f"{where}.name must be 1-64 letters, digits, '_', '.', '-' "
                f"starting with a letter or digit, not {name!r}"
            )
        if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
            raise bad(f"{where}.sha256 ({name}) must be 64 lowercase hex digits")
        if not isinstance(scopes, list) or not scopes:
            raise bad(f"{where}.scopes ({name}) must be a non-empty list")
        for scope in scopes:
            if scope not in SCOPES:
                raise bad(f"{where}.scopes ({name}): unknown scope {scope!r}; known: {SCOPES}")
        if len(set(scopes)) != len(scopes):
            raise bad(f"{where}.scopes ({name}) names a scope twice")
        entries.append(TokenEntry(name, digest, frozenset(scopes)))
    names = [e.name for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise bad(f"the token name {name!r} appears twice")
    digests = [e.sha256 for e in entries]
    if len(set(digests)) != len(digests):
        raise bad("two tokens have the same sha256: one token would have two names")
    return tuple(entries)


def check_not_writable_by_others(path: Path, what: str) -> os.stat_result:
    """`path`'s stat; `AuthFileError` when a group or other users may write it."""
    try:
        info = path.stat()
    except OSError as exc:
        raise AuthFileError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise AuthFileError(f"{what} {path}: not a regular file")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuthFileError(
            f"{what} {path}: other users may write it (mode {stat.S_IMODE(info.st_mode):04o}), "
            f"so anyone could add a token; chmod 600 {path}"
        )
    return info


def load_auth_file(path: Path) -> tuple[TokenEntry, ...]:
    """The tokens of the auth file at `path`, strictly validated (`AuthFileError`)."""
    check_not_writable_by_others(path, "auth file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"auth file {path}: cannot read it ({exc})") from exc
    return parse_auth_file(text, source=str(path))


def render_auth_file(entries: Iterable[TokenEntry]) -> str:
    return json.dumps({"tokens": [e.as_json() for e in entries]}, indent=2) + "\n"


def new_token() -> str:
    """A new random token: 256 bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


# -- private files ----------------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """`path`, created when missing as a folder only its owner may enter (0700). An existing
    folder keeps its mode: it may be shared, and the files in it are 0600 anyway."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 (a reader sees the old file or the
    new one; the new one is on disk before it replaces the old)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_private(path: Path, text: str) -> bool:
    """Write `path` (0600) only if it does not exist yet; False when it already did. Two
    processes racing here agree on one content: the first link wins, the other reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _warn_if_readable_by_others(path: Path, what: str) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s may be read by other users (mode %04o): chmod 600 it", what, path, mode)


def read_token_file(path: Path, *, what: str = "token file") -> str:
    """The token in `path` (surrounding whitespace ignored); ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc})") from exc
    _warn_if_readable_by_others(path, what)
    return check_token(text.strip(), f"{what} {path}")


# -- changing an auth file --------------------------------------------------------------------


@contextmanager
def _locked(auth_file: Path) -> Iterator[None]:
    """Serialise changes of one auth file between processes (a lock file beside it)."""
    auth_file.parent.mkdir(parents=True, exist_ok=True)
    lock = auth_file.with_name(f".{auth_file.name}.lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entries_or_empty(auth_file: Path) -> list[TokenEntry]:
    return list(load_auth_file(auth_file)) if auth_file.exists() else []


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, each one known and none twice; ValueError naming the first bad one."""
    given = tuple(scopes)
    if not given:
        raise ValueError(f"give at least one scope: {', '.join(SCOPES)}")
    for scope in given:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: the scopes are {', '.join(SCOPES)}")
    return tuple(dict.fromkeys(given))


def add_token(auth_file: Path, name: str, scopes: Iterable[str]) -> str:
    """Add a new token named `name` to `auth_file` (created if missing) and return it: the
    only time it exists in clear outside its holder. ValueError for a name already there,
    a bad name or an unknown scope."""
    if TOKEN_NAME.fullmatch(name) is None:
        raise ValueError(
            f"a token name is 1-64 letters, digits, '_', '.', '-' starting with a letter or "
            f"digit, not {name!r}"
        )
    wanted = frozenset(check_scopes(scopes))
    with _locked(auth_file):
        entries = _entries_or_empty(auth_file)
        if any(entry.name == name for entry in entries):
            raise ValueError(
                f"{auth_file} already has a token named {name!r}: revoke it first, or "
                "choose another name (e.g. with a date, to rotate)"
            )
        token = new_token()
        entries.append(TokenEntry(name, token_digest(token), wanted))
        write_private(auth_file, render_auth_file(entries))
    return token


def revoke_token(auth_file: Path, name: str) -> None:
    """Remove the token named `name`; ValueError when there is none."""
    with _locked(auth_file):
        entries = _entries_or_empty(auth_file)
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            raise ValueError(f"{auth_file} has no token named {name!r}")
        write_private(auth_file, render_auth_file(kept))


# -- what `eventledger up` sets up ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installation:
    """The auth file and the token file of each internal caller."""

    auth_file: Path
    token_files: Mapping[str, Path]
    created: tuple[str, ...]  # the names whose token was made on this start


def provision(settings: Settings) -> Installation:
    """Make sure the auth file and the internal callers' tokens exist, each with exactly its
    scopes; create what is missing (tokens in `<data-dir>/tokens/`, 0600 in a 0700 folder)
    and reuse the rest. Safe to run at every start."""
    auth_file = settings.auth_file or settings.default_auth_file()
    private_dir(settings.data_dir)
    private_dir(settings.token_file("cli").parent)
    created: list[str] = []
    with _locked(auth_file):
        entries = {entry.name: entry for entry in _entries_or_empty(auth_file)}
        changed = not auth_file.exists()
        for name, scopes in INTERNAL_CALLERS.items():
            path = settings.token_file(name)
            entry = entries.get(name)
            token = read_token_file(path) if path.exists() else None
            if (
                token is not None
                and entry is not None
                and entry.sha256 == token_digest(token)
                and entry.scopes == frozenset(scopes)
            ):
                continue  # as it was
            token = new_token()
            write_private(path, token + "\n")
            entries[name] = TokenEntry(name, token_digest(token), frozenset(scopes))
            created.append(name)
            changed = True
        if changed:
            write_private(auth_file, render_auth_file(entries.values()))
    token_files = {name: settings.token_file(name) for name in INTERNAL_CALLERS}
    return Installation(auth_file, token_files, tuple(created))


def idempotency_secret(settings: Settings, *, create: bool = True) -> bytes:
    """The installation's idempotency secret: EVENTLEDGER_IDEMPOTENCY_SECRET, else the file
    `<data-dir>/idempotency.secret`, created (0600) on first use when `create`. Every
    transaction instance of an installation must use the same one."""
    if settings.idempotency_secret is not None:
        return settings.idempotency_secret.encode("utf-8")
    path = settings.idempotency_secret_file()
    if not path.exists():
        if not create:
            raise ConfigError(f"no idempotency secret: {path} does not exist")
        private_dir(path.parent)
        create_private(path, secrets.token_hex(SECRET_BYTES) + "\n")
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"idempotency secret {path}: cannot read it ({exc})") from exc
    _warn_if_readable_by_others(path, "idempotency secret")
    if re.fullmatch(r"[0-9a-f]{64}", text) is None:
        raise ConfigError(f"idempotency secret {path}: must be 64 lowercase hex digits")
    return bytes.fromhex(text)
