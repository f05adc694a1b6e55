"""What every read-model service has over HTTP, around its own query routes.

* `ReadModelService.create_app`: the app, with a projection runner started and stopped by its
  lifespan, and everything below; a service adds only its query routes;
* `GET /health`: 200 while the service can serve, 503 with the `reason` when it cannot (the
  read model database does not answer within half a second, or a rebuild is replaying the
  log); a halt is shown but is no reason: reads go on. The operator routes are in admin.py;
* consistent reads (`Reads.answer`): every query runs in one read snapshot after checking, in
  that snapshot, the stored checkpoint: during a rebuild the answer is 503 `rebuilding`, and
  with `X-Min-Position: P` (or `?min_position=P`) it waits until the checkpoint is at P;
  quick queries asked at the same time share one snapshot and one trip to a worker thread
  (`GroupedReads`);
* strict query-parameter integers (`int_param`) and their 422 problems (`invalid_param`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope

from eventledger.services.asgi import header, query_param, serve_text_routes_directly
from eventledger.services.http import (
    ProblemError,
    create_service_app,
    problem_response,
    problem_responses,
)
from eventledger.services.readside.admin import add_admin_routes, add_runner_metrics
from eventledger.services.readside.bluegreen import BlueGreen
from eventledger.services.readside.checkpoints import Checkpoint
from eventledger.services.readside.db import (
    ReadModelDataError,
    ReadModelDB,
    ReadModelUnavailable,
    Session,
)
from eventledger.services.readside.projection import Projection
from eventledger.services.readside.runner import BATCH_SIZE, ProjectionRunner
from eventledger.services.readside.status import Snapshot

T = TypeVar("T")
MAX_POS = 2**63 - 1
REBUILDING_RETRY_SECONDS = 5


class GroupedReads:
    """Queries asked while another group is being read share one read snapshot and one trip
    to a worker thread, as appends share a commit: the trip (a thread pool hand-off and the
    loop's wake-up, ~30 µs of CPU) and the snapshot's own statements (begin, checkpoint, end)
    were most of a point read's cost. Nothing waits to fill a group: a query asked while no
    group is in flight is read at once, alone.

    Each query gets what `runner.snapshot` would have given it alone: its answer, read in a
    snapshot whose stored checkpoint is at its `min_position` or past it; or that snapshot
    unanswered (rebuilding, retired, or not yet at its position: the caller waits or refuses
    as before); or its own exception. A query that raises ends its group's snapshot there (on
    PostgreSQL a failed statement spoils the transaction): the queries after it are read in
    the next group."""

    MAX_GROUP = 64  # queries in one snapshot: a group of slow ones holds the next group back

    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner
        self._asked: list[tuple[Callable[[Session], Any], int, asyncio.Future[Snapshot[Any]]]] = []
        self._reading: asyncio.Task[None] | None = None

    async def snapshot(self, query: Callable[[Session], T], *, min_position: int) -> Snapshot[T]:
        future: asyncio.Future[Snapshot[T]] = asyncio.get_running_loop().create_future()
        self._asked.append((query, min_position, future))
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_groups())
        return await future

    async def _read_groups(self) -> None:
        group: list[tuple[Callable[[Session], Any], int, asyncio.Future[Snapshot[Any]]]] = []
        try:
            while self._asked:
                group = self._asked[: self.MAX_GROUP]
                del self._asked[: self.MAX_GROUP]
                await self._read(group)
        finally:
            self._reading = None
            for *_, future in (*group, *self._asked):  # cancelled (shutdown): nobody answers
                future.cancel()
            self._asked.clear()

    async def _read(
        self, group: list[tuple[Callable[[Session], Any], int, asyncio.Future[Snapshot[Any]]]]
    ) -> None:
        results: list[tuple[bool, Any]] = []  # (True, answer) or (False, exception), in order

        def read_all(session: Session) -> None:
            for query, _, _ in group:
                try:
                    results.append((True, query(session)))
                except Exception as exc:
                    results.append((False, exc))
                    return

        try:
            snapshot = await self.runner.snapshot(
                read_all, min_position=min(wanted for _, wanted, _ in group)
            )
        except Exception as exc:  # the snapshot itself failed: so would each alone
            for *_, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        unanswered: Snapshot[Any] = Snapshot(snapshot.checkpoint, None, False)
        for index, (query, wanted, future) in enumerate(group):
            if future.done():  # its caller gave up
                continue
            if not snapshot.answered or wanted > snapshot.checkpoint.position:
                future.set_result(unanswered)
            elif index >= len(results):  # after a query that raised: in the next group
                self._asked.append((query, wanted, future))
            else:
                ok, value = results[index]
                if ok:
                    future.set_result(Snapshot(snapshot.checkpoint, value, True))
                else:
                    future.set_exception(value)


@dataclass(frozen=True, slots=True)
class Reads:
    """What the query routes of a read-model service are built on."""

    runner: ProjectionRunner
    min_position_wait: float  # seconds a query waits for the position it asks for
    grouped: GroupedReads = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grouped", GroupedReads(self.runner))

    async def answer(
        self, query: Callable[[Session], T], *, min_position: int = 0, grouped: bool = False
    ) -> T:
        """`query`'s answer from one read snapshot whose stored checkpoint is at
        `min_position` or past it, waiting up to `min_position_wait` for it; a 503
        `rebuilding` while a rebuild replays the log, a 503 `not-caught-up` past the wait
        (at once when the projection is halted below it). `grouped`: for a query that is
        always quick (a lookup by key), read in a group with others (`GroupedReads`); a
        query that may take long (a page) is read in a snapshot of its own, beside others,
        so that it holds no other query back."""
        runner = self.runner
        if runner.database_error is not None:
            # The last probe (at most a second old) found the database away: say so now
            # rather than hold the request for the pool's whole timeout.
            raise ProblemError(
                503,
                "readmodel-unavailable",
                "Read model unavailable",
                runner.database_error,
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.min_position_wait
        moves = 0
        while True:
            applied_before = runner.position
            if grouped:
                snapshot = await self.grouped.snapshot(query, min_position=min_position)
            else:
                snapshot = await runner.snapshot(query, min_position=min_position)
            if snapshot.answered:
                return cast(T, snapshot.answer)
            if snapshot.checkpoint.retired_to is not None and moves < 3:
                # A new version was made live (blue/green): read from it. (Bounded: a
                # version retired again meanwhile is followed, not chased forever.)
                moves += 1
                await runner.adopt()
                continue
            if snapshot.checkpoint.retired_to is not None:
                raise ProblemError(
                    503,
                    "readmodel-unavailable",
                    "Read model unavailable",
                    "the read model is switching versions; retry shortly",
                    headers={"Retry-After": "1"},
                )
            if snapshot.checkpoint.rebuilding:
                raise rebuilding_problem(snapshot.checkpoint)
            if applied_before < min_position <= runner.position:
                # Applied while that snapshot was read, which began before the commit: a new
                # one sees it. (Once: the next `applied_before` is past it. This was the 50 ms
                # sleep below, the tail of command -> read latency.)
                continue
            remaining = deadline - loop.time()
            halted = runner.halted is not None and runner.position < min_position
            if remaining <= 0 or halted:
                raise _not_caught_up(runner, snapshot.checkpoint.position, min_position)
            if runner.position < min_position:
                await runner.wait_for(min_position, remaining)
            else:  # applied here, not yet in that snapshot's checkpoint (another writer)
                await asyncio.sleep(min(0.05, remaining))


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
        batch_size: int = BATCH_SIZE,
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

        bluegreen = BlueGreen(runner)

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await runner.start()
            try:
                await bluegreen.start()
                yield
            finally:
                await bluegreen.stop()
                await runner.stop()

        app, metrics = create_service_app(
            service=self.name, title=self.title, description=self.description, lifespan=lifespan
        )
        app.state.runner = runner
        app.state.bluegreen = bluegreen
        add_health_route(app, runner, bluegreen, service=self.name)
        add_admin_routes(app, runner, bluegreen, service=self.name)
        add_runner_metrics(runner, bluegreen, metrics)
        self.add_routes(app, Reads(runner, min_position_wait))
        # Their parameters are text, checked by the routes themselves: FastAPI's parameter
        # resolution would only cost (~100 µs a request). The documents do not change.
        serve_text_routes_directly(app, {_min_position: floor_of})
        return app


# -- parameters ----------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,19}")


def int_param(name: str, raw: str | None, *, default: int, minimum: int, maximum: int) -> int:
    """A query parameter that must be a plain decimal integer in minimum..maximum: strict, so
    "10.0", "+10", " 10", "1_000" and "1e3" are refused (422), never guessed."""
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise invalid_param(name, f"must be an integer from {minimum} to {maximum}, got {raw!r}")
    return int(raw)


def invalid_param(name: str, message: str) -> ProblemError:
    errors = [{"field": name, "message": message}]
    return ProblemError(
        422, "validation-error", "Invalid request", f"{name}: {message}", errors=errors
    )


async def _min_position(
    x_min_position: Annotated[
        str | None,
        Header(description="Answer only once this global position is applied."),
    ] = None,
    min_position: Annotated[
        str | None, Query(description="Same as the X-Min-Position header.")
    ] = None,
) -> int:
    return min_position_of(x_min_position, min_position)


def min_position_of(header: str | None, query: str | None) -> int:
    """The position a read must reflect, from `X-Min-Position` and `?min_position=` (the
    higher); a 422 naming the first that is not a plain integer in range."""
    return max(
        int_param("X-Min-Position", header, default=0, minimum=0, maximum=MAX_POS),
        int_param("min_position", query, default=0, minimum=0, maximum=MAX_POS),
    )


def floor_of(scope: Scope) -> int:
    """`min_position_of` a request's `X-Min-Position` header and `?min_position=`, as the
    `MinPosition` parameter resolves it."""
    return min_position_of(header(scope, b"x-min-position"), query_param(scope, "min_position"))


MinPosition = Annotated[int, Depends(_min_position)]
"""A query route's parameter: the position its answer must reflect (`X-Min-Position`)."""


