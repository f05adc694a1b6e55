"""Times on the command line: printed as RFC 3339 in UTC with a `Z`, read back the same way.

What `--at` accepts (and what `history` prints can be pasted into it):

    2026-11-27T11:12:30Z           RFC 3339 with a `Z` or an offset (`+01:00`), `T` or a space
    2026-11-27T11:12:30.388Z       with a fraction: that instant
    2026-11-27                     a date: the end of that day in UTC

A time is read to the end of what it writes, so the answer includes everything recorded
within it: `11:12:30Z` is up to 11:12:30.999999, `11:12Z` up to 11:12:59.999999, a date up to
23:59:59.999999 UTC. So `balance --at <a time history printed>` includes that transaction,
although `history` shows whole seconds. A time without a zone is refused (whose 11:12?).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from eventledger.cli.output import UsageProblem

_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})?)?"
)
ACCEPTED = (
    "give an RFC 3339 time with its zone, as `history` prints it (2026-11-27T11:12:30Z, "
    "2026-11-27T12:12:30+01:00), or a date (2026-11-27: the end of that day, UTC)"
)


def format_time(moment: datetime) -> str:
    """`2026-11-27T11:12:30Z`: RFC 3339 in UTC, whole seconds (what `--at` reads back)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_instant(moment: datetime) -> str:
    """RFC 3339 in UTC with as many fraction digits as it has: `2026-11-27T11:12:29.5Z`."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def format_api(moment: datetime) -> str:
    """As the API writes times: `2026-11-27T11:12:30.388898Z` (for `--json`)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_at(text: str, option: str = "--at") -> datetime:
    """The instant `text` means for `--at` (see the module docstring); `UsageProblem` with
    what is accepted when it is not one of those."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise UsageProblem(f"{option} {text!r} is not a time: {ACCEPTED}")
    parts = match.groupdict()
    if parts["hour"] is not None and parts["zone"] is None:
        raise UsageProblem(
            f"{option} {text!r} has no zone: add Z for UTC, as `history` prints it "
            f"({text.strip()}Z), or an offset such as +01:00"
        )
    try:
        if parts["hour"] is None:  # a date: its end, in UTC
            day = datetime.fromisoformat(parts["date"]).replace(tzinfo=UTC)
            return day + timedelta(days=1, microseconds=-1)
        zone = parts["zone"].upper().replace("Z", "+00:00")
        fraction = (parts["fraction"] or "")[:6]
        start = datetime.fromisoformat(
            f"{parts['date']}T{parts['hour']}:{parts['minute']}:{parts['second'] or '00'}"
            f"{'.' + fraction.ljust(6, '0') if fraction else ''}{zone}"
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise UsageProblem(f"{option} {text!r} is not a valid time: {ACCEPTED}") from None
    if parts["fraction"] is not None:
        return start
    whole = timedelta(seconds=1) if parts["second"] is not None else timedelta(minutes=1)
    return start + whole - timedelta(microseconds=1)  # to the end of what it writes
