"""The console table and `bench/results.md`: ratios first, with the machine they came from."""

from __future__ import annotations

import os
import platform
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.runner import Outcome
from bench.workloads import PAYLOAD_BYTES, Sizes

RESULTS = Path(__file__).with_name("results.md")

# What the comparison cannot make equal; printed with every result.
CAVEATS = (
    "Concurrency model: our writers are asyncio tasks on one event loop feeding one writer "
    "(thread for SQLite, task for PostgreSQL) that commits whatever is queued as one "
    "transaction; the peer's writers are threads, each insert_events its own transaction "
    "(the peer serialises writers: one writer connection for SQLite, an EXCLUSIVE table lock "
    "for PostgreSQL). Both run in one process, so both share the GIL.",
    "Work per event is not identical: our store also checks the expected version with a "
    "query, keeps event ids unique (idempotent retries), stores type, metadata and a "
    "timestamp, and keeps more indexes (id, stream+version, type+position); the peer's check "
    "is its primary key (originator_id, originator_version) alone.",
    "The peer is used at its recorder level (insert_events / select_notifications), below "
    "its Application; the timed sections include JSON encoding (peer) and decoding (both) so "
    "both do the serialisation our store does inside append/read_all.",
    "Pools: the peer gets one connection per writer thread (17); our PostgreSQL store keeps "
    "its defaults (pool of at most 10; appends use the writer's one connection).",
    "Event loop: the default asyncio loop (the services run on uvloop).",
    "HTTP rows (only with --http): the client and the service share this machine's CPUs, and "
    "the service writes to whatever store it was started with.",
)


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    headers: tuple[str, str, str, str, str]
    outcomes: Sequence[Outcome]


@dataclass(frozen=True, slots=True)
class Environment:
    date: str
    python: str
    system: str
    cpus: int
    cpu_model: str
    versions: str
    postgres: str
    durability: Sequence[tuple[str, str]]  # (what, how)
    mode: str
    sizes: Sizes
    load: str

    def lines(self) -> list[str]:
        s = self.sizes
        return [
            f"date: {self.date}",
            f"python: {self.python}",
            f"machine: {self.cpus} CPUs ({self.cpu_model}), {self.system}",
            f"load average (1 min): {self.load}",
            f"versions: {self.versions}",
            f"postgresql: {self.postgres}",
            *(f"durability, {what}: {how}" for what, how in self.durability),
            f"mode: {self.mode}; median of {s.repeats} interleaved runs per contender, "
            f"fresh file/schema per run, warm-up excluded",
            f"sizes: {s.appends_one:,} appends (1 writer), {s.appends_many:,} appends "
            f"({s.writers} writers), log of {s.log_events:,} events read {s.read_passes}x; "
            f"payload {PAYLOAD_BYTES} bytes of JSON per event",
        ]


def load_average() -> float:
    """The 1-minute load average: how much else this machine was doing."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def environment(
    *,
    mode: str,
    sizes: Sizes,
    postgres: str,
    durability: Sequence[tuple[str, str]],
    load: tuple[float, float],
) -> Environment:
    return Environment(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        system=f"{platform.system()} {platform.release()}",
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
        cpu_model=_cpu_model(),
        versions=(
            f"eventledger {version('eventledger')}, eventsourcing {version('eventsourcing')}, "
            f"SQLite {sqlite3.sqlite_version}, psycopg {version('psycopg')}"
        ),
        postgres=postgres,
        durability=durability,
        mode=mode,
        sizes=sizes,
        load=f"{load[0]:.2f} before the run, {load[1]:.2f} after",
    )


def console(env: Environment, sections: Sequence[Section]) -> str:
    out = ["", *env.lines()]
    for section in sections:
        headers, rows = _cells(section)
        widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]

        def line(cells: Sequence[str], widths: list[int] = widths) -> str:
            first, *rest = cells
            return " | ".join(
                [
                    first.ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)),
                ]
            )

        out += ["", section.title, line(headers), "-+-".join("-" * w for w in widths)]
        out += [line(row) for row in rows]
    out += _errors(sections)
    out += ["", "Not equal in the comparison:", *(f"- {c}" for c in CAVEATS)]
    return "\n".join(out)


def markdown(env: Environment, sections: Sequence[Section]) -> str:
    out = [
        "# Benchmark results",
        "",
        "Written by `python -m bench`. The ratio is eventledger / eventsourcing (above 1: "
        "eventledger is faster), both measured in the same run on the same machine; "
        "absolute ops/s are only meaningful beside each other.",
        "",
        *(f"- {line}" for line in env.lines()),
        *markdown_sections(sections),
    ]
    return "\n".join(out)


def markdown_sections(sections: Sequence[Section], level: str = "##") -> list[str]:
    """The store sections' tables, failures and caveats (headings at `level`)."""
    out: list[str] = []
    for section in sections:
        headers, rows = _cells(section)
        out += ["", f"{level} {section.title}", "", _md_row(headers)]
        out.append("|" + "|".join(["---", *("---:" for _ in headers[1:])]) + "|")
        out += [_md_row(row) for row in rows]
    errors = _errors(sections)
    if errors:
        out += ["", f"{level} Failures", "", *errors[2:]]
    out += ["", f"{level} Not equal in the comparison", "", *(f"- {c}" for c in CAVEATS), ""]
    return out


def _cells(section: Section) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    rows: list[tuple[str, ...]] = []
    for o in section.outcomes:
        ratio = o.ratio()
        rows.append(
            (
                o.comparison.title,
                _rate(o.subject_rate),
                _rate(o.baseline_rate),
                "—" if ratio is None else f"{ratio:.2f}",
                " ".join(f"{r:.2f}" for r in o.paired_ratios()) or "—",
            )
        )
    return section.headers, rows


def _rate(rate: float | None) -> str:
    return "failed" if rate is None else f"{rate:,.0f}"


def _errors(sections: Sequence[Section]) -> list[str]:
    lines = [
        f"- {o.comparison.title}: {error}"
        for section in sections
        for o in section.outcomes
        for error in dict.fromkeys(o.errors())
    ]
    return ["", "Failures:", *lines] if lines else []


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
