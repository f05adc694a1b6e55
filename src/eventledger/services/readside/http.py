"""What every read-model service has over HTTP, around its own query routes.

* `ReadModelService.create_app`: the app, with a projection runner started and stopped by its
  lifespan, and everything below; a service adds only its query routes;
* `GET /health` (position, head, lag, halt) and `POST /admin/rebuild`, the runner's gauges on
  `/metrics`, and a 503 problem when the read model database fails a query
  (`add_projection_routes`);
* read-your-writes: the `X-Min-Position` / `?min_position` dependency and `require_applied`;
* strict query-parameter integers (`int_param`) and their 422 problems (`invalid_param`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Gauge

from eventledger.services.http import (
    Metrics,
    ProblemError,
    create_service_app,
    problem_response,
    problem_responses,
)
from eventledger.services.readside.db import ReadModelDB, ReadModelUnavailable
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.runner import ProjectionRunner


@dataclass(frozen=True, slots=True)
class Reads:
    """What the query routes of a read-model service are built on."""

    runner: ProjectionRunner
    consistent: list[Any]  # `dependencies=` of a route that honours X-Min-Position
    min_position_wait: float  # seconds such a route waits for its position


@dataclass(frozen=True, slots=True)
class ReadModelService:
    """One read-model service: its name, its OpenAPI title and description, its projection and
    its query routes (`add_routes`). `create_app` adds what every read-model service has."""

    name: str
    title: str
    description: str
    projection: Callable[[], Projection]
    add_routes: Callable[[FastAPI, Reads], None]

    def create_app(
        self,
        *,
        stream_url: str,
        open_db: Callable[[], ReadModelDB],
        min_position_wait: float = 5.0,
        batch_size: int = 500,
        head_poll_interval: float = 1.0,
        stream_token: str | None = None,
    ) -> FastAPI:
        """The service. Its lifespan opens the read model (`open_db`, called in a thread),
        migrates it and starts following `stream_url` from the stored checkpoint."""
        runner = ProjectionRunner(
            self.projection(),
            stream_url=stream_url,
            open_db=open_db,
            batch_size=batch_size,
            head_poll_interval=head_poll_interval,
            stream_token=stream_token,
        )

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await runner.start()
            try:
                yield
            finally:
                await runner.stop()

        app, metrics = create_service_app(
            service=self.name, title=self.title, description=self.description, lifespan=lifespan
        )
        app.state.runner = runner
        add_projection_routes(app, runner, service=self.name, metrics=metrics)
        consistent = [Depends(consistency_dependency(runner, wait_seconds=min_position_wait))]
        self.add_routes(app, Reads(runner, consistent, min_position_wait))
        return app


_DIGITS = re.compile(r"[0-9]{1,19}")


def int_param(name: str, raw: str | None, *, default: int, minimum: int, maximum: int) -> int:
    """A query parameter that must be a plain decimal integer in minimum..maximum: strict, so
    "10.0", "+10", " 10", "1_000" and "1e3" are refused (422), never guessed."""
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise invalid_param(name, f"must be an integer from {minimum} to {maximum}, got {raw!r}")
    return int(raw)


def query_responses(*, not_found: str | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` of a query route: its problem documents (422 and 503, and 404
    described by `not_found` when the route can answer it)."""
    described = {
        422: "`validation-error` (with `errors`): a bad parameter or `X-Min-Position`.",
        503: "`not-caught-up` (`X-Min-Position` not applied within the wait) or "
        "`readmodel-unavailable`; retry after `Retry-After` seconds.",
    }
    if not_found is not None:
        described[404] = not_found
    return problem_responses(described)


def invalid_param(name: str, message: str) -> ProblemError:
    errors = [{"field": name, "message": message}]
    return ProblemError(
        422, "validation-error", "Invalid request", f"{name}: {message}", errors=errors
    )


def consistency_dependency(
    runner: ProjectionRunner, *, wait_seconds: float
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency for read-your-writes: with `X-Min-Position: P` (or
    `?min_position=P`) the request is answered once position P is applied, or gets a 503
    `not-caught-up` with `Retry-After` when that does not happen within `wait_seconds`."""

    async def require_position(
        x_min_position: Annotated[
            str | None,
            Header(description="Answer only once this global position is applied."),
        ] = None,
        min_position: Annotated[
            str | None, Query(description="Same as the X-Min-Position header.")
        ] = None,
    ) -> None:
        wanted = max(
            int_param("X-Min-Position", x_min_position, default=0, minimum=0, maximum=MAX_POS),
            int_param("min_position", min_position, default=0, minimum=0, maximum=MAX_POS),
        )
        await require_applied(runner, wanted, wait_seconds=wait_seconds)

    return require_position


MAX_POS = 2**63 - 1


async def require_applied(runner: ProjectionRunner, wanted: int, *, wait_seconds: float) -> None:
    """Return once position `wanted` is applied; after `wait_seconds` (at once when the
    projection is halted below it) raise a 503 `not-caught-up` with `Retry-After`."""
    if wanted <= runner.position:
        return
    if runner.halted is None and await runner.wait_for(wanted, wait_seconds):
        return
    if runner.halted is not None:
        detail = (
            f"the projection is halted at position {runner.position} "
            f"(see /health); position {wanted} is not applied"
        )
        retry = 30
    else:
        detail = f"position {wanted} is not applied yet (applied: {runner.position}); retry shortly"
        retry = 1
    raise ProblemError(
        503,
        "not-caught-up",
        "Not caught up",
        detail,
        headers={"Retry-After": str(retry)},
        position=runner.position,
        min_position=wanted,
    )


def add_projection_routes(
    app: FastAPI, runner: ProjectionRunner, *, service: str, metrics: Metrics
) -> None:
    """`GET /health` and `POST /admin/rebuild`, the runner's gauges on `/metrics`, and a 503
    problem when the read model database fails a query."""

    @app.exception_handler(ReadModelUnavailable)
    async def unavailable(_: Request, exc: ReadModelUnavailable) -> Response:
        return problem_response(
            503,
            "readmodel-unavailable",
            "Read model unavailable",
            str(exc),
            headers={"Retry-After": "1"},
        )

    @app.get("/health", tags=["operations"], summary="Health, position and lag of the projection")
    async def health() -> JSONResponse:
        # No I/O here: the numbers are the runner's, so this answers at once even when the
        # stream service or the database hangs.
        return JSONResponse(runner.health(service))

    @app.post(
        "/admin/rebuild",
        status_code=202,
        tags=["operations"],
        summary="Drop the read model and replay the whole log into it",
    )
    async def rebuild() -> JSONResponse:
        await runner.rebuild()
        return JSONResponse(
            runner.health(service), status_code=202, headers={"Location": "/health"}
        )

    labels = ["projection"]
    for name, doc, read in (
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
            "eventledger_projection_halted",
            "1 when the projection is halted",
            lambda: int(runner.halted is not None),
        ),
    ):
        Gauge(name, doc, labels, registry=metrics.registry).labels(runner.name).set_function(read)
