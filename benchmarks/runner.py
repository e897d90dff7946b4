"""Run benchmarks into one folder per run: ``results.json`` (the machine, the git commit and
every metric with its baseline, ratio, target and verdict), ``RESULTS.md`` generated from it,
and ``targets.png``. ``--render DIR`` regenerates the Markdown (and the README's table of
targets) from a results.json without running anything: the committed figures are generated,
never typed."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.isolated import run_isolated
from benchmarks.registry import (
    BENCHMARKS,
    BenchContext,
    BenchResult,
    profile_note,
    unmet_needs,
)
from capsight_edge.machine import describe_machine, machine_line

MODULES = (
    "benchmarks.bench_profile",
    "benchmarks.bench_sensors",
    "benchmarks.bench_camera",
    "benchmarks.bench_field",
    "benchmarks.bench_recorder",
    "benchmarks.bench_journal",
    "benchmarks.bench_sink",
    "benchmarks.bench_upload",
    "benchmarks.bench_wifi",
    "benchmarks.bench_abuse",
    "benchmarks.bench_prelabel",
    "benchmarks.bench_train",
    "benchmarks.bench_models",
    "benchmarks.bench_fleet_cost",
)


def _load() -> None:
    for name in MODULES:
        importlib.import_module(name)


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _met(m: dict[str, Any]) -> str:
    return "" if m.get("met") is None else ("yes" if m["met"] else "**NO**")


def _base(m: dict[str, Any]) -> str:
    if m.get("baseline") is None:
        return ""
    name = f" ({m['baseline_name']})" if m.get("baseline_name") else ""
    return f"{_fmt(m['baseline'])}{name}"


def targets(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (b["name"], m)
        for b in report["benchmarks"]
        for m in b["metrics"]
        if m.get("met") is not None
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """RESULTS.md, from results.json alone (``python -m benchmarks --render DIR``)."""
    machine = report["machine"]
    tg = targets(report)
    missed = [f"{b}: {m['name']}" for b, m in tg if not m["met"]]
    pkgs = ", ".join(f"{k} {v}" for k, v in (machine.get("packages") or {}).items() if v)
    lines = [
        "# capsight benchmarks",
        "",
        "Generated from `results.json` by `python -m benchmarks` (one run; do not edit by hand).",
        "",
        f"- Run: {report['created_utc']}"
        + (" (`--quick`: smoke figures)" if report["quick"] else ""),
        f"- Machine: {machine_line(machine)}",
        f"- Packages: {pkgs}",
        *profile_lines(report.get("profile")),
        f"- Targets: {len(tg) - len(missed)} of {len(tg)} met"
        + (f"; missed: {'; '.join(missed)}" if missed else ""),
        "",
        "![every target as a ratio to its baseline or bound](targets.png)",
        "",
    ]
    for b in report["benchmarks"]:
        lines += [
            f"## {b['name']}",
            "",
            b["description"],
            "",
            "| metric | value | unit | baseline | ratio | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in b["metrics"]:
            lines.append(
                f"| {m['name']} | {_fmt(m['value'])} | {m['unit']} | {_base(m)} | "
                f"{_fmt(m.get('ratio'))} | {m['target']} | {_met(m)} |"
            )
        lines += [""] + [f"- {n}" for n in b["notes"]] + [""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in b.get("plots", [])]
        if b.get("plots"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


README_START = (
    "<!-- benchmarks:targets:start (generated: "
    "python -m benchmarks --render benchmarks --readme README.md) -->"
)
README_END = "<!-- benchmarks:targets:end -->"


def readme_block(report: dict[str, Any]) -> str:
    """The README's table of every target of the committed run, generated, never typed."""
    tg = targets(report)
    met = sum(1 for _b, m in tg if m["met"])
    lines = [
        README_START,
        f"Last full run: {report['created_utc']} on {machine_line(report['machine'])}. "
        f"{met} of {len(tg)} targets met. Every figure of every benchmark: "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md).",
        "",
        "| benchmark | metric | value | baseline | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for b, m in tg:
        unit = f" {m['unit']}" if m["unit"] else ""
        lines.append(
            f"| {b} | {m['name']} | {_fmt(m['value'])}{unit} | {_base(m)} | {m['target']} | "
            f"{_met(m)} |"
        )
    lines.append(README_END)
    return "\n".join(lines)


def write_readme_block(readme: Path, report: dict[str, Any]) -> None:
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_block(report) + text[end:])


