"""The benchmark registry and the shape of a result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Metric:
    """One figure. ``baseline`` is the same figure for the reference measured in this run;
    ``ratio`` is value / baseline (None when there is no baseline)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class BenchResult:
    name: str
    description: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


@dataclass
class BenchContext:
    quick: bool
    profile_path: str
    out_dir: str


Benchmark = Callable[[BenchContext], BenchResult]
BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str) -> Callable[[Benchmark], Benchmark]:
    def deco(fn: Benchmark) -> Benchmark:
        BENCHMARKS[name] = fn
        return fn

    return deco
