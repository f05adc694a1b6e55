"""The request id and the request log lines of every service (services/requestlog.py), the
log formats (eventledger/logging.py) and the process metrics, in process."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from eventledger import bootstrap
from eventledger.config import ConfigError, Settings, load_settings
from eventledger.credentials import add_token
from eventledger.logging import JsonFormatter, TextFormatter, logging_config
from eventledger.services.requestlog import REQUEST_ID, valid_request_id

STREAM = "http://127.0.0.1:8002"
GENERATED = re.compile(r"[0-9a-f]{8}-[0-9a-f]+")


@pytest.fixture
def secured(tmp_path: Path) -> tuple[httpx.AsyncClient, str]:
    auth_file = tmp_path / "auth.json"
    token = add_token(auth_file, "reader", ["events:read", "metrics"])
    settings = replace(Settings(data_dir=tmp_path / "data", store="memory://"), auth_file=auth_file)
    app = bootstrap.build_app("stream", settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=STREAM), token


async def test_a_valid_request_id_is_echoed_and_a_missing_one_is_made(
    secured: tuple[httpx.AsyncClient, str],
) -> None:
    http, _ = secured
    async with http:
        given = await http.get("/openapi.json", headers={"X-Request-ID": "client-42.a/b:c"})
        assert given.headers["x-request-id"] == "client-42.a/b:c"
        first = (await http.get("/openapi.json")).headers["x-request-id"]
        second = (await http.get("/openapi.json")).headers["x-request-id"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second


@pytest.mark.parametrize(
    "bad", ["", "has space", "x" * 65, "tab\there", "café", "quote\x7f"], ids=repr
)
async def test_an_invalid_request_id_is_replaced_not_echoed(
    secured: tuple[httpx.AsyncClient, str], bad: str
) -> None:
    http, _ = secured
    async with http:
        answer = await http.get("/openapi.json", headers={"X-Request-ID": bad.encode()})
    assert answer.status_code == 200
    assert GENERATED.fullmatch(answer.headers["x-request-id"])


def test_request_ids_are_1_to_64_visible_ascii_characters() -> None:
    assert valid_request_id(b"!") and valid_request_id(b"~" * 64)
    for bad in (b"", b"a" * 65, b"a b", b"a\n", b"\x00", "é".encode()):
        assert not valid_request_id(bad), bad


async def test_a_refused_request_is_logged_with_its_id_and_never_the_token(
    secured: tuple[httpx.AsyncClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    http, token = secured
    caplog.set_level(logging.INFO, logger="eventledger.requests")
    async with http:
        refused = await http.get("/events", headers={"X-Request-ID": "rid-401"})
        served = await http.get(
            "/metrics?secret=not-logged",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "rid-200"},
        )
    # The request log wraps the auth middleware: a 401 carries the id too.
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "rid-401"
    assert served.status_code == 200 and served.headers["x-request-id"] == "rid-200"
    lines = [r for r in caplog.records if r.name == "eventledger.requests"]
    fields = [r.fields for r in lines]  # type: ignore[attr-defined]
    assert [(f["request_id"], f["method"], f["path"], f["status"]) for f in fields] == [
        ("rid-401", "GET", "/events", 401),
        ("rid-200", "GET", "/metrics", 200),
    ]
    assert all(isinstance(f["ms"], float) and f["ms"] >= 0 for f in fields)
    for formatter in (TextFormatter("stream | "), JsonFormatter("stream")):
        text = "\n".join(formatter.format(r) for r in lines)
        assert token not in text and "not-logged" not in text and "Bearer" not in text


async def test_request_lines_are_off_below_info_but_5xx_lines_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi import FastAPI

    from eventledger.services.http import create_service_app

    app, _ = create_service_app(service="t", title="t", description="t")
    seen: list[str | None] = []

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        seen.append(REQUEST_ID.get())
        return {}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    assert isinstance(app, FastAPI)
    caplog.set_level(logging.WARNING, logger="eventledger.requests")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        ok_answer = await http.get("/ok", headers={"X-Request-ID": "ctx-1"})
        assert (await http.get("/boom")).status_code == 500
    assert seen == ["ctx-1"]  # the handler sees the id in REQUEST_ID
    assert ok_answer.headers["x-request-id"] == "ctx-1"
    logged = [r for r in caplog.records if r.name == "eventledger.requests"]
    assert [(r.levelname, r.fields["status"]) for r in logged] == [  # type: ignore[attr-defined]
        ("WARNING", 500)
    ]


def test_json_lines_carry_time_level_and_fields_on_one_line() -> None:
    record = logging.LogRecord("eventledger.requests", logging.INFO, "", 0, "request", (), None)
    record.fields = {"path": "/a\nb\u202e", "status": 200, "request_id": "r1"}
    line = JsonFormatter("stream").format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])
    assert parsed | {"time": ""} == {
        "time": "",
        "level": "INFO",
        "logger": "eventledger.requests",
        "service": "stream",
        "message": "request",
        "path": "/a\nb\u202e",
        "status": 200,
        "request_id": "r1",
    }
    text = TextFormatter("stream | ").format(record)
    assert "\n" not in text
    assert text.endswith(' INFO     stream | request path="/a\\nb\\u202e" status=200 request_id=r1')


def test_the_log_format_is_text_or_json_by_flag_or_environment() -> None:
    assert load_settings({}, {}).log_format == "text"
    assert load_settings({}, {"EVENTLEDGER_LOG_FORMAT": "json"}).log_format == "json"
    assert (
        load_settings({"log_format": "text"}, {"EVENTLEDGER_LOG_FORMAT": "json"}).log_format
        == "text"
    )
    with pytest.raises(ConfigError, match="EVENTLEDGER_LOG_FORMAT must be text or json"):
        load_settings({}, {"EVENTLEDGER_LOG_FORMAT": "xml"})
    assert load_settings({}, {"EVENTLEDGER_LOG_REQUESTS": "1"}).log_requests
    config = logging_config("stream", prefix="", log_format="json", log_requests=False)
    assert config["loggers"]["eventledger.requests"]["level"] == "WARNING"
    assert config["formatters"]["default"]["()"].endswith("JsonFormatter")
    with pytest.raises(ValueError):
        logging_config("stream", prefix="", log_format="yaml")


async def test_metrics_include_the_process_and_the_platform(
    secured: tuple[httpx.AsyncClient, str],
) -> None:
    http, token = secured
    async with http:
        text = (await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})).text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert name in text, name
