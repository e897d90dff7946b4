"""`capsight run` in the foreground, stopped by SIGTERM in the middle of a clip."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from capsight_edge.bundle.manifest import verify_bundle
from capsight_edge.collector import send_manual_trigger
from capsight_edge.sensors.sensorlog import read_messages
from tests.conftest import json_records, start_run


def test_sigterm_finishes_and_seals_the_open_clip(tmp_path: Path) -> None:
    proc = start_run(tmp_path, "--seed", "3")
    assert proc.stdout is not None
    (started,) = json_records(proc.stdout.readline())  # everything runs, the recorder included
    assert started["type"] == "run_started"
    assert started["profile"] == "sim" and started["encoder"] == "libx264"
    send_manual_trigger(tmp_path, "test")
    time.sleep(1.5)  # inside the manual clip (5 s pre-roll, 5 s post-roll)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    rows = json_records(out)
    summary = rows[-1]
    assert summary["type"] == "run_summary"
    assert summary["sealed"] >= 1 and summary["failed"] == []
    sealed = [r for r in rows if r["type"] == "bundle_sealed"]
    assert any(r["rule"] == "manual" for r in sealed)
    bundles = [p for p in (tmp_path / "bundles").iterdir() if p.name != ".partial"]
    assert len(bundles) == summary["sealed"]
    for b in bundles:
        verify_bundle(b)
        # A synthetic camera's truth travels in the bundle for the evaluator and the reviewer.
        assert "/sim/truth" in {t for t, _, _ in read_messages(b / "sensors.mcap")}
    assert list((tmp_path / "bundles" / ".partial").iterdir()) == []  # nothing half-written
