"""The weight pipeline on plain lists and on the simulator's realistic load cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.weight_eval import calibration_for, score, simulate_samples
from capsight_edge.errors import CalibrationError
from capsight_edge.sensors.calibration import Calibration
from capsight_edge.sensors.weight import (
    ItemEventDetector,
    RawSample,
    SpikeFilter,
    StabilityWindow,
    WeightPipeline,
)
from firmware_bridge.sim.scenario import generate


def test_spike_filter_drops_rails_and_single_spikes() -> None:
    f = SpikeFilter(1, n=5)
    values = [100, 101, 0x7FFFFF, 99, 0, 100, -0x800000, 102, 0x3FFFFF, 100]
    out = [f.push((v,)) for v in values]
    assert f.rails == 2
    assert all(o is None or 95 <= o[0] <= 105 for o in out[3:])


def test_stability_window() -> None:
    w = StabilityWindow(0.3, 2.0)
    t = 0
    for g in [0.0, 0.5, -0.5] * 20:
        stable, mean, _ = w.push(t, g)
        t += 12_500_000
    assert stable and abs(mean) < 0.5
    stable, _, std = w.push(t, 50.0)
    assert not stable and std > 2.0


def test_detector_on_plain_list() -> None:
    det = ItemEventDetector(item_threshold_g=15)
    seq = (
        [(0.0, True)] * 3
        + [(80.0, False)] * 3
        + [(200.0, True)]
        + [(150.0, False)]
        + [(205.0, True)]
        + [(120.0, False)]
        + [(5.0, True)]
    )
    kinds = []
    for i, (g, stable) in enumerate(seq):
        kinds += [(e.kind, round(e.delta_g)) for e in det.push(i, g, stable, g)]
    assert ("item_added", 200) in kinds
    assert ("item_removed", -195) in kinds  # from 205 g (a bump nudged it) down to 5 g
    ends = [k for k in kinds if k[0] == "unstable_end"]
    assert len(ends) == 3
    assert [k for k in kinds if k[0].startswith("item")] == [
        ("item_added", 200),
        ("item_removed", -195),
    ]


def test_small_changes_follow_drift_without_events() -> None:
    det = ItemEventDetector(item_threshold_g=15)
    events = []
    for i in range(2000):
        g = i * 0.01  # 20 g of slow drift
        events += det.push(i, g, True, g)
    assert events == []


@pytest.mark.parametrize("seed", [11, 12])
def test_simulated_shopping_all_events_found(seed: int) -> None:
    sc = generate("shopping", 240, seed=seed)
    samples, hx = simulate_samples(sc, seed=seed)
    cal = calibration_for(hx)
    events = list(WeightPipeline(cal, item_threshold_g=15).run(samples))
    s = score(sc, events)
    assert s.truth_events >= 20
    assert s.detected == s.truth_events, s.missed
    assert s.false_events == 0
    assert 0 <= s.median_latency_s <= 0.6


def test_bumps_alone_give_no_item_events() -> None:
    sc = generate("bumpy", 300, seed=5, bump_every_s=5)
    samples, hx = simulate_samples(sc, seed=5)
    events = list(WeightPipeline(calibration_for(hx), item_threshold_g=15).run(samples))
    assert [e for e in events if e.kind.startswith("item")] == []
    bumps = [e for e in events if e.kind == "unstable_end" and e.bump]
    assert len(bumps) >= len(sc.bumps) * 0.8


def test_calibration_roundtrip_and_scaling(tmp_path: Path) -> None:
    cal = Calibration.default([10.0, 10.0])
    cal.tare([1000, 2000])
    cal.scale_to_known([1000 + 5000, 2000 + 5500], known_g=1000)
    assert cal.grams([1000 + 5000, 2000 + 5500]) == pytest.approx(1000)
    cal.save(tmp_path)
    again = Calibration.load(tmp_path, [10.0, 10.0])
    assert again.zero_counts == cal.zero_counts and again.counts_per_gram == cal.counts_per_gram
    assert [h["action"] for h in again.history] == ["tare", "scale"]
    assert not list(tmp_path.glob(".calibration-*"))  # no temporary left behind


def test_calibration_errors(tmp_path: Path) -> None:
    cal = Calibration.default([10.0, 10.0])
    with pytest.raises(CalibrationError, match="reads"):
        cal.scale_to_known([0, 0], known_g=500)
    with pytest.raises(CalibrationError, match="cell 5"):
        cal.scale_to_known([0, 0], known_g=500, cell=5)
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        Calibration.load(tmp_path, [10.0, 10.0])
    (tmp_path / "calibration.json").write_text(
        json.dumps({"zero_counts": [0, 0, 0], "counts_per_gram": [1, 1, 1]})
    )
    with pytest.raises(CalibrationError, match="3 cells"):
        Calibration.load(tmp_path, [10.0, 10.0])


def test_pipeline_waits_for_every_channel() -> None:
    p = WeightPipeline(Calibration.default([10.0, 10.0]))
    reading, _ = p.push(RawSample(0, (0x7FFFFF, 100)))
    assert reading is None
    reading, _ = p.push(RawSample(1, (100, 100)))
    assert reading is not None and reading.grams == pytest.approx(20.0)
