"""The distribution's shape: light imports, console scripts, package layout."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_packages_keep_to_their_import_rules() -> None:
    """ARCHITECTURE.md: who must not import whom (the edge and the sink speak only over HTTP)."""
    import ast

    forbidden = {
        "firmware_bridge": {"capsight_edge", "cloud_sink", "trainer"},
        "capsight_edge": {"cloud_sink", "trainer"},
        "cloud_sink": {"trainer"},
    }
    broken = []
    for package, banned in forbidden.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                broken += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in banned
                ]
    assert broken == []
