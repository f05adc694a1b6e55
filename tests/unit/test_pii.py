"""Sealing personal data (eventstore/pii.py): what goes in comes out under the same key, and
nothing else does."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from eventledger.eventstore import pii
from eventledger.eventstore.records import NewEvent, RecordedEvent, StreamAppend


def recorded(stream: str, data: dict[str, object], event_id: object = None) -> RecordedEvent:
    return RecordedEvent(
        id=event_id or uuid4(),  # type: ignore[arg-type]
        stream=stream,
        type="MoneyDeposited",
        schema_version=1,
        data=data,
        metadata={"correlation_id": "c"},
        stream_version=2,
        position=7,
        recorded_at=datetime(2026, 12, 3, tzinfo=UTC),
    )


def test_a_sealed_value_opens_to_its_plaintext_under_its_key() -> None:
    key, event_id = pii.new_key(), uuid4()
    sealed = pii.seal(key, "Zoë Ångström", event_id=event_id, field="owner")
    assert sealed.startswith(f"pii1:{key.key_id}:")
    # The plaintext is nowhere in the sealed bytes (a two-letter check failed by chance when
    # the random ciphertext's base64 held "Zo").
    payload = sealed.rsplit(":", 1)[1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert "Zoë Ångström".encode() not in raw
    assert pii.open_sealed(key, sealed, event_id=event_id, field="owner") == "Zoë Ångström"


def test_sealing_twice_gives_two_texts_a_fresh_nonce_each() -> None:
    key, event_id = pii.new_key(), uuid4()
    assert pii.seal(key, "x", event_id=event_id, field="owner") != pii.seal(
        key, "x", event_id=event_id, field="owner"
    )


@pytest.mark.parametrize("position", [len("pii1:") + 17, -1, -5])
def test_an_altered_sealed_value_is_refused(position: int) -> None:
    key, event_id = pii.new_key(), uuid4()
    sealed = pii.seal(key, "rent for May", event_id=event_id, field="reference")
    flipped = "A" if sealed[position] != "A" else "B"
    altered = (
        sealed[:position] + flipped + sealed[position + 1 :]
        if position != -1
        else (sealed[:-1] + flipped)
    )
    with pytest.raises(pii.PersonalDataUnreadable):
        pii.open_sealed(key, altered, event_id=event_id, field="reference")


def test_a_sealed_value_moved_to_another_event_or_field_is_refused() -> None:
    key, event_id = pii.new_key(), uuid4()
    sealed = pii.seal(key, "Alice", event_id=event_id, field="owner")
    with pytest.raises(pii.PersonalDataUnreadable):
        pii.open_sealed(key, sealed, event_id=uuid4(), field="owner")
    with pytest.raises(pii.PersonalDataUnreadable):
        pii.open_sealed(key, sealed, event_id=event_id, field="reference")


def test_a_sealed_value_does_not_open_under_another_key() -> None:
    key, other, event_id = pii.new_key(), pii.new_key(), uuid4()
    sealed = pii.seal(key, "Alice", event_id=event_id, field="owner")
    wrong = pii.AccountKey(key.key_id, other.secret)  # same id, wrong secret
    with pytest.raises(pii.PersonalDataUnreadable):
        pii.open_sealed(wrong, sealed, event_id=event_id, field="owner")


def test_a_key_never_shows_its_secret_in_its_repr() -> None:
    key = pii.new_key()
    assert key.secret.hex() not in repr(key) and str(key.secret) not in repr(key)


def test_only_owner_and_reference_text_of_account_streams_is_sealed() -> None:
    key = pii.new_key()
    plain = NewEvent(uuid4(), "MoneyDeposited", {"account_id": "a", "amount": 5, "reference": None})
    personal = NewEvent(uuid4(), "MoneyDeposited", {"account_id": "a", "reference": "rent"})
    other = NewEvent(uuid4(), "Noted", {"owner": "Alice"})
    appends = [
        StreamAppend("account-a", 1, [plain, personal]),
        StreamAppend("notes-1", "any", [other]),  # type: ignore[arg-type]
    ]
    assert pii.accounts_to_seal(appends) == {"a"}
    sealed = pii.seal_appends(appends, {"a": key})
    first, second = sealed[0].events
    assert first is plain  # nothing personal: the same event, no work
    assert pii.is_sealed(second.data["reference"]) and second.data["account_id"] == "a"
    assert sealed[1].events[0] is other
    assert pii.accounts_to_seal([StreamAppend("account-a", 1, [plain])]) == set()


def test_reveal_opens_under_the_key_and_erases_without_it() -> None:
    key, event_id = pii.new_key(), uuid4()
    sealed = pii.seal(key, "rent", event_id=event_id, field="reference")
    event = recorded("account-a", {"account_id": "a", "reference": sealed}, event_id)
    assert pii.accounts_to_open([event]) == {"a"}
    (opened,) = pii.reveal([event], {"a": key})
    assert opened.data["reference"] == "rent" and pii.ERASED not in opened.metadata
    (erased,) = pii.reveal([event], {})
    assert erased.data["reference"] is None
    assert erased.metadata == {"correlation_id": "c", "erased": ["reference"]}
    assert erased.hash == event.hash and erased.position == event.position
    # A newer key of the same account (created after a forget) does not open the old value.
    (still,) = pii.reveal([event], {"a": pii.new_key()})
    assert still.data["reference"] is None


def test_plaintext_written_before_sealing_is_shown_and_counted_as_not_erasable() -> None:
    event = recorded("account-a", {"account_id": "a", "reference": "old rent"})
    assert pii.accounts_to_open([event]) == set()
    assert pii.reveal([event], {}) == [event]
    assert pii.plaintext_fields([event]) == 1
    sealed = recorded(
        "account-a",
        {"reference": pii.seal(pii.new_key(), "x", event_id=uuid4(), field="reference")},
    )
    assert pii.plaintext_fields([sealed]) == 0
