"""Event ids made by eventledger are UUIDv7: valid, unique, and in the order they were made."""

from __future__ import annotations

import itertools
import pickle
import time
import uuid

from eventledger.eventstore.ids import uuid7


def test_an_id_is_a_version_7_uuid_of_the_rfc_variant_carrying_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == "specified in RFC 4122"
    assert before <= made.int >> 80 <= after


def test_ids_made_one_after_another_are_unique_and_mostly_ascending() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    # Within a millisecond the 12-bit counter orders them, unless it wraps: nearly every
    # neighbour pair ascends (a random v4 would ascend half the time).
    ascending = sum(a < b for a, b in itertools.pairwise(ids))
    assert ascending >= 0.99 * (len(ids) - 1)


def test_an_id_is_a_uuid_like_any_other() -> None:
    # uuid7 builds the UUID without its constructor: it must be indistinguishable from one.
    made = uuid7()
    same = uuid.UUID(str(made))
    assert type(made) is uuid.UUID
    assert made == same and hash(made) == hash(same) and repr(made) == repr(same)
    assert made.is_safe is same.is_safe
    assert pickle.loads(pickle.dumps(made)) == made
    assert {made: 1}[same] == 1
