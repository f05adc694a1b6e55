"""What every service shares: problem documents, strict JSON bodies, metrics, the app factory.

Errors leave a service only as RFC 9457 problem documents (`application/problem+json`) with a
stable `type` slug. Request bodies are parsed strictly before validation: duplicate keys,
NaN/Infinity, non-JSON, nesting deeper than 100 levels and bodies over 1 MiB are refused;
models refuse unknown fields and never coerce ("10", 10.0, true and 1e3 are not integers).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Mapping
from itertools import accumulate
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventledger.services.limits import RateLimitMiddleware
from eventledger.services.openapi import install_openapi
from eventledger.services.requestlog import install_request_log

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 100
PROBLEM_JSON = "application/problem+json"

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every request body: no coercion, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ProblemError(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self,
        status: int,
        type: str,
        title: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail or title
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    type: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type, "title": title, "status": status, "detail": detail}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# -- strict JSON bodies -----------------------------------------------------------------


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() in C, then a length check: twice as fast as a Python loop over the pairs on
    # bulk bodies (3 objects an event); the loop runs only to name the duplicate.
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ProblemError(400, "malformed-json", "Malformed JSON", f"duplicate key {key!r}")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a repeated key")


def _refuse_constant(name: str) -> Any:
    raise ProblemError(400, "malformed-json", "Malformed JSON", f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # json parses 1e400 as inf, which no JSON encoder can write back out: refuse it here.
    value = float(text)
    if not math.isfinite(value):
        raise ProblemError(400, "malformed-json", "Malformed JSON", f"{text} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Parse a request body as strict JSON (RFC 8259): no duplicate keys, no NaN/Infinity,
    no numbers that overflow to infinity, nothing nested deeper than `MAX_JSON_DEPTH`."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_refuse_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError as exc:
        raise ProblemError(400, "malformed-json", "Malformed JSON", "body is not UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, and integers longer than Python's 4300-digit limit.
        raise ProblemError(400, "malformed-json", "Malformed JSON", str(exc)) from exc
    _check_depth(raw, value)
    return value


def _check_depth(raw: bytes, value: Any) -> None:
    # What is stored is encoded and decoded again, by the store and by every reader, each at
    # its own depth of stack: a body just shallow enough to parse here could fail there (a 500,
    # or an event no reader can decode). A fixed bound far below any stack's keeps that out.
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return  # it cannot be deeper: most bodies end here
    if _nesting(raw) > MAX_JSON_DEPTH:
        raise ProblemError(
            400, "malformed-json", "Malformed JSON", f"nested deeper than {MAX_JSON_DEPTH} levels"
        )


# Brackets become +1/-1 (as signed bytes); all but quotes and brackets can be deleted.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_MARKS = bytes(set(range(256)) - set(b'"[{]}'))


def _nesting(raw: bytes) -> int:
    """How deep the containers of `raw`, a JSON text that parsed, are nested: the running sum
    of its brackets outside strings, all in C (a walk of the parsed value in Python cost
    2 µs an event of a 1,000-event append, this 0.3). UTF-8 never uses ASCII bytes inside a
    multi-byte character, so quotes and brackets can be found byte by byte."""
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # now every quote opens or closes
    marks = text.translate(None, _NOT_MARKS).replace(b'""', b"")  # strings without brackets go
    if b'"' in marks:  # strings with brackets in them: every other piece is inside one
        marks = b"".join(marks.split(b'"')[::2])
    return max(accumulate(array("b", marks.translate(_BRACKETS))), default=0)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing (413) anything over `limit` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut off by the server's request deadline: no traceback
        raise ProblemError(400, "incomplete-body", "Incomplete body", "the client left") from None
    return b"".join(chunks)


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413, "body-too-large", "Request body too large", f"bodies are limited to {limit} bytes"
    )


def validation_problem(exc: ValidationError | RequestValidationError) -> ProblemError:
    errors = [
        {
            "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body",
            "message": err.get("msg", "invalid"),
        }
        for err in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ProblemError(422, "validation-error", "Invalid request", detail, errors=errors)


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header says `application/json` (parameters such as charset
    allowed). A missing one does not: a typeless body is what a web page may send anywhere."""
    return (
        content_type is not None
        and content_type.split(";", 1)[0].strip().lower() == "application/json"
    )


def unsupported_media_type() -> ProblemError:
    return ProblemError(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        "send Content-Type: application/json",
    )


async def read_model(request: Request, model: type[M]) -> M:
    """Read, parse and validate a JSON request body as `model` (strict), or raise a problem."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise unsupported_media_type()
    return validate_body(parse_json(await read_body(request)), model)


def validate_body(payload: Any, model: type[M]) -> M:
    """A parsed JSON body as `model` (strict), or a 422 validation problem naming the fields."""
    if not isinstance(payload, dict):
        raise ProblemError(
            422,
            "validation-error",
            "Invalid request",
            "body: must be a JSON object",
            errors=[{"field": "body", "message": "must be a JSON object"}],
        )
    try:
        return model.model_validate(payload, strict=True)
    except ValidationError as exc:
        raise validation_problem(exc) from exc


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` inlined: embedded in an OpenAPI document, a
    `#/$defs/...` reference would point at the document's root, where there is nothing.
    Built once per model (two thirds of building an app went into it, once per route); each
    caller gets its own copy, as FastAPI merges it into documents it may change."""
    return copy.deepcopy(_inlined_schema(model))


