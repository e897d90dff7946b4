"""What people read: sizes and rates in units, a live upload bar that moves before a chunk is
confirmed, `trigger test` that talks at once and says why a rule was suppressed, and one short
line when the encoder falls back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from capsight_edge.cli.common import human_bytes, human_rate, human_seconds
from capsight_edge.uploader.progress import BundleProgress
from tests.conftest import ROOT, SIM


def test_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 2**30) == "5.0 GiB"
    assert human_rate(8_400_000) == "8.4 Mbit/s" and human_rate(950) == "950 bit/s"
    assert human_seconds(75) == "1m15s" and human_seconds(3700) == "1h01m"


def test_progress_moves_while_a_chunk_is_on_its_way() -> None:
    p = BundleProgress("b", 1, total=8 << 20)
    sent = [0]
    p.sending = sent  # what the pacer counts for the request in flight
    sent[0] = 1 << 20
    row = p.as_dict()
    assert row["bytes_confirmed"] == 0 and row["bytes_sent"] == 1 << 20
    p.update(4 << 20)  # the sink confirmed the chunk
    assert p.as_dict()["bytes_sent"] == 4 << 20


def test_trigger_test_talks_at_once_and_an_encoder_fallback_is_one_short_line(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capsight_edge.cli.main",
            "trigger",
            "test",
            "--duration",
            "4",
            "--profile",
            str(SIM),
            "--data",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("starting the camera and sensors")  # before anything is opened
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "suppressed" in out  # the summary counts them; each one is printed with its reason
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "capsight_edge.cli.main",
            "run",
            "--duration",
            "2",
            "--profile",
            str(SIM),
            "--data",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    fallback = [x for x in run.stderr.splitlines() if "not usable here" in x]
    assert len(fallback) <= 1 and "avcodec_open2" not in run.stderr
