"""The stream service's wire shapes: request bodies (strict), query parameters, responses.

Request models are validated strictly (`StrictModel`): no coercion, unknown fields refused.
Response models document the OpenAPI schema; the handlers write the JSON themselves
(`encoding.py`) so each envelope is encoded once.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Self

from fastapi import Header, Query
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from eventledger.eventstore.pii import ERASED
from eventledger.eventstore.records import EVENT_TYPE, STREAM_NAME
from eventledger.eventstore.store import MAX_PAGE, MAX_TRANSACTION_EVENTS
from eventledger.services.http import StrictModel

MAX_INT64 = 2**63 - 1  # every backend stores versions and positions as signed 64-bit integers
MAX_SCHEMA_VERSION = 2**31 - 1
MAX_EVENTS_PER_APPEND = 1000
MAX_APPENDS_PER_BATCH = 100
MAX_ITEMS_PER_REQUEST = 1000  # `POST /appends`: independent items in one request (and 1 MiB)
MAX_TYPE_FILTERS = 100
# One event's `data` and `metadata` together, as compact ASCII JSON (how every reader gets it).
# Domain events are a few hundred bytes; 64 KiB leaves room for rich metadata while keeping
# every page fine-grained (a 1 MiB page still holds 16 events at the limit) and one event's
# cost to each subscriber, cache and read model small. Larger payloads belong in a blob store,
# referenced from the event.
MAX_EVENT_BYTES = 64 * 1024

_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

# Pydantic's regex engine has no `\Z`; `$` there means the end of the text, as `\Z` does in `re`.
STREAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
EVENT_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
UUID_RE = re.compile(UUID_PATTERN)
STREAM_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
DIGITS = re.compile(r"[0-9]{1,19}")


def is_stream_name(text: str) -> bool:
    return STREAM_NAME.fullmatch(text) is not None


def is_event_type(text: str) -> bool:
    return EVENT_TYPE.fullmatch(text) is not None


# -- request bodies -----------------------------------------------------------------------

SYMBOLIC_VERSIONS = ("any", "no_stream", "exists")


def _expected_version(value: object) -> int | str:
    if type(value) is int and 0 <= value <= MAX_INT64:
        return value
    if type(value) is str and value in SYMBOLIC_VERSIONS:
        return value
    raise PydanticCustomError(
        "expected_version", "must be an integer >= 0 or one of 'any', 'no_stream', 'exists'"
    )


ExpectedVersionField = Annotated[
    int | str,
    PlainValidator(_expected_version),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
                {"type": "string", "enum": list(SYMBOLIC_VERSIONS)},
            ],
            "description": "The stream's version before this append (0: it must not exist), "
            "or 'any' (no check), 'no_stream', 'exists'.",
        }
    ),
]
StreamName = Annotated[str, Field(pattern=STREAM_PATTERN, examples=["account-acc-42"])]


RESERVED_METADATA = ERASED  # the fields a reader sees erased: set by the store on reads


class EventIn(StrictModel):
    """One event to append."""

    id: Annotated[
        str | None,
        Field(
            pattern=UUID_PATTERN,
            json_schema_extra={"format": "uuid"},
            description="The deduplication key; generated (UUID 4) when absent.",
        ),
    ] = None
    type: Annotated[str, Field(pattern=EVENT_TYPE_PATTERN, examples=["MoneyDeposited"])]
    schema_version: Annotated[int, Field(ge=1, le=MAX_SCHEMA_VERSION)] = 1
    data: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if RESERVED_METADATA in self.metadata:
            # Why: the store sets it on reads (the fields whose key was deleted); written by a
            # client it made a readable reference look erased, and a forget skip it.
            raise PydanticCustomError(
                "reserved_metadata",
                "metadata.{key} is set by the stream service on reads; an append cannot write it",
                {"key": RESERVED_METADATA},
            )
        size = len(_encode_json(self.data)) + len(_encode_json(self.metadata))
        if size > MAX_EVENT_BYTES:
            raise PydanticCustomError(
                "event_too_large",
                "data and metadata encode to {size} bytes of JSON; an event holds at most {limit}",
                {"size": size, "limit": MAX_EVENT_BYTES},
            )
        return self


Events = Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_APPEND)]


class AppendIn(StrictModel):
    """`POST /streams/{stream}`: events for one stream and the version it must be at."""

    expected_version: ExpectedVersionField
    events: Events


class BatchAppendIn(StrictModel):
    """One stream's part of a batch."""

    stream: StreamName
    expected_version: ExpectedVersionField
    events: Events


class BatchIn(StrictModel):
    """`POST /batches`: appends to several streams, written all together or not at all."""

    appends: Annotated[list[BatchAppendIn], Field(min_length=1, max_length=MAX_APPENDS_PER_BATCH)]


class AppendsItem(StrictModel):
    """One item of `POST /appends`: atomic like `POST /batches`; with one append, a plain
    stream append."""

    appends: Annotated[list[BatchAppendIn], Field(min_length=1, max_length=MAX_APPENDS_PER_BATCH)]


