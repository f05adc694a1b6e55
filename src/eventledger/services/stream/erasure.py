"""`POST /admin/accounts/{account_id}/forget`: erase an account's personal data from the log
by deleting its key (crypto-shredding, eventstore/pii.py), and the rule that nothing else
writes `PersonalDataErased`.

The key is deleted and `PersonalDataErased` appended in one transaction of the store
(`EventStore.forget`): from its COMMIT on, every read this service answers (streams, the
log, the SSE feed) shows the account's `owner` and `reference` as null, with
`metadata.erased` naming them, and read models blank their copies when they apply the event.
Nothing in memory outlives it: sealed rows are never served from stored texts, and pages
showing personal data are not cached (pages.Page.personal).

The event passes the account rule like any append (the guard: an account that exists, open
or closed). An ordinary append of `PersonalDataErased` is refused (422
`erasure-needs-forget`): the event without the key's deletion would make readers blank data
the log still shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol, Self
from uuid import UUID, uuid4

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from eventledger.domain.events import PersonalDataErased
from eventledger.eventstore import pii
from eventledger.eventstore.records import (
    AppendResult,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    StreamState,
)
from eventledger.eventstore.store import EventStore
from eventledger.services.http import (
    ProblemError,
    StrictModel,
    is_json_media_type,
    json_body,
    parse_json,
    read_body,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.stream.encoding import json_response
from eventledger.services.stream.guards import AccountGuard
from eventledger.services.stream.problems import invalid_field
from eventledger.services.stream.schemas import MAX_EVENT_BYTES, RESERVED_METADATA

ERASED_TYPE = PersonalDataErased.TYPE
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


# An event's data and metadata together encode to at most MAX_EVENT_BYTES; the data of a
# PersonalDataErased, {"account_id": at most 64 characters}, takes less than 128 of them.
METADATA_LIMIT = MAX_EVENT_BYTES - 128


class ForgetIn(StrictModel):
    """The optional body of a forget: the event's id (a retry with the same id is a replay),
    the stream version the caller decided on, and metadata for the event."""

    event_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="A UUID; default: a new one.",
    )
    expected_version: int | Literal["any", "exists"] = Field(
        default="exists", description="As for an append; default `exists`."
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _like_an_append(self) -> Self:
        # Why: the event is written without passing EventIn, so its rules are applied here:
        # a metadata of 1 MB made an event 16 times the limit, and `erased` is the store's.
        if RESERVED_METADATA in self.metadata:
            raise PydanticCustomError(
                "reserved_metadata",
                "metadata.{key} is set by the stream service on reads",
                {"key": RESERVED_METADATA},
            )
        size = len(json.dumps(self.metadata, ensure_ascii=True, separators=(",", ":")))
        if size > METADATA_LIMIT:
            raise PydanticCustomError(
                "event_too_large",
                "metadata encodes to {size} bytes of JSON; at most {limit} here",
                {"size": size, "limit": METADATA_LIMIT},
            )
        return self


class ForgetOut(BaseModel):
    account_id: str
    stream: str
    version: int = Field(description="The stream version of the PersonalDataErased event.")
    position: int = Field(description="Its global position.")
    replayed: bool = Field(description="True when this event id was stored already.")
    plaintext_fields: int = Field(
        description="Personal values of the account's events stored before personal data "
        "was sealed (plaintext): an append-only log cannot erase them."
    )


class Runtime(Protocol):
    @property
    def store(self) -> EventStore: ...
    @property
    def guard(self) -> AccountGuard: ...


def refuse_erasure_appends(appends: Sequence[StreamAppend]) -> None:
    """422 for an ordinary append of PersonalDataErased (only a forget writes it)."""
    for append in appends:
        if append.stream.startswith(pii.ACCOUNT_STREAM) and any(
            e.type == ERASED_TYPE for e in append.events
        ):
            raise ProblemError(
                422,
                "erasure-needs-forget",
                "Erasure needs a forget",
                f"{ERASED_TYPE} on {append.stream!r} is written only by POST "
                "/admin/accounts/{account_id}/forget, which deletes the account's key with it",
            )


async def _body(request: Request) -> ForgetIn:
    raw = await read_body(request)
    if not raw.strip():
        return ForgetIn()
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    return validate_body(parse_json(raw), ForgetIn)


async def forget(runtime: Runtime, account_id: str, body: ForgetIn) -> tuple[AppendResult, int]:
    """Check the event with the account rule, then delete the key and append it."""
    store = runtime.store
    stream = pii.ACCOUNT_STREAM + account_id
    expected: ExpectedVersion = (
        body.expected_version
        if isinstance(body.expected_version, int)
        else StreamState(body.expected_version)
    )
    if expected is StreamState.EXISTS or expected is StreamState.ANY:
        # The guard checks an account append at a numeric version: take the current one (a
        # concurrent append makes the store refuse it, 409, and the caller decides again).
        expected = await store.stream_version(stream)
        if expected == 0:
            raise ProblemError(
                404, "stream-not-found", "Stream not found", f"no account {account_id!r}"
            )
    if body.event_id:
        # Why: the store takes an event id already in the stream for a replay of it, and a
        # replay writes nothing: the id of another event (say the account's AccountOpened)
        # answered "erased, replayed" while nothing was erased.
        stored = await store.get_event(UUID(body.event_id))
        if stored is not None and (stored.type, stored.stream) != (ERASED_TYPE, stream):
            raise ProblemError(
                409,
                "duplicate-event-id",
                "Duplicate event id",
                f"event id {body.event_id} is already stored, as a {stored.type} event: "
                "a forget's event id must be new, or its own replay",
            )
    event = NewEvent(
        UUID(body.event_id) if body.event_id else uuid4(),
        ERASED_TYPE,
        PersonalDataErased(account_id).to_data(),
        dict(body.metadata),
        PersonalDataErased.SCHEMA_VERSION,
    )
    append = StreamAppend(stream, expected, [event])
    checked = await runtime.guard.check(store, [append])
    result = await store.forget(account_id, event, expected_version=expected)
    runtime.guard.remember(checked, [result])
    return result, await store.plaintext_personal_fields(account_id)


def add_forget_route(
    app: FastAPI, runtime: Runtime, responses: dict[int | str, dict[str, Any]]
) -> None:
    @app.post(
        "/admin/accounts/{account_id}/forget",
        status_code=201,
        response_model=ForgetOut,
        responses={
            200: {"model": ForgetOut, "description": "A replay: nothing written"},
            **responses,
        },
        openapi_extra=json_body(ForgetIn),
        summary="Erase an account's personal data (crypto-shredding)",
        description="Extension of API.md (scope `admin`): deletes the account's personal "
        "data key and appends `PersonalDataErased` to `account-{account_id}`, in one "
        "transaction. From then on every read shows the `owner` and `reference` of the "
        "account's events sealed under that key as null, with `metadata.erased` naming "
        "them; amounts, ids, times and the hash chain are unchanged. `plaintext_fields` "
        "counts values stored before sealing existed, which no forget can erase. 404 "
        "`stream-not-found` for an unknown account; 409 `wrong-expected-version`; 422 "
        "`invalid-account-event` when the account rule refuses it. The body is optional.",
    )
    async def forget_account(account_id: str, request: Request) -> Response:
        if not _ACCOUNT_ID.fullmatch(account_id):
            raise invalid_field("path.account_id", "1-64 letters, digits, '_', '.', '-'")
        result, plaintext = await forget(runtime, account_id, await _body(request))
        out = ForgetOut(
            account_id=account_id,
            stream=result.stream,
            version=result.last_version,
            position=result.positions[-1],
            replayed=result.replayed,
            plaintext_fields=plaintext,
        )
        return json_response(out.model_dump(), 200 if result.replayed else 201)
