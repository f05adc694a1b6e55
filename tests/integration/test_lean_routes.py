"""`serve_directly`: a declared route answered by its handler without FastAPI's parameter
resolution keeps its routing, its OpenAPI entry, its problem documents and its metrics."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Request
from fastapi.responses import Response

from eventledger.services.http import ProblemError, create_service_app, serve_directly

pytestmark = pytest.mark.asyncio


def toy() -> tuple[object, object]:
    app, metrics = create_service_app(service="stream", title="toy", description="toy")

    @app.post("/things/{name}", summary="Make a thing", description="Makes a thing.")
    async def make(name: str, request: Request) -> Response:
        if name == "bad":
            raise ProblemError(422, "bad-thing", "Bad thing", "no bad things")
        return Response(f"{name}:{len(await request.body())}", media_type="text/plain")

    async def direct(request: Request) -> Response:
        return await make(request.path_params["name"], request)

    before = app.openapi()
    serve_directly(app, "post", "/things/{name}", direct)
    app.openapi_schema = None
    assert app.openapi() == before  # the document does not change
    return app, metrics


async def test_a_direct_route_answers_with_its_handler_problems_and_metrics() -> None:
    app, metrics = toy()
    transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        headers = {"content-type": "application/json"}
        r = await c.post("/things/a%20b", content=b"{}", headers=headers)
        assert (r.status_code, r.text) == (200, "a b:2")
        r = await c.post("/things/bad", content=b"{}", headers=headers)
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == "bad-thing"
        r = await c.get("/things/a")
        assert r.status_code == 405
    sample = metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "eventledger_http_requests_total",
        {"service": "stream", "method": "POST", "route": "/things/{name}", "status": "422"},
    )
    assert sample == 1


async def test_only_a_declared_route_and_an_async_handler_are_taken() -> None:
    app, _ = create_service_app(service="stream", title="toy", description="toy")

    async def direct(request: Request) -> Response:
        return Response()

    with pytest.raises(LookupError):
        serve_directly(app, "POST", "/nowhere", direct)

    @app.post("/here")
    async def here() -> Response:
        return Response()

    with pytest.raises(TypeError):
        serve_directly(app, "POST", "/here", lambda request: direct(request))  # type: ignore[arg-type,return-value]
