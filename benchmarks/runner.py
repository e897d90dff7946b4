"""Run benchmarks, print the table, write JSON + Markdown into one folder."""

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

from benchmarks.machine import describe_machine
from benchmarks.registry import BENCHMARKS, BenchContext, BenchResult, Metric

MODULES = (
    "benchmarks.bench_profile",
    "benchmarks.bench_sensors",
    "benchmarks.bench_camera",
    "benchmarks.bench_field",
    "benchmarks.bench_recorder",
    "benchmarks.bench_journal",
    "benchmarks.bench_sink",
    "benchmarks.bench_upload",
    "benchmarks.bench_abuse",
    "benchmarks.bench_prelabel",
    "benchmarks.bench_train",
    "benchmarks.bench_models",
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


def to_markdown(machine: dict[str, Any], results: list[BenchResult]) -> str:
    lines = [
        "# capsight benchmarks",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu'] or 'none'}, Python {machine['python']}",
        "",
    ]
    for r in results:
        lines += [
            f"## {r.name}",
            "",
            r.description,
            "",
            "| metric | value | unit | baseline | ratio | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in r.metrics:
            base = f"{_fmt(m.baseline)} ({m.baseline_name})" if m.baseline is not None else ""
            met = "" if m.met is None else ("yes" if m.met else "NO")
            lines.append(
                f"| {m.name} | {_fmt(m.value)} | {m.unit} | {base} | "
                f"{_fmt(m.ratio)} | {m.target} | {met} |"
            )
        lines += [""] + [f"- {n}" for n in r.notes] + [""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in r.plots]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    _load()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="capsight benchmarks, each beside its baseline"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--profile", default="hw_profiles/sim.toml", metavar="FILE")
    parser.add_argument("--out", default="bench-out", metavar="DIR")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=args.quick, profile_path=args.profile, out_dir=str(out))
    machine = describe_machine()
    results: list[BenchResult] = []
    # Every temporary folder of the run (sinks holding GiBs, journals, clips), in this process
    # and its children, lives under one folder that goes when the run ends.
    scratch = tempfile.mkdtemp(prefix="capsight-benchrun-")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = scratch
    try:
        for name in args.only or sorted(BENCHMARKS):
            start = time.perf_counter()
            try:
                result = BENCHMARKS[name](ctx)
            except Exception as exc:  # one broken benchmark does not lose the others' figures
                import traceback

                traceback.print_exc()
                result = BenchResult(name, "FAILED")
                result.metrics.append(Metric("benchmark ran", 0, "", target="ran", met=False))
                result.notes.append(f"failed: {type(exc).__name__}: {exc}"[:500])
            result.notes.append(
                f"ran in {time.perf_counter() - start:.1f} s" + (" (--quick)" if args.quick else "")
            )
            results.append(result)
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "machine": machine,
        "quick": args.quick,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmarks": [
            {
                "name": r.name,
                "description": r.description,
                "notes": r.notes,
                "plots": r.plots,
                "metrics": [m.as_dict() for m in r.metrics],
            }
            for r in results
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    md = to_markdown(machine, results)
    (out / "report.md").write_text(md)
    print(md)
    print(f"written: {out / 'report.json'}, {out / 'report.md'}")
    failed = [m.name for r in results for m in r.metrics if m.met is False]
    if failed:
        print("targets missed: " + ", ".join(failed))
    return 0
