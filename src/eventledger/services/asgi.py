"""Hot routes answered in plain ASGI, in front of their documented FastAPI routes.

A FastAPI route costs, before and after its handler runs: parameter resolution (dependency
injection), a `Request` object, the route's exception wrapper and `JSONResponse` (headers,
`json.dumps`). On the hottest read (`GET /accounts/{id}` of the accounting service) that
was about 25 µs of CPU per request, a sixth of its whole cost. `lean_route` puts a plain
ASGI endpoint in front of such a route, for the methods given: routing, the OpenAPI document
and `/docs` do not change (the documented route stays where it was and answers every other
method), every middleware runs as before, and a `ProblemError` or any other exception raised
by the endpoint is answered by the app's exception handlers, as from the documented route.

The endpoint reads what it needs from the scope with the helpers here, which give what
Starlette's `Request` would: `header` the first value of a header, `query_param` the last
value of a query parameter; `path_params` are in the scope, as text, unvalidated. It answers
with `send_json`, whose bytes and headers are those of `JSONResponse`.

`serve_text_routes_directly` does it for every GET route whose parameters FastAPI would only
pass on as text (path parameters, optional query parameters typed `str | None`) besides
dependencies the caller computes itself: the route's own function is called with what
FastAPI would have given it (~100 µs of CPU less per request, bench/edge.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_TYPE = (b"content-type", b"application/json")


def lean_route(app: FastAPI, path: str, endpoint: Endpoint, *, methods: Collection[str]) -> None:
    """Answer `methods` of the documented route `path` with the ASGI `endpoint` itself."""
    documented = [r for r in app.router.routes if getattr(r, "path", None) == path]
    if not documented:
        raise LookupError(f"{app.title} declares no route {path}")
    route = Route(path, endpoint, include_in_schema=False)
    route.app = endpoint
    # Only these: Starlette would match any method of an ASGI endpoint, and the documented
    # route answers the others (405 for a method it does not declare).
    route.methods = {method.upper() for method in methods}
    app.router.routes.insert(0, route)


def serve_text_routes_directly(
    app: FastAPI, dependencies: Mapping[Callable[..., Any], Callable[[Scope], Any]]
) -> None:
    """Put a plain ASGI route in front of every GET route of `app` that depends on some of
    the `dependencies` given and on nothing else but text path parameters and optional text
    query parameters (`str | None = None`), returns a `Response` and has no plain ASGI
    route in front of it yet. Each dependency's value is computed from the scope by its
    function here, first, in order, as FastAPI solves dependencies before parameters."""
    routes = list(app.router.routes)
    fronted = {getattr(r, "path", None) for r in routes if not isinstance(r, APIRoute)}
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and route.path not in fronted
            and _text_only(route, dependencies)
        ):
            lean_route(app, route.path, _direct(route, dependencies), methods=["GET"])


def _text_only(route: APIRoute, dependencies: Mapping[Callable[..., Any], Any]) -> bool:
    d = route.dependant
    return (
        route.methods == {"GET"}
        and route.response_model is None
        and not (d.header_params or d.cookie_params or d.body_params or d.request_param_name)
        and bool(d.dependencies)
        and all(x.call in dependencies and not x.dependencies for x in d.dependencies)
        and all(p.field_info.annotation is str for p in d.path_params)
        and all(
            q.field_info.annotation == (str | None) and q.field_info.default is None
            for q in d.query_params
        )
    )


def _direct(
    route: APIRoute, dependencies: Mapping[Callable[..., Any], Callable[[Scope], Any]]
) -> Endpoint:
    solved = [(str(x.name), dependencies[x.call]) for x in route.dependant.dependencies if x.call]
    path_names = [p.name for p in route.dependant.path_params]
    queried = [(q.name, q.alias) for q in route.dependant.query_params]
    call = route.endpoint

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        kwargs = {name: solve(scope) for name, solve in solved}
        path = scope["path_params"]
        for name in path_names:
            kwargs[name] = path[name]
        if queried:
            params = QueryParams(scope["query_string"])
            for name, alias in queried:
                kwargs[name] = params.get(alias)
        response: Response = await call(**kwargs)
        await response(scope, receive, send)

    return endpoint


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the header `name` (lower case), as `request.headers.get`."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def query_param(scope: Scope, name: str) -> str | None:
    """The last value of the query parameter `name`, as `request.query_params.get`."""
    raw = scope["query_string"]
    if not raw:
        return None
    return QueryParams(raw).get(name)


def json_bytes(content: Any) -> bytes:
    """`content` as `JSONResponse` writes it (compact, UTF-8). For documents of strings,
    integers, booleans and None: orjson writes those byte for byte as the standard library
    does (every code point checked), 10x faster; what orjson refuses (an integer beyond 64
    bits, a lone surrogate) is left to the standard library, which answers as before."""
    try:
        return orjson.dumps(content)
    except TypeError:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8")


async def send_json(send: Send, content: Any, status: int = 200) -> None:
    """Answer `content` (see `json_bytes`) with the headers of a `JSONResponse`."""
    body = json_bytes(content)
    headers = [(b"content-length", str(len(body)).encode("latin-1")), _JSON_TYPE]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
