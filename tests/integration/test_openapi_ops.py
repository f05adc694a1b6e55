"""ops/: the Grafana dashboard queries only metrics the services export, and the Prometheus
scrape config scrapes every service on its default port with the metrics token."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventledger import bootstrap
from eventledger.config import DEFAULT_PORTS, Settings

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARD = OPS / "grafana" / "eventledger-dashboard.json"
SCRAPE_CONFIG = OPS / "prometheus" / "prometheus.yml"
METRIC = re.compile(r"\b((?:eventledger|process|python)_[a-z_]+)")
# Asked of the read side (the age of the oldest event not applied yet); the panel shows
# "No data" until a service exports it.
NOT_YET_EXPORTED = {"eventledger_projection_lag_seconds"}


def dashboard_expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in dashboard_expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in dashboard_expressions(value)]
    return []


async def exported_metric_names(tmp_path: Path) -> set[str]:
    names: set[str] = set()
    for service in ("stream", "transaction", "accounting", "statistics"):
        settings = Settings(data_dir=tmp_path / service, store="memory://")
        app = bootstrap.build_app(service, settings)
        transport = httpx.ASGITransport(app=app)
        base = f"http://127.0.0.1:{settings.port(service)}"
        async with httpx.AsyncClient(transport=transport, base_url=base) as http:
            text = (await http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                names.add(name)
                if kind == "histogram":
                    names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
                if kind == "counter" and not name.endswith("_total"):
                    names.add(f"{name}_total")
    return names


async def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard["panels"])
    assert len(expressions) >= 15
    queried = {name for expr in expressions for name in METRIC.findall(expr)}
    exported = await exported_metric_names(tmp_path)
    assert queried - exported == NOT_YET_EXPORTED
    panel_titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "commands/s",
        "latency",
        "appended",
        "lag (events)",
        "lag (seconds)",
        "subscribers",
        "4xx",
        "5xx",
    ):
        assert topic in panel_titles, topic


async def test_every_panel_has_a_unique_id_and_uses_the_data_source_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_scrape_config_scrapes_every_service_with_the_metrics_token() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"eventledger-{service}" for service in DEFAULT_PORTS}
    for service, port in DEFAULT_PORTS.items():
        job = jobs[f"eventledger-{service}"]
        assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
        assert job["authorization"]["credentials_file"].endswith("eventledger-metrics.token")
