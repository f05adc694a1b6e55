"""The schema history of the domain's events: one pure function per step.

The store's `UpcasterRegistry` applies these on every read path, so the domain only ever
decodes the current shape. Register them with::

    for event_type, from_version, upcaster in UPCASTERS:
        registry.register(event_type, from_version, upcaster)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def account_opened_v1_to_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    """AccountOpened v1 -> v2: v2 adds `overdraft_limit`; v1 accounts had no overdraft."""
    upcast = dict(data)
    upcast["overdraft_limit"] = 0
    return upcast


UPCASTERS: list[tuple[str, int, Callable[[Mapping[str, Any]], dict[str, Any]]]] = [
    ("AccountOpened", 1, account_opened_v1_to_v2),
]
