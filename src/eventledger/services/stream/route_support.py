"""What the stream service's routes share: their documented problem answers, the stream path
parameter, the strict JSON body, and the checked `type`/`stream_prefix` filters of log reads
and subscriptions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request

from eventledger.services.http import (
    is_json_media_type,
    parse_json,
    problem_responses,
    read_body,
    unsupported_media_type,
)
from eventledger.services.stream import schemas as s
from eventledger.services.stream.problems import invalid_field

StreamPath = Annotated[
    str,
    Path(
        description="1-128 letters, digits, `_`, `.`, `-`, starting with a letter or digit "
        "(otherwise 422 `invalid-stream-name`).",
        examples=["account-acc-42"],
    ),
]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return problem_responses({code: PROBLEM_TEXT[code] for code in codes}, s.Problem)


PROBLEM_TEXT = {
    400: "`malformed-json`: not JSON, duplicate keys, NaN",
    404: "`stream-not-found` / `event-not-found`",
    409: "`wrong-expected-version` (with `actual_version`), `duplicate-event-id`, or "
    "`invalid-account-history` (the stored events of the account stream already break the "
    "account rules); nothing written",
    413: "`body-too-large`: over 1 MiB",
    415: "`unsupported-media-type`",
    422: "`validation-error` (with `errors`), `invalid-stream-name`, `invalid-append`, "
    "`invalid-account-event` (an `account-*` event no reader could apply: `stream`, `index`, "
    "`rule`) or `expected-version-required` (an `account-*` append without a numeric "
    "`expected_version`), `erasure-needs-forget` (`PersonalDataErased` is written only by "
    "`POST /admin/accounts/{id}/forget`); nothing written",
    503: "`store-unavailable`: retry after `Retry-After` seconds",
}


async def read_json_body(request: Request) -> tuple[Any, int]:
    """The parsed (strict) JSON body and its size in bytes, or a 415/413/400 problem."""
    payload, raw = await read_json_bytes(request)
    return payload, len(raw)


async def read_json_bytes(request: Request) -> tuple[Any, bytes]:
    """The parsed (strict) JSON body and its bytes, or a 415/413/400 problem."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    raw = await read_body(request)
    return parse_json(raw), raw


def check_filters(types: list[str] | None, stream_prefix: str | None) -> tuple[list[str], str]:
    types = types or []
    if len(types) > s.MAX_TYPE_FILTERS:
        raise invalid_field("query.type", f"at most {s.MAX_TYPE_FILTERS} types")
    for event_type in types:
        if not s.is_event_type(event_type):
            raise invalid_field("query.type", f"{event_type[:200]!r} is not an event type")
    prefix = stream_prefix or ""
    if prefix and not s.STREAM_PREFIX.fullmatch(prefix):
        raise invalid_field(
            "query.stream_prefix", "1-128 letters, digits, '_', '.', '-' (or empty)"
        )
    return types, prefix
