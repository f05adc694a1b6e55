"""ops/: the Grafana dashboard queries only metrics the services export, and the Prometheus
scrape config scrapes every service on its default port with the metrics token; the Makefile:
`make clean` keeps the ledger's data, `make run` installs only what running needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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
NOT_YET_EXPORTED: set[str] = set()


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


# -- the Makefile ---------------------------------------------------------------------------

MAKEFILE = OPS.parent / "Makefile"


def make(folder: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-f", str(MAKEFILE), *args],
        cwd=folder,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


def a_checkout(tmp_path: Path) -> Path:
    """A folder as `make` sees a clone that has run: a venv, caches and the ledger's data."""
    for folder in (".venv/bin", ".pytest_cache", "src/pkg/__pycache__", "tests", "bench"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "eventledger-data" / "tokens").mkdir(parents=True)
    (tmp_path / "eventledger-data" / "events.db").write_text("the ledger")
    return tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_deletes_caches_and_the_venv_but_never_the_data(tmp_path: Path) -> None:
    checkout = a_checkout(tmp_path)
    result = make(checkout, "clean")
    assert result.returncode == 0, result.stderr
    assert not (checkout / ".venv").exists() and not (checkout / ".pytest_cache").exists()
    assert not (checkout / "src/pkg/__pycache__").exists()
    assert (checkout / "eventledger-data" / "events.db").read_text() == "the ledger"
    assert "make clean-data" in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_data_asks_first_and_deletes_only_on_yes(tmp_path: Path) -> None:
    checkout = a_checkout(tmp_path)
    refused = make(checkout, "clean-data", answer="no\n")
    assert refused.returncode != 0 and (checkout / "eventledger-data").exists()
    assert "Type yes" in refused.stdout
    confirmed = make(checkout, "clean-data", answer="yes\n")
    assert confirmed.returncode == 0 and not (checkout / "eventledger-data").exists()
    assert (checkout / ".venv").exists()
    (checkout / "eventledger-data").mkdir()
    assert make(checkout, "clean-data", "CONFIRM=yes").returncode == 0
    assert not (checkout / "eventledger-data").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_installs_what_running_needs_and_says_so_and_make_test_the_dev_tools(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "constraints.txt").write_text("")
    run = make(tmp_path, "-n", "run")  # -n: print the commands, run none
    assert run.returncode == 0, run.stderr
    installs = [line for line in run.stdout.splitlines() if "pip install" in line]
    package = [line for line in installs if line.rstrip().endswith(" -e .")]
    assert len(package) == 1 and "-c constraints.txt" in package[0], installs
    assert not any("[dev" in line or "--quiet -e" in line for line in installs), installs
    assert "what it needs to run" in run.stdout and "eventledger up" in run.stdout
    test = make(tmp_path, "-n", "test")
    assert "pip install -c constraints.txt -e '.[dev,bench]'" in test.stdout
    assert "pip install -c constraints.txt --no-deps openapi-python-client" in test.stdout


# -- dependency pins -------------------------------------------------------------------------

CONSTRAINTS = OPS.parent / "constraints.txt"


def test_the_package_asks_for_ranges_and_constraints_pin_each_inside_them() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((OPS.parent / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += [Requirement(text) for text in extra]
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    for requirement in wanted:
        specifiers = {spec.operator for spec in requirement.specifier}
        assert specifiers == {">=", "<"}, f"{requirement}: a range, not a pin, in the package"
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} has no exact pin in constraints.txt"
        assert requirement.specifier.contains(pinned), f"{requirement.name}=={pinned}"
    assert "openapi-python-client" in pins  # installed by make with --no-deps
