"""Model push: hot-swaps under inference load.

A real sink serves a real registry (two published recognisers, 1 and 2); a real
:class:`~capsight_edge.runtime.models.ModelRuntime` answers a 30 Hz inference loop (a 1280x720
camera-like frame per step, in its own thread, as the Collector calls it) while the main thread
points the channel at the other model and pulls: download, TUF verification, load, card check,
warm-up, self-test, swap. 20 swaps.

Figures: failed inferences (target 0); per swap, the longest a step's answer came after its
scheduled time while the swap ran (p50 and p99 over the swaps, target p99 <= 50 ms), against the
same figure in windows of the same length with no swap, measured in this run right after the swaps
(the loop's own jitter on this machine); the wall time of a pull that swaps.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark

RATE_HZ = 30.0


class Load:
    """Inference steps at RATE_HZ: for each, (scheduled time, time the answer came, ok)."""

    def __init__(self, runtime: object) -> None:
        self.runtime = runtime
        self.steps: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(8)]
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        period = 1.0 / RATE_HZ
        due = time.perf_counter()
        i = 0
        while not self.stop.is_set():
            ok = True
            try:
                self.runtime.predict([self.frames[i % len(self.frames)]])  # type: ignore[attr-defined]
            except Exception:
                ok = False
            self.steps.append((due, time.perf_counter(), ok))
            i += 1
            due += period
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                due = time.perf_counter()  # late: the next step is due now, not in a burst

    def worst_lateness_ms(self, start: float, end: float) -> float:
        late = [done - due for due, done, _ in self.steps if start <= done <= end + 1 / RATE_HZ]
        return 1000 * max(late, default=0.0)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@benchmark("model_swap")
def bench_model_swap(ctx: BenchContext) -> BenchResult:
    from benchmarks.push import served_registry

    swaps = 4 if ctx.quick else 20
    res = BenchResult("model_swap", __doc__.split("\n\n")[0].strip())
    root = Path(tempfile.mkdtemp(prefix="capsight-swap-"))
    try:
        with served_registry(root, ("1", "2")) as served:
            registry = served.registry
            rt = served.runtime(root / "cart")
            assert rt.pull().status == "updated"
            load = Load(rt)
            load.thread.start()
            time.sleep(0.5 if ctx.quick else 1.0)  # the loop settles
            pulls: list[tuple[float, float]] = []
            version = "1"
            for _ in range(swaps):
                version = "2" if version == "1" else "1"
                registry.promote("stable", "recogniser", version, who="bench")
                start = time.perf_counter()
                got = rt.pull()
                pulls.append((start, time.perf_counter()))
                if got.status != "updated" or rt.version != f"recogniser:{version}":
                    raise RuntimeError(f"swap to {version} did not happen: {got}")
                time.sleep(0.3)
            swap_s = [b - a for a, b in pulls]
            # The same loop, the same window lengths, no swap: its own jitter here.
            quiet_start = time.perf_counter()
            time.sleep(sum(swap_s) + 0.3 * swaps)
            load.stop.set()
            load.thread.join(10)
            quiet = []
            t = quiet_start
            for s in swap_s:
                quiet.append(load.worst_lateness_ms(t, t + s))
                t += s + 0.3
            during = [load.worst_lateness_ms(a, b) for a, b in pulls]
            failed = sum(1 for *_, ok in load.steps if not ok)
            p99 = _pct(during, 99)
            res.metrics += [
                Metric("failed inferences", failed, "inferences", target="0", met=failed == 0),
                Metric("inferences answered", len(load.steps), "inferences"),
                Metric(
                    "longest step lateness during a swap, p50",
                    _pct(during, 50),
                    "ms",
                    _pct(quiet, 50),
                    "no swap",
                ),
                Metric(
                    "longest step lateness during a swap, p99",
                    p99,
                    "ms",
                    _pct(quiet, 99),
                    "no swap",
                    "<= 50 ms",
                    p99 <= 50,
                ),
                Metric("pull that swaps, p50", _pct(swap_s, 50), "s"),
                Metric("pull that swaps, p99", _pct(swap_s, 99), "s"),
            ]
            res.notes.append(
                f"{swaps} swaps between two recognisers "
                f"({(root / 'v1' / 'model.onnx').stat().st_size / 1e6:.2f} MB ONNX each) at "
                f"{RATE_HZ:.0f} Hz; the runtime ran on {', '.join(rt.current['providers'])}"  # type: ignore[index]
            )
            rt.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res
