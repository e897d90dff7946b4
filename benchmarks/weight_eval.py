"""Score a weight-event detector against a scenario's ground truth, in simulated time.

The HX711 model is evaluated at the sample instants directly (no pty, no sleeping), so ten
simulated minutes take about a second; the detector code is the same one the cart runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from capsight_edge.sensors.calibration import Calibration
from capsight_edge.sensors.weight import RawSample, WeightEvent, WeightPipeline
from firmware_bridge.sim.hx711 import Hx711Array, LoadModel
from firmware_bridge.sim.scenario import Scenario


@dataclass
class Score:
    truth_events: int
    detected: int
    false_events: int
    latencies_s: list[float] = field(default_factory=list)
    from_release_s: list[float] = field(default_factory=list)
    missed: list[float] = field(default_factory=list)

    @property
    def detection_rate(self) -> float:
        return self.detected / self.truth_events if self.truth_events else 1.0

    @property
    def median_latency_s(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else float("nan")


def simulate_samples(
    scenario: Scenario,
    *,
    rate_sps: int = 80,
    seed: int = 0,
    spike_rate: float = 0.01,
    n_cells: int = 4,
) -> tuple[list[RawSample], Hx711Array]:
    hx = Hx711Array(LoadModel(scenario, n_cells), seed=seed, spike_rate=spike_rate)
    hx.rate_sps = rate_sps
    n = int(scenario.duration_s * rate_sps)
    samples = [RawSample(int(i * 1e9 / rate_sps), hx.sample(i / rate_sps)) for i in range(n)]
    return samples, hx


def calibration_for(hx: Hx711Array) -> Calibration:
    """What a technician's tare and calibration would store for this simulated platform."""
    return Calibration([c.zero_counts for c in hx.cells], [c.counts_per_gram for c in hx.cells])


def score(scenario: Scenario, events: list[WeightEvent], threshold_g: float = 15.0) -> Score:
    truth = [e for e in scenario.items if abs(e.grams) >= threshold_g]
    items = [e for e in events if e.kind in ("item_added", "item_removed")]
    used: set[int] = set()
    result = Score(len(truth), 0, 0)
    for ev in truth:
        match = None
        for i, det in enumerate(items):
            if i in used or (det.delta_g > 0) != (ev.grams > 0):
                continue
            t = det.t_ns / 1e9
            if ev.t_s <= t <= ev.settle_s + 3.0 and abs(det.delta_g - ev.grams) <= max(
                10.0, 0.1 * abs(ev.grams)
            ):
                match = i
                break
        if match is None:
            result.missed.append(ev.t_s)
            continue
        used.add(match)
        result.detected += 1
        result.latencies_s.append(items[match].t_ns / 1e9 - ev.settle_s)
        result.from_release_s.append(items[match].t_ns / 1e9 - ev.release_s)
    result.false_events = len(items) - len(used)
    return result


def run_detector(samples: list[RawSample], make: Callable[[], WeightPipeline]) -> list[WeightEvent]:
    pipeline = make()
    return list(pipeline.run(samples))