def query_responses(*, not_found: str | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` of a query route: its problem documents (422 and 503, and 404
    described by `not_found` when the route can answer it)."""
    described = {
        422: "`validation-error` (with `errors`): a bad parameter or `X-Min-Position`.",
        503: "`not-caught-up` (`X-Min-Position` not applied within the wait), `rebuilding` "
        "(a rebuild is replaying the log) or `readmodel-unavailable`; retry after "
        "`Retry-After` seconds.",
    }
    if not_found is not None:
        described[404] = not_found
    return problem_responses(described)


# -- problems -------------------------------------------------------------------------------


def rebuilding_problem(checkpoint: Checkpoint) -> ProblemError:
    return ProblemError(
        503,
        "rebuilding",
        "Rebuilding",
        f"the read model is being rebuilt: the replay of the log is at position "
        f"{checkpoint.position} of {checkpoint.rebuild_until}; retry later",
        headers={"Retry-After": str(REBUILDING_RETRY_SECONDS)},
        position=checkpoint.position,
        rebuild_until=checkpoint.rebuild_until,
    )


def _not_caught_up(runner: ProjectionRunner, position: int, wanted: int) -> ProblemError:
    if runner.halted is not None:
        detail = (
            f"the projection is halted at position {runner.halted.position} "
            f"(see /health); position {wanted} is not applied"
        )
        retry = 30
    else:
        detail = f"position {wanted} is not applied yet (applied: {position}); retry shortly"
        retry = 1
    return ProblemError(
        503,
        "not-caught-up",
        "Not caught up",
        detail,
        headers={"Retry-After": str(retry)},
        position=position,
        min_position=wanted,
    )


# -- health ---------------------------------------------------------------------------------


def add_health_route(
    app: FastAPI, runner: ProjectionRunner, bluegreen: BlueGreen | None = None, *, service: str
) -> None:
    """`GET /health`, and the problems of a read model database that fails a query."""

    @app.exception_handler(ReadModelUnavailable)
    async def unavailable(_: Request, exc: ReadModelUnavailable) -> Response:
        return problem_response(
            503,
            "readmodel-unavailable",
            "Read model unavailable",
            str(exc),
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(ReadModelDataError)
    async def refused(_: Request, exc: ReadModelDataError) -> Response:
        return problem_response(500, "readmodel-error", "Read model error", str(exc))

    @app.get(
        "/health",
        tags=["operations"],
        summary="Whether it can serve; position, lag, halt, decisions, rebuild",
        responses=problem_responses(
            {
                503: "It cannot serve now: `readmodel-unavailable` (the read model database "
                "does not answer) or `rebuilding`; `detail` says why, and the health fields "
                "are there too (`state` is the status)."
            }
        ),
    )
    async def health() -> Response:
        # Bounded: the probe of the database is given half a second, whatever it does.
        await runner.check()
        body = runner.health(service)
        # Shown once there has been a blue/green rebuild (bluegreen.py), not before.
        build = None if bluegreen is None else bluegreen.to_json()
        if build is not None:
            body["blue_green"] = build
        reason = body.pop("reason")
        if reason is None:
            return JSONResponse({**body, "reason": None})
        state = body.pop("status")
        return problem_response(
            503,
            "rebuilding" if state == "rebuilding" else "readmodel-unavailable",
            "Cannot serve",
            reason,
            headers={"Retry-After": str(REBUILDING_RETRY_SECONDS if state == "rebuilding" else 1)},
            state=state,
            reason=reason,
            **body,
        )
