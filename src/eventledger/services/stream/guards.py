"""The shape guard of account streams.

The stream service is a general event store, but the read models treat an event in an
`account-<id>` stream that they cannot apply as a reason to halt (balances are money; they never
skip). So the store refuses, up front, events in account streams that no reader could decode:
unknown types, schema versions other than the current one, malformed data, or an `account_id`
that is not the stream's. The account *rules* (funds, open/closed) are the transaction service's
job; the stream service is internal and only the transaction service should write account
streams (see the README's deployment notes).
"""

from __future__ import annotations

from collections.abc import Sequence

from eventledger.domain.events import ACCOUNT_STREAM_PREFIX, MalformedEvent, UnknownEvent, decode
from eventledger.eventstore.records import StreamAppend
from eventledger.services.http import ProblemError


def check_account_events(appends: Sequence[StreamAppend]) -> None:
    """Raise a 422 `invalid-account-event` problem for an event no account reader can apply."""
    for append in appends:
        if not append.stream.startswith(ACCOUNT_STREAM_PREFIX):
            continue
        account_id = append.stream.removeprefix(ACCOUNT_STREAM_PREFIX)
        for index, event in enumerate(append.events):
            try:
                decoded = decode(event.type, event.data, schema_version=event.schema_version)
            except (UnknownEvent, MalformedEvent) as exc:
                raise _invalid(append.stream, index, str(exc)) from exc
            if decoded.account_id != account_id:
                raise _invalid(
                    append.stream,
                    index,
                    f"account_id {decoded.account_id!r} does not belong in stream "
                    f"{append.stream!r}",
                )


def _invalid(stream: str, index: int, detail: str) -> ProblemError:
    return ProblemError(
        422,
        "invalid-account-event",
        "Invalid account event",
        f"event {index} of stream {stream!r}: {detail}",
        stream=stream,
        index=index,
    )
