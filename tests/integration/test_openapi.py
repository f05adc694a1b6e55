"""Every service's OpenAPI document, as served: valid OpenAPI, one shared problem schema,
explicit operationIds and tags, and a client generator (openapi-python-client) that takes it
without a single warning; `/docs` served from the service itself, with no other host."""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from eventledger import bootstrap
from eventledger.config import Settings
from eventledger.credentials import add_token
from eventledger.services.openapi import PROBLEM_REF, camel_case, polish
from tests.integration.openapi_checks import openapi_defects

SERVICES = ["stream", "transaction", "accounting", "statistics", "console"]
CAMEL_CASE = re.compile(r"[a-z][A-Za-z0-9]*")


def settings_for(tmp_path: Path, *, secured: bool) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", store="memory://")
    if not secured:
        return settings
    auth_file = tmp_path / "auth.json"
    add_token(auth_file, "someone", ["events:read"])
    return replace(settings, auth_file=auth_file)


def build(service: str, tmp_path: Path, *, secured: bool) -> tuple[FastAPI, str]:
    if service == "console" and importlib.util.find_spec("eventledger.services.console") is None:
        pytest.skip("the console service is not in this tree yet")
    settings = settings_for(tmp_path, secured=secured)
    try:
        app = bootstrap.build_app(service, settings)
    except Exception as exc:  # the console may refuse a configuration it cannot act with
        if service == "console":
            pytest.skip(f"the console cannot be built here: {exc}")
        raise
    return app, f"http://127.0.0.1:{settings.port(service)}"


@asynccontextmanager
async def client(app: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the documents and /docs need no store.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        yield http


async def served_document(service: str, tmp_path: Path, *, secured: bool) -> dict[str, Any]:
    app, base = build(service, tmp_path, secured=secured)
    async with client(app, base) as http:
        answer = await http.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


@pytest.mark.parametrize("secured", [False, True], ids=["open", "secured"])
@pytest.mark.parametrize("service", SERVICES)
async def test_every_document_is_valid_openapi_with_one_problem_schema(
    service: str, secured: bool, tmp_path: Path
) -> None:
    from openapi_spec_validator import validate

    document = await served_document(service, tmp_path, secured=secured)
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert openapi_defects(document) == []
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), ids
    for path, method, operation in operations(document):
        assert CAMEL_CASE.fullmatch(operation["operationId"]), (method, path)
        assert operation["tags"], (method, path)
        for status, response in operation["responses"].items():
            if status[0] in "45":
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": PROBLEM_REF}, (method, path, status)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    text = json.dumps(document)
    unused = [name for name in schemas if f'"#/components/schemas/{name}"' not in text]
    assert unused == [], "a generator would make a class of each"
    if PROBLEM_REF in text:  # (the console documents no error answer)
        problem = schemas["Problem"]
        assert problem["required"] == ["type", "title", "status", "detail"]
        errors = problem["properties"]["errors"]
        assert errors["items"] == {"$ref": "#/components/schemas/FieldProblem"}
        assert problem["properties"]["actual_version"]["type"] == "integer"  # an extension
    else:
        assert service == "console"
    assert {tag["name"] for tag in document["tags"]} == {
        tag for _, _, operation in operations(document) for tag in operation["tags"]
    }


@pytest.mark.parametrize("service", SERVICES)
async def test_a_client_generator_takes_every_document_without_a_warning(
    service: str, tmp_path: Path
) -> None:
    pytest.importorskip("openapi_python_client", reason="make test installs it (constraints.txt)")
    from openapi_python_client import generate
    from openapi_python_client.config import Config, ConfigFile, MetaType

    document = await served_document(service, tmp_path, secured=True)
    source = tmp_path / "openapi.json"
    source.write_text(httpx.Response(200, json=document).text)
    output = tmp_path / "client"
    config = Config.from_sources(
        ConfigFile(post_hooks=[]), MetaType.NONE, source, "utf-8", False, output
    )
    with warnings.catch_warnings():
        # The generator's own dependencies may warn about themselves; not our document.
        warnings.simplefilter("ignore", DeprecationWarning)
        problems = generate(config=config)
    assert [f"{p.header}: {p.detail}" for p in problems] == []
    modules = {p.name for p in (output / "api").iterdir() if p.is_dir()}
    assert modules == {tag["name"] for tag in document["tags"]}
    if "Problem" in document["components"]["schemas"]:
        assert (output / "models" / "problem.py").exists()


@pytest.mark.parametrize("service", ["stream", "transaction", "accounting", "statistics"])
async def test_docs_load_swagger_ui_from_the_service_itself_without_a_token(
    service: str, tmp_path: Path
) -> None:
    app, base = build(service, tmp_path, secured=True)
    async with client(app, base) as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        assert re.findall(r"https?://", page.text) == []  # no CDN, no other host
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sorted(assets) == [
            "/docs/favicon-32x32.png",
            "/docs/swagger-ui-bundle.js",
            "/docs/swagger-ui.css",
        ]
        assert "url: '/openapi.json'" in page.text
        for asset in assets:
            answer = await http.get(asset)
            assert answer.status_code == 200, asset
            assert len(answer.content) > 500
        script = await http.get("/docs/swagger-ui-bundle.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in script.content
        assert (await http.get("/redoc")).status_code in (401, 404)  # CDN-only: not offered


async def test_the_assets_answer_behind_a_root_path(tmp_path: Path) -> None:
    app, base = build("stream", tmp_path, secured=False)
    app.root_path = "/ledger/stream"
    async with client(app, base) as http:
        page = await http.get("/docs")
    assert 'src="/ledger/stream/docs/swagger-ui-bundle.js"' in page.text
    assert "url: '/ledger/stream/openapi.json'" in page.text


def test_polishing_twice_changes_nothing() -> None:
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/things/{id}": {
                "get": {
                    "operationId": "get_thing_things__id__get",
                    "responses": {
                        "404": {
                            "description": "`not-found`",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "type": {"type": "string"},
                                            "errors": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Old"},
                                            },
                                            "thing_id": {
                                                "anyOf": [{"type": "string"}, {"type": "null"}],
                                                "title": "Thing Id",
                                            },
                                        },
                                    }
                                }
                            },
                        }
                    },
                },
                "delete": {"responses": {"204": {"description": "gone"}}},
            }
        },
    }
    document["components"] = {"schemas": {"Old": {"type": "object"}}}
    once = polish(document)
    snapshot = repr(once)
    assert repr(polish(once)) == snapshot
    thing = once["paths"]["/things/{id}"]
    assert thing["get"]["responses"]["404"]["content"] == {
        "application/problem+json": {"schema": {"$ref": PROBLEM_REF}}
    }
    assert once["components"]["schemas"]["Problem"]["properties"]["thing_id"] == {"type": "string"}
    assert set(once["components"]["schemas"]) == {"Problem", "FieldProblem"}  # Old: unused
    # Without the app's routes, the id comes from the method and the path, still unique.
    assert [thing["get"]["operationId"], thing["delete"]["operationId"]] == [
        "getThingsId",
        "deleteThingsId",
    ]
    assert thing["get"]["tags"] == ["things"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("open_account", "openAccount"),
        ("health", "health"),
        ("_private_thing", "privateThing"),
        ("getAccount", "getAccount"),
        ("post_/streams/{stream}", "postStreamsStream"),
    ],
)
def test_operation_ids_are_the_camel_case_of_the_function(name: str, expected: str) -> None:
    assert camel_case(name) == expected
