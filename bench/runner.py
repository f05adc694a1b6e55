"""Interleaved repeats, medians and paired ratios.

Each comparison puts a subject (our store) beside a baseline (the peer) on the same
workload. Repeat r measures every comparison once on each side before repeat r+1 starts,
and the side that goes first alternates between repeats, so slow drifts of a shared
machine (another build, a checkpoint, a noisy neighbour) land on both sides alike.
The ratio reported is median(subject) / median(baseline); the per-repeat ratios show
how much one can trust it.
"""

from __future__ import annotations

import gc
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.workloads import Kind, Sample, Sizes

Measure = Callable[[Kind, Sizes], Sample]


@dataclass(frozen=True, slots=True)
class Side:
    name: str
    measure: Measure


@dataclass(frozen=True, slots=True)
class Comparison:
    title: str
    kind: Kind
    subject: Side
    baseline: Side


@dataclass(slots=True)
class Outcome:
    """What the repeats of one comparison gave: per repeat, a sample or the error."""

    comparison: Comparison
    subject: list[Sample | str] = field(default_factory=list)
    baseline: list[Sample | str] = field(default_factory=list)

    @property
    def subject_rate(self) -> float | None:
        return _median_rate(self.subject)

    @property
    def baseline_rate(self) -> float | None:
        return _median_rate(self.baseline)

    def ratio(self) -> float | None:
        ours, theirs = self.subject_rate, self.baseline_rate
        return None if ours is None or theirs is None else ours / theirs

    def paired_ratios(self) -> list[float]:
        return [
            a.rate / b.rate
            for a, b in zip(self.subject, self.baseline, strict=True)
            if isinstance(a, Sample) and isinstance(b, Sample)
        ]

    def errors(self) -> list[str]:
        return [e for e in (*self.subject, *self.baseline) if isinstance(e, str)]


def _median_rate(results: list[Sample | str]) -> float | None:
    rates = [r.rate for r in results if isinstance(r, Sample)]
    return statistics.median(rates) if rates else None


def run(
    comparisons: Sequence[Comparison], sizes: Sizes, log: Callable[[str], None]
) -> list[Outcome]:
    outcomes = [Outcome(c) for c in comparisons]
    for repeat in range(sizes.repeats):
        for outcome in outcomes:
            c = outcome.comparison
            sides = [(c.subject, outcome.subject), (c.baseline, outcome.baseline)]
            if repeat % 2:
                sides.reverse()
            for side, results in sides:
                result = _measure_once(side, c.kind, sizes)
                results.append(result)
                log(f"[{repeat + 1}/{sizes.repeats}] {c.title} · {side.name}: {_brief(result)}")
    return outcomes


def _measure_once(side: Side, kind: Kind, sizes: Sizes) -> Sample | str:
    gc.collect()  # garbage of the previous measurement is not collected on this one's clock
    try:
        return side.measure(kind, sizes)
    except Exception as exc:
        # A failing contender (e.g. a backend under construction) costs its row, not the run.
        return traceback.format_exception_only(exc)[-1].strip()


def _brief(result: Sample | str) -> str:
    if isinstance(result, str):
        return f"FAILED {result}"
    return f"{result.rate:,.0f} ops/s ({result.ops:,} in {result.seconds:.2f} s)"
