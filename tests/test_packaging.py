"""The distribution's shape: light imports, console scripts, package layout."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = ("av", "cv2", "torch", "ray", "onnxruntime", "numpy")


@pytest.mark.parametrize(
    "module",
    [
        "capsight_edge",
        "capsight_edge.profile",
        "capsight_edge.doctor",
        "capsight_edge.cli.main",
        "firmware_bridge",
    ],
)
def test_import_does_not_pull_heavy_libraries(module: str) -> None:
    code = (
        f"import sys, json; import {module}; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert json.loads(out) == []


def test_console_scripts_are_installed() -> None:
    bindir = __import__("pathlib").Path(sys.executable).parent
    for name in ("capsight", "capsight-sink", "capsight-train"):
        res = subprocess.run([str(bindir / name), "--version"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert name in res.stdout


def test_top_level_layout() -> None:
    for folder in (
        "capsight_edge",
        "firmware_bridge",
        "cloud_sink",
        "trainer",
        "benchmarks",
        "hw_profiles",
        "tests",
    ):
        assert (ROOT / folder).is_dir(), folder


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["./dev.sh test"]
    assert "./dev.sh test" in readme and "./dev.sh demo" in readme


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute imports; TYPE_CHECKING ones included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


SIMULATORS = ("firmware_bridge.sim", "capsight_edge.devices.sim", "capsight_edge.devices.render")


def test_only_the_device_seam_knows_the_simulators() -> None:
    """A device is real or simulated in one place: ``capsight_edge/devices/`` (and the
    simulators themselves). Shipped code elsewhere gets its devices from a factory."""
    allowed = (ROOT / "capsight_edge" / "devices", ROOT / "firmware_bridge" / "sim")
    broken = []
    for package in ("capsight_edge", "firmware_bridge", "cloud_sink", "trainer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(path.is_relative_to(a) for a in allowed):
                continue
            broken += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in _imports(path)
                if any(n == s or n.startswith(s + ".") for s in SIMULATORS)
            ]
    assert broken == []


def test_only_the_device_seam_reads_transport_kinds() -> None:
    """Whether a device is real or simulated is read in ``devices/`` alone (the profile
    package declares and validates the settings)."""
    pattern = re.compile(
        r'transport == "sim"|source == "synthetic"'
        r"|(mcu|imu)\.transport|(positioning|pos)\.nmea_transport|(camera|cam)\.source"
    )
    hits = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "capsight_edge").rglob("*.py")
        if pattern.search(p.read_text())
    ]
    outside = [
        h for h in hits if not h.startswith(("capsight_edge/devices/", "capsight_edge/profile/"))
    ]
    assert hits and outside == [], outside


def test_the_trainer_imports_only_the_dataset_manifest_of_the_sink() -> None:
    """ARCHITECTURE.md: the trainer imports the dataset-manifest module of the sink, nothing
    else of it."""
    used = {
        f"{path.relative_to(ROOT)}: {n}"
        for path in sorted((ROOT / "trainer").rglob("*.py"))
        for n in _imports(path)
        if n.split(".")[0] == "cloud_sink"
        and not (n == "cloud_sink.datasets" or n.startswith("cloud_sink.datasets."))
    }
    assert used == set()


def test_packages_keep_to_their_import_rules() -> None:
    """ARCHITECTURE.md: who must not import whom (the edge and the sink speak only over HTTP)."""
    forbidden = {
        "firmware_bridge": {"capsight_edge", "cloud_sink", "trainer"},
        "capsight_edge": {"cloud_sink", "trainer"},
        "cloud_sink": {"trainer"},
    }
    broken = []
    for package, banned in forbidden.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            broken += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in _imports(path)
                if n.split(".")[0] in banned
            ]
    assert broken == []
