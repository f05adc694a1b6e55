"""The OpenAPI documents as a client generator wants them, and `/docs` served offline.

FastAPI generates each service's document from its routes; `install_openapi` takes over the
document and the pages that show it:

* **One `Problem` schema** (RFC 9457) in `components/schemas`, referenced by every error answer
  (4xx, 5xx) as `application/problem+json`. It holds the standard members, `errors` (the
  offending fields of a validation problem, each a `FieldProblem`) and, as optional members,
  every extension member a route documents (`actual_version`, `account_id`, …). Per-route
  problem models and FastAPI's `HTTPValidationError` are gone: a generator makes one class.
* **Explicit operationIds**: the camelCase of the route's function (`open_account` →
  `openAccount`), unique within the document, instead of FastAPI's
  `open_account_accounts_post`.
* **Every operation tagged** (generators group operations into modules by tag).
* **`/docs` without a CDN**: Swagger UI's bundle, stylesheet and icon are package data
  (`services/static/swagger-ui/`, swagger-ui-dist, Apache-2.0) served by the service under
  `/docs/…`; ReDoc (CDN only) is not offered.

The polish runs on the finished document each time it is served (it is idempotent), so what
other layers add later (the auth layer's 401/403 answers, wrapping `app.openapi` after this
one) is polished too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

PROBLEM_JSON = "application/problem+json"
PROBLEM = "Problem"
FIELD_PROBLEM = "FieldProblem"
PROBLEM_REF = f"#/components/schemas/{PROBLEM}"

DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
ASSET_PATHS = frozenset(f"/docs/{name}" for name in DOCS_ASSETS)

_STANDARD_MEMBERS: dict[str, Any] = {
    "type": {
        "type": "string",
        "description": "A stable slug naming the kind of problem (`insufficient-funds`).",
        "examples": ["insufficient-funds"],
    },
    "title": {"type": "string", "description": "A short summary of the kind of problem."},
    "status": {"type": "integer", "description": "The HTTP status code."},
    "detail": {"type": "string", "description": "What went wrong with this request."},
    "errors": {
        "type": "array",
        "description": "The offending fields of a validation problem.",
        "items": {"$ref": f"#/components/schemas/{FIELD_PROBLEM}"},
    },
}
# Extension members the services send with some problem types (services/*/problems.py), so a
# generated client has a typed attribute for each; a route may document more.
_KNOWN_EXTENSIONS: dict[str, Any] = {
    "account_id": {"type": "string", "description": "The account concerned."},
    "balance": {"type": "integer", "description": "Its balance, minor units (409s)."},
    "amount": {"type": "integer", "description": "The amount asked for, minor units."},
    "overdraft_limit": {"type": "integer", "description": "The account's overdraft limit."},
    "from_account": {"type": "string", "description": "A transfer's source account."},
    "to_account": {"type": "string", "description": "A transfer's destination account."},
    "from_currency": {"type": "string", "description": "The source account's currency."},
    "to_currency": {"type": "string", "description": "The destination account's currency."},
    "stream": {"type": "string", "description": "The stream concerned."},
    "expected_version": {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "description": "The expected version sent (`wrong-expected-version`).",
    },
    "actual_version": {
        "type": "integer",
        "description": "The stream's version now (`wrong-expected-version`): reload and retry.",
    },
    "index": {"type": "integer", "description": "Which event of the append (0-based)."},
    "rule": {"type": "string", "description": "Which validity rule refused it."},
    "position": {"type": "integer", "description": "The position the read model has applied."},
    "min_position": {"type": "integer", "description": "The `X-Min-Position` asked for."},
}
_FIELD_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": FIELD_PROBLEM,
    "description": "One offending field of a request.",
    "properties": {
        "field": {"type": "string", "description": "Dotted path of the field (`amount`)."},
        "message": {"type": "string", "description": "What is wrong with it."},
    },
    "required": ["field", "message"],
}
# FastAPI's own schemas for its 422 answers; ours are problem documents.
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
# Tags of operations their route did not tag, by the first segment of the path.
_TAG_OF_SEGMENT = {
    "health": "operations",
    "admin": "operations",
    "metrics": "operations",
    "batches": "streams",
    "appends": "streams",
    "transfers": "accounts",
}
_TAG_DESCRIPTIONS = {
    "operations": "Health, metrics and operator actions.",
    "streams": "Appends and reads of streams.",
    "events": "The global log: pages and the live subscription.",
    "accounts": "Accounts and the money on them.",
    "statistics": "Figures over all accounts.",
}


# -- the document ---------------------------------------------------------------------------


def polish(document: dict[str, Any], routes: Iterable[BaseRoute] = ()) -> dict[str, Any]:
    """Make `document` (changed in place, and returned) generator-friendly: see the module
    docstring. `routes` are the app's routes, whose function names become operationIds.
    Polishing a polished document changes nothing."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    extensions = dict(schemas.get(PROBLEM, {}).get("properties", {}))
    names = _function_names(routes)
    used: set[str] = set()
    tags: dict[str, None] = {}  # in order of first use: /docs shows them in that order
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if str(status)[:1] in ("4", "5"):
                    _collect_extensions(response, schemas, extensions)
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}
            # Deterministic, so polishing again gives every operation the same id.
            function = names.get((path, method.upper())) or f"{method}_{path}"
            operation["operationId"] = _unique(camel_case(function), method, used)
            if not operation.get("tags"):
                operation["tags"] = [_tag_of(path)]
            tags.update(dict.fromkeys(operation["tags"]))
    for name in _FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas[FIELD_PROBLEM] = copy.deepcopy(_FIELD_PROBLEM_SCHEMA)
    schemas[PROBLEM] = _problem_schema(extensions)
    _drop_unreferenced(document, schemas)
    known = {tag["name"] for tag in document.get("tags", [])}
    document.setdefault("tags", []).extend(
        {"name": tag, "description": _TAG_DESCRIPTIONS.get(tag, tag.capitalize())}
        for tag in tags
        if tag not in known
    )
    return document


