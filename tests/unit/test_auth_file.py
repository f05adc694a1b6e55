"""The auth file: strict parsing, errors that name the file and the problem, and tokens
identified by their hash alone."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventledger.credentials import AuthFileError, TokenEntry, parse_auth_file, token_digest
from eventledger.services.auth import Authenticator

TOKEN = "tok_" + "a" * 40
DIGEST = token_digest(TOKEN)


def entry(**overrides: Any) -> dict[str, Any]:
    return {"name": "payroll", "sha256": DIGEST, "scopes": ["ledger:write"], **overrides}


def text(document: Any) -> str:
    return json.dumps(document)


def test_a_valid_auth_file_gives_each_token_its_name_hash_and_scopes() -> None:
    other = entry(name="reader", sha256=token_digest("x" * 20), scopes=["events:read", "metrics"])
    entries = parse_auth_file(text({"tokens": [entry(), other]}), source="auth.json")
    assert entries == (
        TokenEntry("payroll", DIGEST, frozenset({"ledger:write"})),
        TokenEntry("reader", token_digest("x" * 20), frozenset({"events:read", "metrics"})),
    )


def test_an_auth_file_with_no_tokens_is_valid_and_lets_no_one_in() -> None:
    entries = parse_auth_file('{"tokens": []}', source="auth.json")
    assert entries == ()
    assert Authenticator(entries).identify(TOKEN) is None


BAD_FILES = [
    ("not JSON", "{tokens: []}", "not valid JSON"),
    ("a list", "[]", 'exactly one member, "tokens"'),
    ("an extra member", text({"tokens": [], "admin": True}), 'exactly one member, "tokens"'),
    ("tokens not a list", text({"tokens": {}}), '"tokens" must be a list'),
    ("duplicate JSON keys", '{"tokens": [], "tokens": []}', "duplicate key 'tokens'"),
    ("an entry without scopes", text({"tokens": [{"name": "a", "sha256": DIGEST}]}), "tokens[0]"),
    ("an entry with a token in clear", text({"tokens": [entry(token=TOKEN)]}), "exactly"),
    ("a name with a colon", text({"tokens": [entry(name="a:b")]}), "tokens[0].name"),
    ("an empty name", text({"tokens": [entry(name="")]}), "tokens[0].name"),
    ("an upper-case hash", text({"tokens": [entry(sha256=DIGEST.upper())]}), "64 lowercase hex"),
    ("a short hash", text({"tokens": [entry(sha256=DIGEST[:40])]}), "64 lowercase hex"),
    ("no scopes", text({"tokens": [entry(scopes=[])]}), "non-empty list"),
    ("an unknown scope", text({"tokens": [entry(scopes=["root"])]}), "unknown scope 'root'"),
    ("a scope twice", text({"tokens": [entry(scopes=["admin", "admin"])]}), "scope twice"),
    ("a name twice", text({"tokens": [entry(), entry(sha256="0" * 64)]}), "appears twice"),
    ("a hash twice", text({"tokens": [entry(), entry(name="other")]}), "same sha256"),
]


@pytest.mark.parametrize(("case", "content", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_an_invalid_auth_file_is_refused_naming_the_file_and_the_problem(
    case: str, content: str, problem: str
) -> None:
    with pytest.raises(AuthFileError) as refused:
        parse_auth_file(content, source="/srv/ledger/auth.json")
    assert str(refused.value).startswith("auth file /srv/ledger/auth.json: ")
    assert problem in str(refused.value)
    assert TOKEN not in str(refused.value)


def test_a_token_is_recognised_by_its_hash_and_nothing_else() -> None:
    authenticator = Authenticator(parse_auth_file(text({"tokens": [entry()]}), source="a"))
    found = authenticator.identify(TOKEN)
    assert found is not None and found.name == "payroll"
    assert authenticator.identify(TOKEN[:-1] + "b") is None
    assert authenticator.identify(DIGEST) is None  # the stored hash is no password


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=64))
def test_only_the_exact_token_is_recognised(presented: str) -> None:
    authenticator = Authenticator([TokenEntry("payroll", DIGEST, frozenset({"admin"}))])
    assert (authenticator.identify(presented) is not None) == (presented == TOKEN)
