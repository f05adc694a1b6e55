"""Markdown for the whole-system sections: the goals of issue 9, the CPU budget, memory,
catch-up, scale, snapshots and store size; and the README block between its markers.

Every function returns lines of Markdown; `python -m bench` joins them with the in-process
store section (bench/report.py) into bench/results.md, and `readme_block` is what replaces
the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in README.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.http import RunResult, percentile
from bench.whole import BackendResult

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MiB = 1024 * 1024


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _rates(runs: Sequence[RunResult], phase: str) -> list[float]:
    return [r for r in (x.rate(phase) for x in runs) if r is not None]


def _paired(a: Sequence[RunResult], b: Sequence[RunResult], phase: str) -> list[float]:
    out = []
    for x, y in zip(a, b, strict=False):
        rx, ry = x.rate(phase), y.rate(phase)
        if rx is not None and ry:
            out.append(rx / ry)
    return out


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---", *("---:" for _ in headers[1:])]
    return [_row(headers), "|" + "|".join(align) + "|", *(_row(r) for r in rows)]


def goals(backends: Sequence[BackendResult]) -> list[str]:
    """The table of issue 9: peer, eventledger, ratio (median of per-run ratios), goal."""
    rows: list[list[str]] = []
    by = {b.backend: b for b in backends}

    def vs_peer(backend: str, phase: str, what: str, goal: float) -> None:
        b = by.get(backend)
        if b is None or not b.runs:
            return
        ours, peer = b.runs.get("eventledger", []), b.runs.get("peer", [])
        paired = _paired(ours, peer, phase)
        ratio = _median(paired)
        rows.append(
            [
                f"{what}, {backend}",
                _n(_median(_rates(peer, phase))),
                _n(_median(_rates(ours, phase))),
                f"{ratio:.2f}× ({' '.join(f'{r:.2f}' for r in paired)})" if ratio else "—",
                f"≥ {goal:g}× the peer",
                _met(ratio is not None and ratio >= goal),
            ]
        )

    vs_peer("SQLite", "commands", "commands/s", 3)
    vs_peer("PostgreSQL", "commands", "commands/s", 5)
    vs_peer("SQLite", "reads", "reads/s `GET /accounts/{id}`", 3)
    vs_peer("PostgreSQL", "reads", "reads/s `GET /accounts/{id}`", 3)
    for b in backends:
        for phase, unit in (("commands", "command"), ("reads", "read")):
            ours_us = _service_cpu(b.runs.get("eventledger", []), phase)
            peer_us = _service_cpu(b.runs.get("peer", []), phase)
            if ours_us and peer_us:
                rows.append(
                    [
                        f"server CPU µs per {unit}, {b.backend} (load-independent)",
                        f"{peer_us:,.0f}",
                        f"{ours_us:,.0f}",
                        f"{peer_us / ours_us:.2f}× less",
                        "—",
                        "—",
                    ]
                )
    for b in backends:
        ours_ms = [x * 1e3 for x in b.latencies("eventledger", "commands")]
        peer_ms = [x * 1e3 for x in b.latencies("peer", "commands")]
        if ours_ms and peer_ms:
            rows.append(
                [
                    f"command latency at 32 clients, {b.backend} (p50 / p99)",
                    f"{percentile(peer_ms, 50):.1f} / {percentile(peer_ms, 99):.1f} ms",
                    f"{percentile(ours_ms, 50):.1f} / {percentile(ours_ms, 99):.1f} ms",
                    "—",
                    "—",
                    "—",
                ]
            )
    for b in backends:
        latencies = b.latencies()
        if latencies:
            p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
            rows.append(
                [
                    f"command → read visible, {b.backend} (p50 / p99)",
                    "—",
                    f"{p50:.1f} / {p99:.1f} ms",
                    "—",
                    "p99 ≤ 5 ms",
                    _met(p99 <= 5),
                ]
            )
    bulk_goal = {"SQLite": 100_000, "PostgreSQL": 50_000}
    for b in backends:
        if b.bulk is not None and not b.bulk.errors():
            goal = bulk_goal.get(b.backend, 0)
            rows.append(
                [
                    f"bulk append over HTTP, 1,000 events/request, 4 clients, {b.backend} (ev/s)",
                    "—",
                    _n(b.bulk.rate),
                    "—",
                    f"≥ {goal:,}",
                    _met(b.bulk.rate >= goal),
                ]
            )
    for b in backends:
        for c in b.catch_up:
            rows.append(
                [
                    f"{c.service} from empty to a {c.events:,}-event head, {b.backend} (ev/s)",
                    "—",
                    _n(c.rate),
                    "—",
                    "≥ 150,000",
                    _met(c.rate >= 150_000),
                ]
            )
    return _table(("measure", "peer", "eventledger", "ratio (per run)", "goal", "met"), rows)


def _service_cpu(runs: Sequence[RunResult], phase: str) -> float | None:
    """Median over runs of the CPU µs per operation of all server processes together (the
    load generator left out): what a busy machine changes least."""
    totals = [
        sum(us for name, us in run.phases[phase].cpu_us_per_op().items() if name != "load")
        for run in runs
        if phase in run.phases and not run.phases[phase].errors()
    ]
    return _median(totals)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def cpu_budget(backends: Sequence[BackendResult]) -> list[str]:
    """CPU µs per command / read per process, and per event in append, subscription, apply."""
    rows: list[list[str]] = []
    for b in backends:
        for system, runs in b.runs.items():
            for phase, unit in (("commands", "command"), ("reads", "read")):
                per: dict[str, list[float]] = {}
                for run in runs:
                    if phase in run.phases:
                        for name, us in run.phases[phase].cpu_us_per_op().items():
                            per.setdefault(name, []).append(us)
                if per:
                    cells = ", ".join(
                        f"{name} {statistics.median(v):,.0f}" for name, v in per.items()
                    )
                    total = sum(statistics.median(v) for n, v in per.items() if n != "load")
                    rows.append([f"per {unit}, {system}, {b.backend}", cells, f"{total:,.0f}"])
        if b.bulk is not None:
            bulk = b.bulk.cpu_us_per_op()
            rows.append(
                [
                    f"per event appended (bulk), {b.backend}",
                    f"stream {bulk.get('stream', 0):,.1f}, load {bulk.get('load', 0):,.1f}",
                    f"{bulk.get('stream', 0):,.1f}",
                ]
            )
        for c in b.catch_up:
            rows.append(
                [
                    f"per event, {c.service} catch-up, {b.backend}",
                    f"projection apply ({c.service}) {c.cpu_us_per_event[c.service]:,.1f}, "
                    f"subscription (stream) {c.cpu_us_per_event['stream']:,.1f}",
                    f"{sum(c.cpu_us_per_event.values()):,.1f}",
                ]
            )
    return _table(("what", "CPU µs by process (median of runs)", "services total"), rows)


def memory(backends: Sequence[BackendResult]) -> list[str]:
    rows: list[list[str]] = []
    for b in backends:
        for step, per in b.rss.items():
            cells = ", ".join(f"{name} {rss / MiB:,.0f}" for name, rss in per.items())
            rows.append([f"after {step.removeprefix('after ')}, {b.backend}", cells])
        s = b.subscribers
        if s:
            rows.append(
                [
                    f"stream with {s.get('ready', 0):,} idle SSE subscribers, {b.backend}",
                    f"stream {s['rss_before'] / MiB:,.0f} → {s['rss_with'] / MiB:,.0f} "
                    f"(+{(s['rss_with'] - s['rss_before']) / 1024 / max(s.get('ready', 1), 1):,.0f}"
                    " KiB per subscriber)",
                ]
            )
    return _table(("when", "resident memory, MiB"), rows)


def gates(backends: Sequence[BackendResult]) -> list[str]:
    rows: list[list[str]] = []
    for b in backends:
        for system, runs in b.runs.items():
            for n, run in enumerate(runs, 1):
                g = run.gate
                rows.append(
                    [
                        f"{system}, {b.backend}, run {n}",
                        "passed" if g.get("passed") else "**FAILED**",
                        f"{g.get('ops', 0)} accounts, balances {_n(g.get('balances_total'))} "
                        f"= accepted {_n(g.get('accepted_total'))}",
                    ]
                )
        if b.catch_up:
            failed = [f for f in b.failures if f.startswith("catch-up gate")]
            rows.append(
                [
                    f"catch-up, {b.backend}",
                    "**FAILED**" if failed else "passed",
                    "bulk accounts' balances at accounting; statistics total balance",
                ]
            )
    return _table(("run", "money conserved, every acknowledged command visible", "detail"), rows)


def generic(result: Any) -> list[str]:
    """A table for whatever a helper's `measure` returned: a mapping, or a list of them."""
    if isinstance(result, Mapping) and all(isinstance(v, Mapping) for v in result.values()):
        result = [{"": key, **value} for key, value in result.items()]  # one row per key
    elif isinstance(result, Mapping):
        result = [result]
    if isinstance(result, list) and result and all(isinstance(r, Mapping) for r in result):
        headers = list(dict.fromkeys(k for r in result for k in r))
        rows = [[_cell(r.get(h)) for h in headers] for r in result]
        return _table(headers, rows)
    return [f"    {result!r}"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def replace_readme_block(block: Sequence[str], readme: Path = README) -> bool:
    """Replace the text between the markers; False (nothing written) when they are missing."""
    text = readme.read_text(encoding="utf-8")
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        return False
    new = text[: begin + len(BEGIN)] + "\n" + "\n".join(block) + "\n" + text[end:]
    readme.write_text(new, encoding="utf-8")
    return True


Say = Callable[[str], None]
