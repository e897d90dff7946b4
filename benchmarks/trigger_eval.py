"""The whole decision path in simulated time: scene frames and load-cell samples from one
scenario, through the real motion detector, barcode detector, weight pipeline and trigger engine.

No threads, no sleeping: a minute of cart life runs in seconds, deterministically, so tests can
script scenarios and benchmarks can measure latencies against the scene's ground truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.weight_eval import calibration_for
from capsight_edge.collector import Collector
from capsight_edge.devices.render import SceneRenderer
from capsight_edge.scene.catalogue import Catalogue
from capsight_edge.sensors.weight import RawSample, WeightPipeline
from capsight_edge.triggers.engine import Decision
from firmware_bridge.sim.hx711 import Hx711Array, LoadModel
from firmware_bridge.sim.scenario import Scenario


@dataclass
class Run:
    decisions: list[Decision] = field(default_factory=list)
    #: scenario seconds of the first frame in which each scanned item's barcode was readable
    first_readable_s: dict[int, float] = field(default_factory=dict)
    frames: int = 0
    cpu_s: float = 0.0
    collector: Any = None

    def fired(self, rule: str) -> list[Decision]:
        return [d for d in self.decisions if d.kind == "fire" and d.rule == rule]


def simulate(
    profile: Any,
    scenario: Scenario,
    catalogue: Catalogue,
    *,
    fps: float = 30.0,
    seed: int = 0,
    width: int = 1280,
    height: int = 720,
    rate_sps: int = 80,
    clean: bool = False,
    duration_s: float | None = None,
) -> Run:
    duration = duration_s if duration_s is not None else scenario.duration_s
    renderer = SceneRenderer(
        scenario, catalogue, width=width, height=height, seed=seed, clean=clean
    )
    collector = Collector(profile)
    run = Run(collector=collector)
    collector.add_listener(run.decisions.append)
    hx = Hx711Array(LoadModel(scenario, profile.load_cells.count), seed=seed)
    hx.rate_sps = rate_sps
    lc = profile.load_cells
    pipeline = WeightPipeline(
        calibration_for(hx),
        item_threshold_g=lc.item_threshold_g,
        stable_window_s=lc.stable_window_s,
        stable_tolerance_g=lc.stable_tolerance_g,
    )
    frame_dt, sample_dt = 1.0 / fps, 1.0 / rate_sps
    next_frame, next_sample = 0.0, 0.0
    items = scenario.items
    while min(next_frame, next_sample) < duration:
        if next_sample <= next_frame:
            t_ns = int(next_sample * 1e9)
            for weight_event in pipeline.push(RawSample(t_ns, hx.sample(next_sample)))[1]:
                collector._on_weight_event(weight_event)
            # as a cart's sensor hub does: the load cells' unsettled state is a signal too
            collector.engine.signal("unstable", t_ns, pipeline.detector.unstable)
            next_sample += sample_dt
            continue
        image, truth = renderer.render(next_frame)
        if truth.barcode_readable and truth.moving_sku:
            for i, ev in enumerate(items):
                if ev.sku == truth.moving_sku and ev.t_s - ev.scan_s <= next_frame < ev.t_s:
                    run.first_readable_s.setdefault(i, next_frame)
        start = time.process_time()
        collector.process(image, int(next_frame * 1e9))
        run.cpu_s += time.process_time() - start
        run.frames += 1
        next_frame += frame_dt
    return run