def _drop_unreferenced(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Remove the schemas nothing refers to any more (the per-route problem models and what
    only they used): a generator would still make a class of each."""
    prefix = "#/components/schemas/"

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix):
                yield ref.removeprefix(prefix)
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    outside = {key: value for key, value in document.items() if key != "components"}
    outside["other-components"] = {
        key: value for key, value in document["components"].items() if key != "schemas"
    }
    reachable: set[str] = set()
    todo = list(refs(outside))
    while todo:
        name = todo.pop()
        if name not in reachable and name in schemas:
            reachable.add(name)
            todo.extend(refs(schemas[name]))
    for name in [name for name in schemas if name not in reachable]:
        del schemas[name]


def _problem_schema(extensions: dict[str, Any]) -> dict[str, Any]:
    properties = copy.deepcopy(_STANDARD_MEMBERS)
    extensions = {**copy.deepcopy(_KNOWN_EXTENSIONS), **extensions}
    for name in sorted(extensions):
        if name not in properties:
            properties[name] = extensions[name]
    return {
        "type": "object",
        "title": PROBLEM,
        "description": "An RFC 9457 problem document. `type`, `title`, `status` and `detail` are "
        "always there; the other members are extensions that some types carry (`errors` for "
        "validation problems, `actual_version` for `wrong-expected-version`, …).",
        "properties": properties,
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": True,
    }


def _collect_extensions(
    response: dict[str, Any], schemas: dict[str, Any], into: dict[str, Any]
) -> None:
    """Add the extension members documented by one error answer's schema(s) to `into`."""
    for media in response.get("content", {}).values():
        schema = media.get("schema") if isinstance(media, dict) else None
        for name, member in _members(schema, schemas, depth=0).items():
            if name in _STANDARD_MEMBERS:
                continue
            simple = _simplify(member)
            if name in into and into[name] != simple:
                # Two routes document the member differently: any JSON value, described.
                into[name] = {"description": into[name].get("description", name)}
            else:
                into.setdefault(name, simple)


def _members(schema: Any, schemas: dict[str, Any], depth: int) -> dict[str, Any]:
    if not isinstance(schema, dict) or depth > 8:
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref == PROBLEM_REF or not ref.startswith("#/components/schemas/"):
            return {}
        return _members(schemas.get(ref.rsplit("/", 1)[1]), schemas, depth + 1)
    members = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        members.update(_members(part, schemas, depth + 1))
    return members


def _simplify(member: Any) -> dict[str, Any]:
    """An optional member's schema without `title` and without the `null` branch pydantic
    writes for `X | None` (optional already says it may be missing; generators warn on the
    union of an inline object with null)."""
    if not isinstance(member, dict):
        return {}
    result = {key: value for key, value in member.items() if key != "title"}
    branches = result.get("anyOf")
    if isinstance(branches, list):
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1 and isinstance(rest[0], dict):
            result.pop("anyOf")
            result = {**rest[0], **result}
        elif len(rest) != len(branches):
            result["anyOf"] = rest
    return result


def _unique(base: str, method: str, used: set[str]) -> str:
    candidate = base
    if candidate in used:
        candidate = base + method.capitalize()
    number = 2
    while candidate in used:
        candidate = f"{base}{number}"
        number += 1
    used.add(candidate)
    return candidate


def camel_case(name: str) -> str:
    """`open_account` → `openAccount`; anything but letters and digits separates words."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    if not words:
        return "operation"
    head, *rest = words
    text = head[0].lower() + head[1:] + "".join(w[0].upper() + w[1:] for w in rest)
    return text if not text[0].isdigit() else "op" + text


def _function_names(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], str]:
    names: dict[tuple[str, str], str] = {}
    for route in routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                # An id the route sets itself is kept; else its function's name.
                names[(route.path_format, method)] = route.operation_id or route.name
    return names


def _tag_of(path: str) -> str:
    segment = path.strip("/").split("/", 1)[0] or "operations"
    return _TAG_OF_SEGMENT.get(segment, segment.replace("{", "").replace("}", ""))


# -- serving ------------------------------------------------------------------------------


@cache
def docs_asset(name: str) -> bytes:
    """One vendored Swagger UI file (read once)."""
    folder = resources.files("eventledger.services").joinpath("static", "swagger-ui")
    return folder.joinpath(name).read_bytes()


def install_openapi(app: FastAPI) -> None:
    """Serve `app`'s polished document at `/openapi.json` and Swagger UI from the package at
    `/docs` (call once, in the app factory, before other layers wrap `app.openapi`)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        return polish(build(), app.routes)

    app.openapi = openapi  # type: ignore[method-assign]
    replaced = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    app.router.routes[:] = [
        r for r in app.router.routes if not (isinstance(r, Route) and r.path in replaced)
    ]

    async def openapi_json(request: Request) -> Response:
        # app.openapi as it is now: layers installed after this one wrap it.
        return JSONResponse(polish(app.openapi(), app.routes))

    async def swagger_ui(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/favicon-32x32.png",
            # No badge that asks validator.swagger.io about the document.
            swagger_ui_parameters={"validatorUrl": None},
        )

    def asset(name: str, media_type: str) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            # Same bytes until the package is upgraded: let the browser keep them a day.
            return Response(
                docs_asset(name),
                media_type=media_type,
                headers={"Cache-Control": "public, max-age=86400"},
            )

        return serve

    app.add_route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False)
    app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    for name, media_type in DOCS_ASSETS.items():
        app.add_route(
            f"/docs/{name}", asset(name, media_type), methods=["GET"], include_in_schema=False
        )
