"""Benchmarks that misbehave, for the runner's isolation tests (tests/test_benchmarks.py). They
are registered only in the process that imports this module: the benchmark's own process."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark


@benchmark("test_leaves_a_process")
def leaves_a_process(ctx: BenchContext) -> BenchResult:
    """Reports its own pid, and starts a process it never stops (its pid in the out folder)."""
    sleeper = subprocess.Popen(["sleep", "600"])
    Path(ctx.out_dir, "sleeper.pid").write_text(str(sleeper.pid))
    res = BenchResult("test_leaves_a_process", "reports its pid, leaves a sleeper")
    res.metrics.append(Metric("pid", os.getpid(), ""))
    return res


@benchmark("test_kills_itself")
def kills_itself(ctx: BenchContext) -> BenchResult:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@benchmark("test_raises")
def raises(ctx: BenchContext) -> BenchResult:
    raise RuntimeError("the sink did not start")


@benchmark("test_hangs")
def hangs(ctx: BenchContext) -> BenchResult:
    """Starts a sleeper, names it and itself in the out folder, then never returns."""
    sleeper = subprocess.Popen(["sleep", "600"])
    Path(ctx.out_dir, "pids.tmp").write_text(f"{os.getpid()} {sleeper.pid}")
    Path(ctx.out_dir, "pids.tmp").rename(Path(ctx.out_dir, "pids"))
    signal.pause()
    raise AssertionError("unreachable")


@benchmark("test_burns_cpu")
def burns_cpu(ctx: BenchContext) -> BenchResult:
    """Waits for a child that spins for 0.5 s of CPU: the runner counts it with the benchmark."""
    import sys

    spin = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    return BenchResult("test_burns_cpu", "a child spins for 0.5 s of CPU")
