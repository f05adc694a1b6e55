"""How the transaction service's commands are documented in its OpenAPI document: the problem
answers every command may give, the Idempotency-Key and correlation headers, the JSON body
(read by the route itself, so declared here) and the 200 of an idempotent replay."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from eventledger.services.http import PROBLEM_JSON, json_body
from eventledger.services.transaction.idempotency import (
    CORRELATION_ID_HEADER,
    IDEMPOTENCY_KEY_HEADER,
)
from eventledger.services.transaction.schemas import Problem


def problems(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of problem answers, keyed by status (`_404="..."`)."""
    schema = Problem.model_json_schema()
    return {
        int(status.lstrip("_")): {
            "description": text,
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status, text in described.items()
    }


INPUT_PROBLEMS = {
    "_400": "Malformed JSON, or an invalid Idempotency-Key header (`invalid-idempotency-key`).",
    "_413": "Body over 1 MiB (`body-too-large`).",
    "_415": "Not `application/json`.",
    "_422": "Invalid body or values (`validation-error`, `invalid-amount`, "
    "`invalid-account-id`, …), or `idempotency-key-reused`.",
    "_503": "The stream service cannot be reached (`stream-unavailable`), Retry-After.",
}


HEADERS = [
    {
        "name": IDEMPOTENCY_KEY_HEADER,
        "in": "header",
        "required": False,
        "description": "1-255 visible ASCII characters. A retry with the same key and body "
        "answers the first response and writes nothing.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    },
    {
        "name": CORRELATION_ID_HEADER,
        "in": "header",
        "required": False,
        "description": "Kept as `correlation_id` in the metadata of the events written.",
        "schema": {"type": "string", "maxLength": 255},
    },
]


def command_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` of a command: its JSON body (read with `read_model`) and headers."""
    extra = json_body(model)
    extra["requestBody"]["required"] = required
    return {**extra, "parameters": HEADERS}


def replayed_response(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": "An idempotent replay: the first response again, with the header "
            "`Idempotent-Replayed: true`; nothing was written.",
        }
    }
