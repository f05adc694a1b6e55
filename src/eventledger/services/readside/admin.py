"""The operator's routes of a read-model service, and its runner's metrics.

* `POST /admin/rebuild` — drop the read model and replay the log (202; progress in `/health`);
  with `{"mode": "blue-green"}`, build a new version beside the live one instead, which
  serves until the new one has caught up and takes over (bluegreen.py); 409
  `rebuild-in-progress` while a blue/green rebuild goes on;
* `GET /admin/rebuild` — the last blue/green rebuild: state, the new version's position and
  the head, why it failed; `DELETE /admin/rebuild` cancels the one in progress (409
  `not-rebuilding` when none is);
* `POST /admin/skip` and `POST /admin/park` with `{"position": P, "reason"?, "by"?}` — get
  past the event the projection halted on at P: skip forgets it, park keeps its envelope for
  inspection. 409 `not-halted-here` unless the projection is halted at exactly P, so a
  decision is never taken about an event the operator did not see;
* `GET /admin/decisions` — the audit record of every skip and park, parked envelopes included.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Gauge
from pydantic import Field, field_validator

from eventledger.services.http import (
    Metrics,
    ProblemError,
    StrictModel,
    is_json_media_type,
    json_body,
    parse_json,
    problem_responses,
    read_body,
    read_model,
    unsupported_media_type,
    validate_body,
)
from eventledger.services.readside.bluegreen import BlueGreen
from eventledger.services.readside.checkpoints import Action, list_decisions
from eventledger.services.readside.db import CheckpointMoved
from eventledger.services.readside.runner import ProjectionRunner
from eventledger.services.readside.status import NotHaltedThere
from eventledger.services.readside.versions import BuildInProgress

# Where the authentication middleware leaves the name of the caller's token.
PRINCIPAL = "eventledger.principal"


def _plain_text(value: str) -> str:
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise ValueError("must not contain control, format or line-separator characters")
    return value


class DecisionBody(StrictModel):
    """An operator's decision about the event a projection halted on."""

    position: int = Field(ge=1, le=2**63 - 1, description="The position it is halted at")
    reason: str = Field(default="", max_length=500, description="Why (kept in the audit)")
    by: str = Field(default="", max_length=128, description="Who decides (kept in the audit)")

    _text = field_validator("reason", "by")(_plain_text)


class RebuildBody(StrictModel):
    """How to rebuild: in place (reads answer 503 `rebuilding` until the replay is back) or
    blue/green (a new version is built beside the live one, which goes on serving)."""

    mode: Literal["in-place", "blue-green"] = Field(
        default="in-place", description="`in-place` (the default) or `blue-green`"
    )


_REBUILD_RESPONSES = problem_responses(
    {
        409: "`rebuild-in-progress`: a blue/green rebuild is going on (see `GET "
        "/admin/rebuild`); `blue_green` shows it.",
        415: "`unsupported-media-type`: a body that is not application/json.",
        422: "`validation-error` (with `errors`): a bad body.",
        503: "`readmodel-unavailable`: the read model database did not answer.",
    }
)
_REBUILD_BODY = json_body(RebuildBody)
_REBUILD_BODY["requestBody"]["required"] = False


def _in_progress(bluegreen: BlueGreen, exc: BuildInProgress | None = None) -> ProblemError:
    build = bluegreen.build if exc is None else exc.build
    where = "" if build is None else f" (version {build.version}: {build.state})"
    detail = f"a blue/green rebuild is already in progress{where}"
    return ProblemError(
        409,
        "rebuild-in-progress",
        "Rebuild in progress",
        f"{detail}: wait for it to end (GET /admin/rebuild)",
        blue_green=bluegreen.to_json(),
    )


_DECISION_RESPONSES = problem_responses(
    {
        409: "`not-halted-here`: the projection is not halted at that position (any more); "
        "`checkpoint-moved`: another instance moved the read model meanwhile.",
        415: "`unsupported-media-type`: the body is not application/json.",
        422: "`validation-error` (with `errors`): a bad body.",
        503: "`readmodel-unavailable`: the read model database did not answer.",
    }
)


