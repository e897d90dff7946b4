"""Installed from a wheel, as the README's Install section says (not editable, outside the
checkout): `capsight doctor` passes (the probe model and the profiles are package data) and a
short `capsight run` seals a capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_wheel_installs_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("capsight-*.whl")
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin/pip"),
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            f"{wheel}[edge]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "elsewhere"  # not the checkout: nothing can come from it
    work.mkdir()
    capsight = str(venv / "bin/capsight")
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import capsight_edge; print(capsight_edge.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout
    doctor = subprocess.run(
        [capsight, "doctor", "--json", "--data", str(work / "data")],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    records = [json.loads(x) for x in doctor.stdout.splitlines()]
    checks = {r["name"]: r for r in records if r["type"] == "check"}
    assert checks["onnxruntime"]["status"] == "pass", checks["onnxruntime"]
    assert doctor.returncode == 0 and records[-1]["ok"] is True, doctor.stdout
    run = subprocess.Popen(
        [
            capsight,
            "--log-level",
            "ERROR",
            "run",
            "--json",
            "--data",
            str(work / "data"),
            "--duration",
            "10",
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    started = json.loads(run.stdout.readline())
    assert started["type"] == "run_started" and started["encoder"] == "libx264"
    # The collector's control socket is open before the run reports started.
    subprocess.run(
        [capsight, "trigger", "manual", "--data", str(work / "data")],
        cwd=work,
        check=True,
        timeout=60,
    )
    out, err = run.communicate(timeout=120)
    summary = json.loads(out.splitlines()[-1])
    assert run.returncode == 0, err
    assert summary["type"] == "run_summary" and summary["sealed"] >= 1
