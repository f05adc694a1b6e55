"""`POST /accounts/{account_id}/forget` (scope `admin`): erase an account's personal data.

The transaction service decides, the stream service does it (its `/admin/accounts/{id}/
forget` deletes the account's key and appends `PersonalDataErased` in one transaction):

1. load the account's stream (404 `account-not-found` when it was never opened);
2. nothing to erase — the stream already ends in an erasure, or shows no personal data
   since its last one — answers 200 with that erasure and writes nothing: forgetting twice
   is idempotent, and needs no Idempotency-Key;
3. else ask the stream service, at the version just read; a concurrent append (409) means
   deciding again, a bounded number of times.

The caller's bearer token is presented to the stream service for that one call (it needs
`admin`, which this service's own token does not hold): the stream service checks the
caller's right itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from eventledger.domain.errors import AccountNotFound, DomainError
from eventledger.domain.events import PersonalDataErased, stream_name
from eventledger.domain.money import check_account_id
from eventledger.eventstore.pii import FIELDS
from eventledger.eventstore.records import RecordedEvent
from eventledger.services.http import (
    ProblemError,
    StrictModel,
    is_json_media_type,
    parse_json,
    problem_response,
    read_body,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.transaction.idempotency import InvalidIdempotencyKey, check_key
from eventledger.services.transaction.problems import problem_for
from eventledger.services.transaction.stream_client import StreamClient, StreamClientError

ATTEMPTS = 5  # decisions at most when appends keep arriving between the read and the forget


class ForgetOut(BaseModel):
    account_id: str
    erased: bool = Field(description="Always true: the account's personal data is erased.")
    position: int = Field(description="Global position of the PersonalDataErased event.")
    version: int = Field(description="Its version in the account's stream.")
    replayed: bool = Field(description="True when nothing was left to erase: written before.")
    plaintext_fields: int = Field(
        description="Personal values written before personal data was sealed (plaintext in "
        "the log): no forget can erase them. Absent (null) on a replay."
    )


class ForgetBody(StrictModel):
    """`POST /accounts/{id}/forget`: no body, or an empty object."""


async def _check_body(request: Request) -> None:
    """No body, or `{}` sent as JSON: anything else is refused before anything is erased."""
    # Why: the erasure is irreversible; a body with fields (say, which fields to erase) that
    # were silently ignored would erase more than the caller asked for.
    raw = await read_body(request)
    if not raw.strip():
        return
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    validate_body(parse_json(raw), ForgetBody)


def _pending_erasure(events: Sequence[RecordedEvent]) -> RecordedEvent | None:
    """The last PersonalDataErased when nothing personal was written after it, else None."""
    for event in reversed(events):
        if event.type == PersonalDataErased.TYPE:
            return event
        # The data alone decides (an erased field reads as null): `metadata.erased` was once
        # trusted here, and a writer of the stream could forge it to keep a value unforgettable.
        if any(event.data.get(f) is not None for f in FIELDS):
            return None
    return None


def _problem(p: ProblemError) -> Response:
    return problem_response(p.status, p.type, p.title, p.detail, p.headers or None, **p.extra)


async def forget_account(
    client: StreamClient, account_id: str, authorization: str | None
) -> tuple[int, dict[str, Any]]:
    """Decide and erase (see the module docstring): the status and the answer."""
    stream = stream_name(account_id)
    for _ in range(ATTEMPTS):
        found = await client.read_stream(stream)
        if found.version == 0:
            raise AccountNotFound(account_id)
        done = _pending_erasure(found.events)
        if done is not None:
            answer = ForgetOut(
                account_id=account_id,
                erased=True,
                position=done.position,
                version=done.stream_version,
                replayed=True,
                plaintext_fields=0,
            )
            return 200, answer.model_dump()
        status, body = await client.forget(
            account_id,
            expected_version=found.version,
            event_id=uuid.uuid4(),
            authorization=authorization,
        )
        if (
            status == 409
            and isinstance(body, dict)
            and str(body.get("type", "")).endswith("wrong-expected-version")
        ):
            continue  # an append came in between: decide again on what is there now
        if status in (200, 201) and isinstance(body, dict):
            answer = ForgetOut(
                account_id=account_id,
                erased=True,
                position=body["position"],
                version=body["version"],
                replayed=False,
                plaintext_fields=body["plaintext_fields"],
            )
            return 201, answer.model_dump()
        if status in (401, 403):
            raise ProblemError(
                403,
                "forbidden",
                "Forbidden",
                "the stream service refused the erasure: the caller's token needs scope "
                "`admin` there too",
            )
        detail = body.get("detail") if isinstance(body, dict) else None
        raise ProblemError(502, "stream-error", "Stream service error", str(detail)[:500])
    raise ProblemError(
        503,
        "too-much-contention",
        "Too much contention",
        f"account {account_id!r} kept changing while it was being forgotten; retry",
        headers={"Retry-After": "1"},
    )


def add_forget_route(
    app: FastAPI, client: StreamClient, responses: dict[int | str, dict[str, Any]]
) -> None:
    @app.post(
        "/accounts/{account_id}/forget",
        status_code=201,
        response_model=ForgetOut,
        responses={200: {"model": ForgetOut, "description": "Already erased"}, **responses},
        summary="Forget an account's personal data",
    )
    async def forget_personal_data(account_id: str, request: Request) -> Response:
        """Erase the account's personal data (scope `admin`; no body): its key is deleted
        and `PersonalDataErased` appended, atomically, so that from then on every read of
        the log, and every read model, shows the `owner` and the `reference`s of its events
        as null. Balances, amounts, ids, times and the hash chain stay. Forgetting an
        account with nothing new to erase answers 200 with the earlier erasure and writes
        nothing. Values written before personal data was sealed cannot be erased
        (`plaintext_fields` counts them). 404 `account-not-found`."""
        try:
            check_account_id(account_id)
            # Forgetting is idempotent by itself: a key is not needed, but a malformed one is
            # bad input like on every command.
            check_key(request.headers.get("idempotency-key"))
            await _check_body(request)
            status, answer = await forget_account(
                client, account_id, request.headers.get("authorization")
            )
        except (ProblemError, StreamClientError, DomainError, InvalidIdempotencyKey) as exc:
            p = problem_for(exc)
            if p is None:
                raise
            return _problem(p)
        return JSONResponse(answer, status_code=status)
