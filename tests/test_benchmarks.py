"""The benchmark runner's smoke run (`--quick`) writes its reports."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, run_cli


def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    res = run_cli(
        "--quick", "--only", "profile", "--out", str(tmp_path), prog="benchmarks", timeout=300
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["os"]
    assert len(machine["git"]["commit"]) == 40 and isinstance(machine["git"]["dirty"], bool)
    assert machine["packages"]["numpy"] and "onnxruntime" in machine["packages"]
    (bench,) = report["benchmarks"]
    load = next(m for m in bench["metrics"] if m["name"].startswith("profile load"))
    assert load["baseline"] > 0 and load["ratio"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| profile load (median) |" in md and machine["git"]["commit"][:12] in md
    assert (tmp_path / "targets.png").read_bytes()[:4] == b"\x89PNG"
    # RESULTS.md is generated from results.json alone: rendering again gives the same file
    (tmp_path / "RESULTS.md").unlink()
    res = run_cli("--render", str(tmp_path), prog="benchmarks", timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "RESULTS.md").read_text() == md


def test_the_committed_results_and_the_readme_table_are_generated_from_one_run() -> None:
    from benchmarks.runner import readme_block, render_markdown

    folder = ROOT / "benchmarks"
    report = json.loads((folder / "results.json").read_text())
    assert not report["quick"] and report["machine"]["git"]["commit"]
    assert (folder / "RESULTS.md").read_text() == render_markdown(report)
    assert readme_block(report) in (ROOT / "README.md").read_text()


def test_a_run_leaves_no_temporary_folders_behind(tmp_path: Path) -> None:
    """Also the benchmark that needs network namespaces: it runs (as root with iproute2) or
    says why not, and leaves no namespace or veth behind either way."""
    import subprocess

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    res = run_cli(
        "--quick", "--only", "journal", "--only", "upload_wifi", "--out", str(tmp_path / "out"),
        prog="benchmarks", timeout=300, env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert list(scratch.iterdir()) == []
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    _journal, wifi = sorted(report["benchmarks"], key=lambda b: b["name"])
    assert (tmp_path / "out" / "journal_batch.png").read_bytes()[:4] == b"\x89PNG"
    from benchmarks.bench_wifi import why_not

    if why_not():
        assert wifi["notes"][0] == f"skipped: {why_not()}"
    else:
        names = {m["name"]: m for m in wifi["metrics"]}
        assert names["bundles delivered"]["met"], wifi
        assert names["goodput while the link is up, as a share of the shaped rate"]["value"] > 0
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert "capsight-wifi" not in namespaces.stdout and "csw" not in links