@functools.cache
def _inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            rest = {key: inline(value) for key, value in node.items() if key != "$ref"}
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                # Request and problem models are not recursive, so this ends.
                return {**inline(defs[ref.removeprefix("#/$defs/")]), **rest}
            return rest if ref is None else {"$ref": ref, **rest}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body that a handler reads with `read_model`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": openapi_schema(model)}},
        }
    }


class FieldProblem(BaseModel):
    field: str
    message: str


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document; extra members depend on `type`."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


def problem_responses(
    described: Mapping[int, str], model: type[BaseModel] = ProblemDocument
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` of a route's problem answers (status: description), documented
    as `application/problem+json`, the content type they are sent with."""
    content = {PROBLEM_JSON: {"schema": openapi_schema(model)}}
    return {status: {"description": text, "content": content} for status, text in described.items()}


# -- metrics ------------------------------------------------------------------------------


class Metrics:
    """A registry per app (several apps may live in one test process)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        self.requests = Counter(
            "eventledger_http_requests",
            "HTTP requests answered",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventledger_http_request_seconds",
            "HTTP request latency",
            ["service", "method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.refused = Counter(
            "eventledger_http_refused",
            "Requests refused before reaching a route, by reason (unauthenticated, forbidden, "
            "forbidden-origin, misdirected-request)",
            ["service", "reason"],
            registry=self.registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times requests by route template (not raw path)."""

    MAX_CHILDREN = 1000  # (method, route, status) kinds kept bound; far more than exist

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The label children, bound once: `labels()` locks and builds a key on every call,
        # a third of this middleware's cost.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", "unmatched"), status)
            children = self._children.get(key)
            if children is None:
                method, template, _ = key
                name = self.metrics.service
                children = (
                    self.metrics.requests.labels(name, method, template, str(status)),
                    self.metrics.latency.labels(name, method, template),
                )
                if len(self._children) < self.MAX_CHILDREN:
                    self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


class JsonBodyGuard:
    """Pure ASGI middleware: a request that may change state (any method but GET, HEAD and
    OPTIONS) must say `Content-Type: application/json`, body or not; 415 otherwise.

    A web page may send a cross-origin POST without asking first only with a body typed
    text/plain, form data or nothing ("simple requests"): none of them gets through here, so
    no page can append, command or rebuild behind the browser's same-origin checks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        if is_json_media_type(content_type):
            await self.app(scope, receive, send)
            return
        p = unsupported_media_type()
        await problem_response(p.status, p.type, p.title, p.detail)(scope, receive, send)


# -- lean routes ---------------------------------------------------------------------------


def serve_directly(
    app: FastAPI, method: str, path: str, endpoint: Callable[[Request], Awaitable[Response]]
) -> None:
    """Answer the declared route `method path` of `app` with `endpoint(request)` itself.

    FastAPI resolves a route's parameters (dependency injection, path and query validation)
    before calling it: about 25 µs a request even for a handler that only takes the
    `Request`, a sixth of a whole append in the stream service. A hot route whose handler
    reads and validates its own body (`read_model`, or a hand-written decoder) needs none
    of it. The route stays declared as it is, so routing, the OpenAPI document and `/docs`
    do not change; exception handlers (problem documents) apply as before. Path parameters
    are in `request.path_params` (as text, unvalidated); query parameters are not parsed.
    """
    if not inspect.iscoroutinefunction(endpoint):
        raise TypeError("serve_directly needs an `async def` endpoint")  # or it runs in a thread
    method = method.upper()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            route.app = request_response(endpoint)
            return
    raise LookupError(f"{app.title} declares no route {method} {path}")


# -- the app factory --------------------------------------------------------------------


def create_service_app(
    *,
    service: str,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], Any] | None = None,
    version: str = "1",
) -> tuple[FastAPI, Metrics]:
    """A FastAPI app with problem-document error handling, /metrics, /openapi.json, /docs."""
    # Metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry hooks would otherwise
    # consult the environment on every request (1-3% of a service's CPU, measured).
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_openapi(app)  # one Problem schema, operationIds, tags; /docs without a CDN
    metrics = Metrics(service)
    app.state.metrics = metrics
    install_request_log(app, metrics.registry)  # X-Request-ID, request lines, process metrics

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> Response:
        return problem_response(
            exc.status, exc.type, exc.title, exc.detail, exc.headers or None, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        p = validation_problem(exc)
        return problem_response(p.status, p.type, p.title, p.detail, errors=p.extra["errors"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(
            exc.status_code, slug, str(exc.detail), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return problem_response(
            500, "internal-error", "Internal error", f"{type(exc).__name__}: unexpected error"
        )

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RateLimitMiddleware)  # innermost: after auth, which names the caller
    app.add_middleware(JsonBodyGuard)  # inside the metrics: its 415s are counted
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app, metrics
