"""Profile loading and doctor probe times.

Baseline: a bare ``tomllib`` parse of the same file, so the ratio is what validation, ``extends``
merging and cross-checks cost on top of reading TOML.
"""

from __future__ import annotations

import statistics
import time
import tomllib
from pathlib import Path

from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark


def _median_us(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


@benchmark("profile")
def bench_profile(ctx: BenchContext) -> BenchResult:
    from capsight_edge.doctor import run_doctor
    from capsight_edge.profile import load_profile

    path = Path(ctx.profile_path)
    repeats = 50 if ctx.quick else 500
    ours = _median_us(lambda: load_profile(path), repeats)
    base = _median_us(lambda: tomllib.loads(path.read_text()), repeats)
    result = BenchResult("profile", "load + validate a profile vs a bare TOML parse")
    result.metrics.append(Metric("profile load (median)", ours, "us", base, "tomllib.loads"))
    profile = load_profile(path)
    for check in run_doctor(profile):
        result.metrics.append(Metric(f"doctor: {check.name}", check.duration_s * 1000, "ms"))
    return result
