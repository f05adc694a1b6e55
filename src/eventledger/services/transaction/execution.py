"""One command request of the transaction service, from its headers to its answer: the
Idempotency-Key and the path's account id are checked, the body read, the command's ids made
(`idempotency.CommandIds`), the command run, and its result answered as JSON (201, or 200 for
an idempotent replay) or its failure as a problem document (`problems`), every outcome
counted. Every command route (and `two_phase_routes`, `reversal_routes`) goes through it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel

from eventledger.domain.commands import (
    CloseAccount,
    Deposit,
    OpenAccount,
    Transfer,
    Withdraw,
    validate,
)
from eventledger.domain.money import check_account_id
from eventledger.services.http import (
    is_json_media_type,
    parse_json,
    read_body,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.transaction.idempotency import (
    CORRELATION_ID_HEADER,
    IDEMPOTENCY_KEY_HEADER,
    CommandIds,
    check_correlation_id,
    check_key,
    fingerprints,
)
from eventledger.services.transaction.problems import problem_for
from eventledger.services.transaction.results import Result
from eventledger.services.transaction.two_phase_routes import Execute

B = TypeVar("B", bound=BaseModel)
C = TypeVar("C", OpenAccount, Deposit, Withdraw, Transfer, CloseAccount)

REQUEST_ID_HEADER = "X-Request-ID"


async def read_optional_model(request: Request, model: type[B]) -> B:
    """Like `read_model`, but an empty body means `{}` (still sent as application/json)."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    raw = await read_body(request)
    if not raw.strip():
        return model()
    return validate_body(parse_json(raw), model)


def checked(command: C) -> C:
    """The command, once every value of it is valid: nothing is loaded for a bad request."""
    validate(command)
    return command


def _outcome(status: int) -> str:
    if status in (404, 409):
        return "refused"
    if status == 503:
        return "unavailable"
    if 400 <= status < 500:
        return "invalid"
    return "failed"


def counting(counter: Counter) -> Callable[..., None]:
    """`counter.labels(*values).inc()`, with each set of values looked up once (`labels`
    checks and locks on every call: ~2 us, on every command and every event followed)."""
    children: dict[tuple[str, ...], Any] = {}

    def count(*values: str) -> None:
        child = children.get(values)
        if child is None:
            child = children[values] = counter.labels(*values)
        child.inc()

    return count


def command_executor(*, secret: bytes, new_id: Callable[[], UUID], commands: Counter) -> Execute:
    """The service's `execute`: ids keyed by `secret` (or from `new_id` without a key),
    outcomes counted in `commands` (labels command, outcome, reason)."""
    count = counting(commands)

    async def execute(
        request: Request,
        name: str,
        read: Callable[[], Awaitable[BaseModel]],
        run: Callable[[Any, CommandIds], Awaitable[Result]],
        *,
        path_account_id: str | None = None,
    ) -> Response:
        """Check the input, run the command, answer JSON or a problem; count the outcome."""
        try:
            # Two header lines are the list "k1, k2" (RFC 9110): no valid key, not the first.
            keys = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
            key = check_key(", ".join(keys) if keys else None)
            if path_account_id is not None:
                check_account_id(path_account_id)
            body = await read()
            keyed, legacy = (
                (None, None)
                if key is None
                else fingerprints(
                    request.method, request.url.path, body.model_dump(mode="json"), secret
                )
            )
            ids = CommandIds(
                key=key,
                secret=secret,
                request_fingerprint=keyed,
                legacy_fingerprint=legacy,
                # A caller's correlation id, else its request id: one id follows the
                # request from the access log into the events it wrote.
                correlation_id=check_correlation_id(
                    request.headers.get(CORRELATION_ID_HEADER)
                    or request.headers.get(REQUEST_ID_HEADER)
                ),
                command=name,
                new_id=new_id,
            )
            result = await run(body, ids)
        except Exception as exc:
            problem = problem_for(exc)
            if problem is None:
                count(name, "failed", "internal-error")
                raise
            count(name, _outcome(problem.status), problem.type)
            if problem is exc:
                raise
            raise problem from exc
        count(name, "replayed" if result.replayed else "accepted", "")
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return JSONResponse(
            result.body(), status_code=200 if result.replayed else 201, headers=headers
        )

    return execute
