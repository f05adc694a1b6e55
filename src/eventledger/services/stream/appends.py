"""`POST /appends`: many independent appends in one request, each with its own outcome.

Why: a service that appends on behalf of many concurrent callers (the transaction service)
would otherwise pay one HTTP round trip, one parse and one commit per command. Here the items
of one request are handed to the store together (`asyncio.gather`), so its group commit
writes them in one transaction, and one request, one parse and one commit serve them all.

Each item is atomic like `POST /batches` (an item of one append is a plain stream append)
and independent of the others: validated on its own, checked by the account guard on its
own, committed or refused on its own. Items run concurrently, with no order among them: two
items that depend on each other (the second expects the version the first leaves) belong in
separate requests, or in one item.

    request envelope wrong (400/413/415/422)  → the request's problem document, nothing run
    item invalid                               → that item: 422 validation-error
    item refused by the guard or the store     → that item: its problem (409, 422, 404 …)
    store failed before COMMIT                 → that item: 503 store-unavailable
    COMMIT failed                              → that item: 503 outcome-unknown (retry it
                                                 with the same event ids to settle it)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import ValidationError

from eventledger.eventstore.errors import EventStoreError
from eventledger.eventstore.records import AppendResult, StreamAppend
from eventledger.services.http import ProblemError, validation_problem
from eventledger.services.stream import schemas as s
from eventledger.services.stream.decoding import batch_appends, model_appends
from eventledger.services.stream.encoding import append_result
from eventledger.services.stream.problems import problem_for

log = logging.getLogger(__name__)

Append = Callable[[list[StreamAppend]], Awaitable[list[AppendResult]]]


def problem_document(p: ProblemError) -> dict[str, Any]:
    """A problem as the JSON document a request refused with it would carry."""
    body: dict[str, Any] = {"type": p.type, "title": p.title, "status": p.status}
    body["detail"] = p.detail
    body.update(p.extra)
    return body


def _failed(p: ProblemError) -> dict[str, Any]:
    return {"status": p.status, "problem": problem_document(p)}


def _validated(index: int, raw: object, body_bytes: int) -> list[StreamAppend] | ProblemError:
    fast = batch_appends(raw, body_bytes)
    if fast is not None:
        return fast
    if not isinstance(raw, dict):
        field = f"items.{index}"
        return ProblemError(
            422,
            "validation-error",
            "Invalid request",
            f"{field}: must be a JSON object",
            errors=[{"field": field, "message": "must be a JSON object"}],
        )
    try:
        return model_appends(s.AppendsItem.model_validate(raw, strict=True).appends)
    except ValidationError as exc:
        p = validation_problem(exc)
        # Name the fields from the request's root, as a whole-request problem would.
        errors = [
            {"field": f"items.{index}.{e['field']}", "message": e["message"]}
            for e in p.extra["errors"]
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return ProblemError(422, "validation-error", "Invalid request", detail, errors=errors)


async def _run(append: Append, appends: list[StreamAppend]) -> dict[str, Any]:
    try:
        results = await append(appends)
    except ProblemError as p:  # the account guard's 422/409
        return _failed(p)
    except EventStoreError as exc:  # the store's refusal, or its failure (503)
        return _failed(problem_for(exc))
    except Exception as exc:  # a bug must not take the other items' answers with it
        log.exception("an item of POST /appends failed unexpectedly")
        return _failed(
            ProblemError(
                500, "internal-error", "Internal error", f"{type(exc).__name__}: unexpected error"
            )
        )
    replayed = all(r.replayed for r in results)
    return {"status": 200 if replayed else 201, "results": [append_result(r) for r in results]}


async def run_items(
    append: Append, items: Sequence[object], *, body_bytes: int
) -> list[dict[str, Any]]:
    """The outcome of each item, in request order. Valid items are appended concurrently,
    so that the store's group commit writes them together."""
    outcomes: list[dict[str, Any] | None] = []
    runs: list[Awaitable[dict[str, Any]]] = []
    slots: list[int] = []
    for index, raw in enumerate(items):
        checked = _validated(index, raw, body_bytes)
        if isinstance(checked, ProblemError):
            outcomes.append(_failed(checked))
        else:
            outcomes.append(None)
            slots.append(index)
            runs.append(_run(append, checked))
    # `_run` answers every failure as an outcome; only cancellation escapes (the client left).
    for index, outcome in zip(slots, await asyncio.gather(*runs), strict=True):
        outcomes[index] = outcome
    return [o for o in outcomes if o is not None]
