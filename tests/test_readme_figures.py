"""The README quotes no measured figure that the committed benchmark run does not hold: every
percentage, ratio and rate in its prose (and every duration or size given with decimals) is
found in `benchmarks/results.json` or in a committed GPU-host run
(`benchmarks/device/*/results.json`): a metric's value, baseline or their ratio, or a number in
a benchmark's notes. In "The flywheel demo" section it may also be in a committed demo run
(`docs/demo/**/demo-summary.json`, each one run's output: tests/test_demo.py): any number it
holds, a fraction also as a percentage. Or it is a specification the README states (a setting,
a threshold a test asserts, a cited constant), listed below with where it comes from."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

FIGURE = re.compile(
    r"(?<![\w.])(\d[\d,]*(?:\.\d+)?) ?(%|x(?![\w])(?! ?\d)|×|frames/s|MiB/s|MB/s|inferences/s)"
    r"|(?<![\w.])(\d+\.\d+) ?(s|ms|MiB|MB|GiB|points)(?![\w])"
)

#: Figures in the README that are not measurements: each phrase must occur as written.
SPECIFIED = {
    "under 2 % changed pixels": "prelabel's empty-frame threshold (cloud_sink/prelabel.py)",
    "at least 90 % of them": "asserted by tests/test_prelabel.py",
    "1.6 s to verify": "the simulated reviewer's cited constants (capsight_edge/demo/reviewer.py)",
    "7.0 s to draw a box": "idem",
    "34.5 s for the traditional drag": "the cited paper's figure",
    "we charge 7.0 s": "idem",
    "3.0 s to pick a class": "idem",
    "(the acceptance target is 70 %)": "the issue's target",
    "train 70%, val 15%, test 15%": "the split rule (trainer/render.py)",
    "brightness 0.65..1.35x": "augmentation setting (trainer/train.py)",
    "frames dropped under 1 %": "asserted by tests/test_demo.py",
    "(10 %)": "declared_weight_tolerance_pct's default",
    "at least 5 %": "the uploader's compression threshold",
    "0.1 s deep": "the token bucket's depth",
    "about 1 % of a core doing nothing": "asserted by the link's test",
    "(inference p99 <= 1.02x)": "the issue's target for a hardware encoder",
    "(target 1.10x;": "the issue's target for the p99 while recording",
    "1.5 s before to 0.3 s after": "prelabel's search window",
    "a 0.3 s stability window": "the weight pipeline's default",
    "in the last 1.5 s": "the model_disagrees rule's window",
    "or 1.5 s are spent": "the barcode scan budget's default",
    "within 1.5 s": "the barcode confirmation window",
    "2x upscale": "a barcode preparation step",
    "a 2x downscale": "idem",
    "64x": "the zstd expansion limit",
}


def known_numbers() -> list[float]:
    runs = [ROOT / "benchmarks" / "results.json"]
    runs += sorted((ROOT / "benchmarks" / "device").glob("*/results.json"))
    out: list[float] = []
    for bench in (b for run in runs for b in json.loads(run.read_text())["benchmarks"]):
        for m in bench["metrics"]:
            v, b = m.get("value"), m.get("baseline")
            for x in (v, b):
                if isinstance(x, (int, float)):
                    out += [float(x), float(x) * 100]
            if isinstance(v, (int, float)) and isinstance(b, (int, float)) and b:
                out.append(v / b)
        for note in bench.get("notes", []):
            out += [float(x) for x in re.findall(r"\d+(?:\.\d+)?", note.replace(",", ""))]
    return out


def demo_runs() -> list[float]:
    """The numbers of the committed demo runs (for the demo's section of the README)."""
    out: list[float] = []
    for summary in sorted((ROOT / "docs" / "demo").glob("**/demo-summary.json")):
        out += demo_numbers(json.loads(summary.read_text()))
    return out


def demo_numbers(node: object) -> list[float]:
    """Every number in a demo summary; a fraction (an accuracy, a share) also as a percentage."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in demo_numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in demo_numbers(v)]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return []
    return [float(node), float(node) * 100] if abs(node) <= 1 else [float(node)]


def prose() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- benchmarks:targets:start")
    end = text.index("<!-- benchmarks:targets:end -->")
    text = text[:start] + text[end:]
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_every_measured_figure_in_the_readme_is_in_the_committed_run() -> None:
    text = prose()
    covered: list[tuple[int, int]] = []
    for phrase in SPECIFIED:
        spans = [(m.start(), m.end()) for m in re.finditer(re.escape(phrase), text)]
        assert spans, f"SPECIFIED names {phrase!r}, which the README no longer says"
        covered += spans
    known = known_numbers()
    in_demo = known + demo_runs()
    demo_from = text.index("\n## The flywheel demo\n")
    demo_to = text.index("\n## ", demo_from + 1)
    unknown = []
    for m in FIGURE.finditer(text):
        if any(a <= m.start() and m.end() <= b for a, b in covered):
            continue
        quoted = (m.group(1) or m.group(3)).replace(",", "")
        decimals = len(quoted.split(".")[1]) if "." in quoted else 0
        figure, half = float(quoted), 0.5 * 10**-decimals + 1e-9  # as quoted, rounded half up
        pool = in_demo if demo_from <= m.start() < demo_to else known
        if not any(abs(k - figure) <= half for k in pool):
            near = text[max(0, m.start() - 60) : m.end() + 20]
            unknown.append(f"{m.group(0)!r}: {near!r}")
    assert not unknown, "\n".join(unknown)