def add_admin_routes(
    app: FastAPI, runner: ProjectionRunner, bluegreen: BlueGreen, *, service: str
) -> None:
    @app.post(
        "/admin/rebuild",
        status_code=202,
        tags=["operations"],
        summary="Replay the whole log: in place, or blue/green beside the live read model",
        openapi_extra=_REBUILD_BODY,
        responses=_REBUILD_RESPONSES,
    )
    async def rebuild(request: Request) -> JSONResponse:
        # The body is optional (`POST` with none, or `{}`, is the in-place rebuild it was).
        raw = await read_body(request)
        body = RebuildBody()
        if raw.strip():
            if not is_json_media_type(request.headers.get("content-type")):
                raise unsupported_media_type()
            body = validate_body(parse_json(raw), RebuildBody)
        if bluegreen.active:
            raise _in_progress(bluegreen)
        if body.mode == "in-place":
            await runner.rebuild()
            return JSONResponse(
                runner.health(service), status_code=202, headers={"Location": "/health"}
            )
        principal = request.scope.get(PRINCIPAL)
        try:
            await bluegreen.begin(requested_by=principal if isinstance(principal, str) else "")
        except BuildInProgress as exc:
            raise _in_progress(bluegreen, exc) from exc
        return JSONResponse(
            {"blue_green": bluegreen.to_json(), "live_version": runner.version},
            status_code=202,
            headers={"Location": "/admin/rebuild"},
        )

    @app.get(
        "/admin/rebuild",
        tags=["operations"],
        summary="The last blue/green rebuild: its state and progress, or why it failed",
    )
    async def rebuild_status() -> JSONResponse:
        return JSONResponse({"blue_green": bluegreen.to_json(), "live_version": runner.version})

    @app.delete(
        "/admin/rebuild",
        tags=["operations"],
        summary="Cancel the blue/green rebuild in progress (the live version stays)",
        responses=problem_responses(
            {
                409: "`not-rebuilding`: no blue/green rebuild is in progress.",
                503: "`readmodel-unavailable`: the read model database did not answer.",
            }
        ),
    )
    async def cancel_rebuild(request: Request) -> JSONResponse:
        principal = request.scope.get(PRINCIPAL)
        build = await bluegreen.cancel(by=principal if isinstance(principal, str) else "")
        if build is None:
            raise ProblemError(
                409,
                "not-rebuilding",
                "Not rebuilding",
                "no blue/green rebuild is in progress",
                blue_green=bluegreen.to_json(),
            )
        return JSONResponse({"blue_green": bluegreen.to_json(), "live_version": runner.version})

    async def decide(action: Action, request: Request) -> JSONResponse:
        body = await read_model(request, DecisionBody)
        principal = request.scope.get(PRINCIPAL)
        by = body.by or "anonymous"
        if isinstance(principal, str) and principal:
            by = principal if not body.by or body.by == principal else f"{principal} ({body.by})"
        try:
            decision, applied = await runner.decide(
                action, body.position, reason=body.reason, by=by
            )
        except NotHaltedThere as exc:
            halted = None if exc.halt is None else exc.halt.to_json()
            raise ProblemError(
                409, "not-halted-here", "Not halted here", str(exc), halted=halted
            ) from exc
        except CheckpointMoved as exc:
            raise ProblemError(
                409,
                "checkpoint-moved",
                "Checkpoint moved",
                "another instance moved this read model meanwhile: see /health and retry",
            ) from exc
        return JSONResponse(
            {
                "decision": decision.to_json(),
                "applied": applied.applied,
                "position": runner.position,
                "halted": None if runner.halted is None else runner.halted.to_json(),
            }
        )

    @app.post(
        "/admin/skip",
        tags=["operations"],
        summary="Skip the event the projection halted on (forget it; audited)",
        openapi_extra=json_body(DecisionBody),
        responses=_DECISION_RESPONSES,
    )
    async def skip(request: Request) -> JSONResponse:
        return await decide("skip", request)

    @app.post(
        "/admin/park",
        tags=["operations"],
        summary="Park the event the projection halted on (keep it aside; audited)",
        openapi_extra=json_body(DecisionBody),
        responses=_DECISION_RESPONSES,
    )
    async def park(request: Request) -> JSONResponse:
        return await decide("park", request)

    @app.get(
        "/admin/decisions",
        tags=["operations"],
        summary="Every skip and park of this read model, with the parked events",
    )
    async def decisions() -> JSONResponse:
        db, name = runner.db, runner.name

        def query() -> list[dict[str, Any]]:
            with db.read() as session:
                rows = list_decisions(session, name)
            return [
                {**d.to_json(), "envelope": None if e is None else json.loads(e)} for d, e in rows
            ]

        return JSONResponse({"items": await asyncio.to_thread(query)})


def _build_gauge(bluegreen: BlueGreen, field: str) -> float:
    body = bluegreen.to_json()
    return 0.0 if body is None or not bluegreen.active else float(body[field])


def add_runner_metrics(runner: ProjectionRunner, bluegreen: BlueGreen, metrics: Metrics) -> None:
    """The runner's gauges on `/metrics`, labelled by projection."""
    labels = ["projection"]
    for name, doc, read in (
        (
            "eventledger_projection_version",
            "The read model version served from (blue/green rebuilds make new ones)",
            lambda: runner.version,
        ),
        (
            "eventledger_projection_bluegreen_building",
            "1 while a blue/green rebuild of this read model goes on (in any instance)",
            lambda: int(bluegreen.active),
        ),
        (
            "eventledger_projection_bluegreen_position",
            "Position the version being built has applied (0 when none is)",
            lambda: _build_gauge(bluegreen, "position"),
        ),
        (
            "eventledger_projection_bluegreen_head",
            "Head position the version being built is catching up with (0 when none is)",
            lambda: _build_gauge(bluegreen, "head"),
        ),
        (
            "eventledger_projection_bluegreen_switches",
            "Blue/green switches this process made",
            lambda: bluegreen.switches,
        ),
        (
            "eventledger_projection_bluegreen_failures",
            "Blue/green rebuilds this process saw fail",
            lambda: bluegreen.failures,
        ),
        (
            "eventledger_projection_position",
            "Last applied global position",
            lambda: runner.position,
        ),
        (
            "eventledger_projection_head_position",
            "Head position of the log",
            lambda: runner.head_position or 0,
        ),
        ("eventledger_projection_lag", "Events not applied yet", lambda: runner.lag or 0),
        (
            "eventledger_projection_lag_seconds",
            "Seconds since the projection last had every event of the head applied",
            lambda: runner.lag_seconds or 0.0,
        ),
        (
            "eventledger_projection_halted",
            "1 when the projection is halted",
            lambda: int(runner.halted is not None),
        ),
        (
            "eventledger_projection_rebuilding",
            "1 while a rebuild replays the log",
            lambda: int(runner.rebuilding),
        ),
        (
            "eventledger_projection_database_up",
            "1 when the read model database answered the last probe",
            lambda: int(runner.database_error is None),
        ),
        (
            "eventledger_projection_skipped_events",
            "Events an operator skipped",
            lambda: runner.decisions.skipped,
        ),
        (
            "eventledger_projection_parked_events",
            "Events an operator parked",
            lambda: runner.decisions.parked,
        ),
    ):
        Gauge(name, doc, labels, registry=metrics.registry).labels(runner.name).set_function(read)