class AppendsIn(StrictModel):
    """`POST /appends`: independent items, each with its own outcome (the documented shape;
    the handler validates the envelope with `AppendsEnvelope` and each item on its own, so
    that an invalid item fails alone)."""

    items: Annotated[list[AppendsItem], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "appends": [
                                {
                                    "stream": "account-acc-1",
                                    "expected_version": 3,
                                    "events": [
                                        {
                                            "type": "MoneyDeposited",
                                            "data": {
                                                "account_id": "acc-1",
                                                "transaction_id": (
                                                    "9f0c8c1e-5b7a-4d2e-8f3a-2b6c1d4e5f60"
                                                ),
                                                "amount": 500,
                                                "reference": None,
                                            },
                                        }
                                    ],
                                }
                            ]
                        },
                        {
                            "appends": [
                                {
                                    "stream": "orders-7",
                                    "expected_version": "any",
                                    "events": [{"type": "OrderPlaced", "data": {"n": 1}}],
                                }
                            ]
                        },
                    ]
                }
            ]
        }
    )


class AppendsEnvelope(StrictModel):
    """What `POST /appends` checks of the whole request before looking into any item."""

    items: Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]


# -- query parameters and headers -----------------------------------------------------------


def _decimal(value: object) -> object:
    # Query strings are text; accept plain ASCII digits only ("1.0", "+1", " 1", "1_000" and
    # "1e3" are refused, though int() would take some of them).
    if isinstance(value, str) and not DIGITS.fullmatch(value):
        raise PydanticCustomError("decimal", "must be a non-negative decimal integer")
    return value


def _optional_decimal(value: object) -> object:
    return None if value == "" else _decimal(value)


Position = Annotated[
    int,
    Query(ge=0, le=MAX_INT64, description="Only events with a position above this one."),
    BeforeValidator(_decimal),
]
FromVersion = Annotated[
    int,
    Query(ge=1, le=MAX_INT64, description="The first stream version to return."),
    BeforeValidator(_decimal),
]
StreamLimit = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE, description="At most this many events."),
    BeforeValidator(_decimal),
]
LogLimit = StreamLimit
TransactionLimit = Annotated[
    int,
    Query(ge=1, le=MAX_TRANSACTION_EVENTS, description="At most this many events."),
    BeforeValidator(_decimal),
]
TypeFilter = Annotated[
    list[str] | None,
    Query(
        alias="type",
        description="Only events of these types (repeat the parameter for several).",
    ),
]
PrefixFilter = Annotated[
    str | None,
    Query(description="Only events of streams whose name starts with this text."),
]
Heartbeat = Annotated[
    float | None,
    Query(
        ge=0.1,
        le=60,
        description="Seconds of silence before a heartbeat comment (default: the server's).",
    ),
]
LastEventId = Annotated[
    int | None,
    Header(
        alias="last-event-id",
        ge=0,
        le=MAX_INT64,
        description="The SSE reconnection header: resume after this position (wins over `after`).",
    ),
    BeforeValidator(_optional_decimal),
]


# -- responses ----------------------------------------------------------------------------


class Envelope(BaseModel):
    """A stored event (API.md, "Events")."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    stream: str
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    stream_version: int
    position: int
    recorded_at: str = Field(json_schema_extra={"format": "date-time"})
    hash: str = Field(
        description="Tamper evidence: hex SHA-256 of the previous event's hash (32 bytes; 64 "
        "zeros before the first event) followed by this event's canonical content, the "
        "canonical JSON of this envelope without `hash`, with the data as stored (an upcast "
        "event's `data` is not what was hashed). `eventledger verify` recomputes the chain.",
        pattern="^[0-9a-f]{64}$",
    )
    batch_end: int = Field(
        description="The position of the last event of the atomic append that wrote this "
        "event: a reader that shows state up to `position` but not up to `batch_end` shows "
        "half of an atomic append."
    )


class AppendOut(BaseModel):
    """Where an append landed."""

    stream: str
    first_version: int
    last_version: int
    positions: list[int]


class BatchOut(BaseModel):
    results: list[AppendOut]


class ItemOut(BaseModel):
    """The outcome of one item of `POST /appends`: `results` (status 201, or 200 for an
    idempotent re-send) or `problem` (the problem document the same append would have been
    answered with alone: 409, 422, 503 `outcome-unknown` …)."""

    status: int
    results: list[AppendOut] | None = None
    problem: Problem | None = None


class AppendsOut(BaseModel):
    items: list[ItemOut] = Field(description="One outcome per item, in request order.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "status": 201,
                            "results": [
                                {
                                    "stream": "account-acc-1",
                                    "first_version": 4,
                                    "last_version": 4,
                                    "positions": [1207],
                                }
                            ],
                        },
                        {
                            "status": 409,
                            "problem": {
                                "type": "wrong-expected-version",
                                "title": "Wrong expected version",
                                "status": 409,
                                "detail": "stream 'orders-7' is at version 2, expected 1",
                                "stream": "orders-7",
                                "expected_version": 1,
                                "actual_version": 2,
                            },
                        },
                    ]
                }
            ]
        }
    )


class StreamPage(BaseModel):
    stream: str
    version: int = Field(description="The stream's current version.")
    events: list[Envelope]


class LogPage(BaseModel):
    events: list[Envelope]
    last_position: int = Field(
        description="Resume with `after=last_position`: every event up to it that matches "
        "the filters is in this page or an earlier one."
    )


class TransactionEvents(BaseModel):
    transaction_id: str
    events: list[Envelope] = Field(
        description="The events of account streams whose data's `transaction_id` is this "
        "id, oldest first."
    )


class Health(BaseModel):
    status: Literal["ok"]
    service: Literal["stream"]
    head_position: int


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document; extra members depend on `type`."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