def plot_targets(report: dict[str, Any], path: Path) -> None:
    """Every target metric that has a baseline, as value / baseline, green met, red missed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{b}: {m['name']}"[:70], m) for b, m in targets(report) if m.get("ratio")]
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no target with a baseline in this run", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.2))
    ys = range(len(rows))
    ax.barh(
        list(ys),
        [m["ratio"] for _n, m in rows],
        color=["#2e8b57" if m["met"] else "#c0392b" for _n, m in rows],
    )
    ax.set_yticks(list(ys), [n for n, _m in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ratios = [m["ratio"] for _n, m in rows if m["ratio"] > 0]
    log_scale = bool(ratios) and max(ratios) / min(ratios) > 20
    if log_scale:
        ax.set_xscale("log")
    scale = "log scale; " if log_scale else ""
    ax.set_xlabel(f"value / baseline ({scale}green: target met, red: missed)")
    ax.set_title(f"capsight benchmarks, {report['created_utc']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    _load()
    parser = argparse.ArgumentParser(
        prog=prog, description="capsight benchmarks, each beside its baseline"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--profile",
        default="hw_profiles/sim.toml",
        metavar="FILE",
        help="the hardware profile to run on (default: hw_profiles/sim.toml): what it does not "
        "support is skipped with the reason",
    )
    parser.add_argument("--out", default="bench-out", metavar="DIR", help="the run's folder")
    parser.add_argument(
        "--render",
        metavar="DIR",
        help="run nothing: regenerate DIR/RESULTS.md and DIR/targets.png from DIR/results.json",
    )
    parser.add_argument(
        "--readme",
        metavar="FILE",
        help="with --render: also regenerate FILE's table of targets (between its markers)",
    )
    args = parser.parse_args(argv)
    if args.render:
        folder = Path(args.render)
        if not (folder / "results.json").is_file():
            parser.error(f"{folder / 'results.json'} not found")
        render(folder, Path(args.readme) if args.readme else None)
        print(f"rendered {folder / 'RESULTS.md'}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    results: list[BenchResult] = []
    # Every temporary folder of the run (sinks holding GiBs, journals, clips), in this process
    # and its children, lives under one folder that goes when the run ends; so does the folder
    # of inputs one benchmark records for a later one (``registry.record_carts``).
    scratch = tempfile.mkdtemp(prefix="capsight-benchrun-")
    ctx = BenchContext(args.quick, args.profile, str(out), shared=str(Path(scratch) / "shared"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = scratch
    try:
        for name in args.only or sorted(BENCHMARKS):
            why = unmet_needs(name, args.profile)
            if why:
                result = BenchResult(name, "not run")
                result.notes.append(f"skipped: {why}")
            else:  # a failure, even a crash of its process, loses no other benchmark's figures
                result = run_isolated(name, BENCHMARKS[name].__module__, ctx, scratch)
            results.append(result)
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)
    report = build_report(machine, results, args.quick)
    report["profile"] = {"path": args.profile, "note": profile_note(args.profile)}
    write_run(out, report)
    print((out / "RESULTS.md").read_text())
    print(f"written: {out / 'results.json'}, {out / 'RESULTS.md'}, {out / 'targets.png'}")
    failed = [f"{b}: {m['name']}" for b, m in targets(report) if not m["met"]]
    if failed:
        print("targets missed: " + "; ".join(failed))
    return 0


def profile_lines(profile: dict[str, Any] | None) -> list[str]:
    """The header line naming the run's profile (none for runs written before it was kept)."""
    if not profile:
        return []
    return [f"- Profile: `{profile['path']}`" + (f": {profile['note']}" if profile["note"] else "")]


def build_report(
    machine: dict[str, Any], results: list[BenchResult], quick: bool
) -> dict[str, Any]:
    return {
        "machine": machine,
        "quick": quick,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmarks": [r.as_dict() for r in results],
    }


def write_run(out: Path, report: dict[str, Any]) -> None:
    """One run's folder: results.json, RESULTS.md generated from it, targets.png (and the
    plots the benchmarks drew there)."""
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    render(out)


def render(folder: Path, readme: Path | None = None) -> None:
    """RESULTS.md and targets.png from ``folder/results.json``; with ``readme``, also the
    README's generated table of targets."""
    report = json.loads((folder / "results.json").read_text())
    (folder / "RESULTS.md").write_text(render_markdown(report))
    plot_targets(report, folder / "targets.png")
    if readme is not None:
        write_readme_block(readme, report)
