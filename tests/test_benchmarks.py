"""The benchmark runner's smoke run (`--quick`) writes its reports."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    res = run_cli(
        "--quick", "--only", "profile", "--out", str(tmp_path), prog="benchmarks", timeout=300
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    (bench,) = report["benchmarks"]
    load = next(m for m in bench["metrics"] if m["name"].startswith("profile load"))
    assert load["baseline"] > 0 and load["ratio"] > 0
    assert "| profile load (median) |" in (tmp_path / "report.md").read_text()


def test_a_run_leaves_no_temporary_folders_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    res = run_cli(
        "--quick",
        "--only",
        "journal",
        "--out",
        str(tmp_path / "out"),
        prog="benchmarks",
        timeout=300,
        env={"TMPDIR": str(scratch)},
    )
    assert res.returncode == 0, res.stderr
    assert list(scratch.iterdir()) == []
