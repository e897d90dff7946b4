"""The release gate: a candidate against the current champion on fixed test sets.

Both models run as what a cart would run (the ONNX file, fed through its own card) on the test
split of each test set. Figures: accuracy (the SKU, or "no product", exactly right), the mean IoU
of the boxes of products named rightly, and both per slice: store, SKU, lighting, blur, glare,
occlusion, crumpled. Lighting comes from the dataset when it knows it (rendered sets), else it is
measured from the frame (mean luma below 85: dim, above 150: bright); the other conditions
only where the dataset records them (fleet frames do not: pre-labelling never reads the
simulator's truth).

Released only if the candidate beats the champion overall by ``margin`` and no slice with at
least ``min_slice_items`` items regresses by more than ``tolerance`` beyond what chance explains
(:func:`p_by_chance` under ``alpha``: the models are judged on the same items); a first model
(no champion) must reach fixed minimums instead. The decision, its reasons and every figure go
to ``eval.json``, ``eval.md`` and two plots (per-slice accuracy, confusion matrix).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_sink.datasets import box_iou
from trainer.data import Dataset

SLICES = ("store", "sku", "lighting", "blur", "glare", "occlusion", "crumpled")


@dataclass
class GateConfig:
    margin: float = 0.01  # the candidate must beat the champion's accuracy by this much
    tolerance: float = 0.03  # no slice may lose more accuracy than this ...
    #: ... unless chance explains the loss at least this often: the one-sided exact McNemar
    #: test on the slice's items (the two models judged on the same ones). In a 24-item slice
    #: one item is 4.2 %: without the test, any one item lost anywhere rejected.
    alpha: float = 0.05
    min_slice_items: int = 20  # slices smaller than this are shown, not judged
    min_accuracy: float = 0.6  # a first model (no champion) must reach these
    min_box_iou: float = 0.5


@dataclass
class Scored:
    """One model's answers on the test items."""

    path: str
    sha256: str
    version: str
    precision: str
    predicted: list[str]
    correct: list[bool]
    iou: list[float | None]  # for items whose product was named rightly and has a box

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def box_iou(self) -> float:
        vals = [v for v in self.iou if v is not None]
        return sum(vals) / len(vals) if vals else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "version": self.version,
            "precision": self.precision,
            "items": len(self.correct),
            "accuracy": round(self.accuracy, 4),
            "box_iou": round(self.box_iou, 4),
        }


@dataclass
class TestItems:
    sets: list[dict[str, Any]] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    boxes: list[list[float] | None] = field(default_factory=list)  # fractions of the frame
    slices: list[dict[str, str]] = field(default_factory=list)
    images: Any = None


def _lighting(img: Any) -> str:
    import cv2

    luma = float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).mean())
    return "dim" if luma < 85 else "bright" if luma > 150 else "normal"


def load_tests(datasets: list[Dataset]) -> TestItems:
    """The test split of every dataset, frames decoded (BGR, their own size)."""
    import cv2

    out = TestItems(images=[])
    for ds in datasets:
        items = ds.split("test")
        out.sets.append(
            {
                "name": ds.manifest.name,
                "version": ds.manifest.version,
                "sha256": ds.digest(),
                "items": len(items),
            }
        )
        for item in items:
            img = cv2.imread(str(ds.root / item.frame), cv2.IMREAD_COLOR)
            out.images.append(img)
            out.truth.append(item.label.sku)
            box = item.label.box
            out.boxes.append(
                [
                    box[0] / item.width,
                    box[1] / item.height,
                    box[2] / item.width,
                    box[3] / item.height,
                ]
                if item.label.sku and box
                else None
            )
            s = {"store": item.store_id, "sku": item.label.sku or "none"}
            s |= {k: v for k, v in item.conditions.items() if k in SLICES}
            s.setdefault("lighting", _lighting(img))
            out.slices.append(s)
    return out


def score(model: Path, tests: TestItems) -> Scored:
    from capsight_edge.runtime.card import read_card
    from trainer.export import run_onnx

    card = read_card(model)
    scores, boxes = run_onnx(model, card, tests.images)
    predicted = [card.labels[int(k)] for k in scores.argmax(1)] if len(scores) else []
    correct = [p == t for p, t in zip(predicted, tests.truth, strict=True)]
    iou: list[float | None] = []
    for ok, truth_box, box in zip(correct, tests.boxes, boxes, strict=True):
        iou.append(box_iou([float(v) for v in box], truth_box) if ok and truth_box else None)
    return Scored(
        path=str(model),
        sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
        version=f"{card.name}:{card.version}",
        precision=card.precision,
        predicted=predicted,
        correct=correct,
        iou=iou,
    )


def per_slice(tests: TestItems, scored: Scored) -> dict[tuple[str, str], tuple[int, float]]:
    acc: dict[tuple[str, str], list[int]] = {}
    for s, ok in zip(tests.slices, scored.correct, strict=True):
        for key, value in s.items():
            n = acc.setdefault((key, value), [0, 0])
            n[0] += 1
            n[1] += int(ok)
    return {k: (n, r / n) for k, (n, r) in acc.items()}


def p_by_chance(lost: int, gained: int) -> float:
    """The chance of losing at least ``lost`` of the ``lost + gained`` items on which two
    equally good models disagree (one-sided exact McNemar test: binomial, p = 1/2)."""
    n = lost + gained
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n


def disagreements(
    tests: TestItems, cand: Scored, champ: Scored
) -> dict[tuple[str, str], tuple[int, int]]:
    """Per slice: the items the champion got right and the candidate wrong (lost), and the
    other way round (gained)."""
    out: dict[tuple[str, str], list[int]] = {}
    for s, a, b in zip(tests.slices, cand.correct, champ.correct, strict=True):
        for key, value in s.items():
            n = out.setdefault((key, value), [0, 0])
            n[0] += int(b and not a)
            n[1] += int(a and not b)
    return {k: (lost, gained) for k, (lost, gained) in out.items()}


def gate(
    candidate: Path,
    champion: Path | None,
    tests: TestItems,
    config: GateConfig,
) -> dict[str, Any]:
    """The gate's verdict and every figure behind it (what ``eval.json`` holds)."""
    if not tests.truth:
        raise ValueError("the test sets hold no test items")
    cand = score(candidate, tests)
    champ = score(champion, tests) if champion else None
    cand_slices = per_slice(tests, cand)
    champ_slices = per_slice(tests, champ) if champ else {}
    pairs = disagreements(tests, cand, champ) if champ else {}
    reasons: list[str] = []
    rows = []
    for key in sorted(cand_slices, key=lambda k: (SLICES.index(k[0]), k[1])):
        n, a = cand_slices[key]
        b = champ_slices[key][1] if champ else None
        judged = n >= config.min_slice_items
        row = {
            "slice": key[0],
            "value": key[1],
            "items": n,
            "candidate": round(a, 4),
            "champion": None if b is None else round(b, 4),
            "delta": None if b is None else round(a - b, 4),
            "judged": judged,
        }
        lost, gained = pairs.get(key, (0, 0))
        chance = p_by_chance(lost, gained)
        if champ:
            row |= {"lost": lost, "gained": gained, "p": round(chance, 4)}
        rows.append(row)
        worse = champ and judged and b is not None and a - b < -config.tolerance
        if worse and (chance < config.alpha or config.alpha >= 1):
            reasons.append(
                f"{key[0]}={key[1]} regresses: {a:.1%} vs the champion's {b:.1%} "
                f"(tolerance {config.tolerance:.1%}, {n} items; {lost} lost, {gained} "
                f"gained, chance {chance:.3f})"
            )
    if champ:
        if cand.accuracy < champ.accuracy + config.margin:
            reasons.append(
                f"accuracy {cand.accuracy:.1%} does not beat the champion's {champ.accuracy:.1%} "
                f"by the margin of {config.margin:.1%}"
            )
    else:
        if cand.accuracy < config.min_accuracy:
            reasons.append(
                f"accuracy {cand.accuracy:.1%} is below the first model's minimum "
                f"{config.min_accuracy:.1%}"
            )
        if cand.box_iou < config.min_box_iou:
            reasons.append(
                f"box IoU {cand.box_iou:.2f} is below the first model's minimum "
                f"{config.min_box_iou:.2f}"
            )
    return {
        "type": "eval",
        "decision": "reject" if reasons else "release",
        "reasons": reasons,
        "candidate": cand.summary(),
        "champion": champ.summary() if champ else None,
        "config": config.__dict__,
        "test_sets": tests.sets,
        "slices": rows,
        "confusion": _confusion(tests.truth, cand.predicted),
    }


def _confusion(truth: list[str], predicted: list[str]) -> dict[str, Any]:
    labels = sorted(set(truth) | set(predicted), key=lambda s: (s != "", s))
    index = {k: i for i, k in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t]][index[p]] += 1
    return {"labels": [k or "none" for k in labels], "matrix": matrix}


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``eval.json``, ``eval.md``, ``eval-slices.png`` and ``eval-confusion.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    plots = _plots(report, out)
    cand, champ = report["candidate"], report["champion"]
    lines = [
        f"# Release gate: {report['decision'].upper()}",
        "",
        *(f"- {r}" for r in report["reasons"]),
        *([] if report["reasons"] else ["- every check passed"]),
        "",
        "| model | version | precision | items | accuracy | box IoU |",
        "|---|---|---|---:|---:|---:|",
    ]
    for role, m in (("candidate", cand), ("champion", champ)):
        if m:
            lines.append(
                f"| {role} | {m['version']} | {m['precision']} | {m['items']} | "
                f"{m['accuracy']:.1%} | {m['box_iou']:.3f} |"
            )
    lines += [
        "",
        "Test sets: "
        + ", ".join(
            f"{t['name']} v{t['version']} ({t['items']} items)" for t in report["test_sets"]
        ),
        "",
        "| slice | value | items | candidate | champion | change | lost / gained | chance "
        "| judged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["slices"]:
        if r["slice"] == "sku":
            continue  # per SKU: in eval.json and the confusion matrix
        champ_txt = "" if r["champion"] is None else f"{r['champion']:.1%}"
        delta = "" if r["delta"] is None else f"{r['delta']:+.1%}"
        pair = f"{r['lost']} / {r['gained']}" if "lost" in r else ""
        chance = f"{r['p']:.3f}" if "p" in r else ""
        lines.append(
            f"| {r['slice']} | {r['value']} | {r['items']} | {r['candidate']:.1%} | "
            f"{champ_txt} | {delta} | {pair} | {chance} | {'yes' if r['judged'] else 'no'} |"
        )
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    (out / "eval.md").write_text("\n".join(lines))
    return [out / "eval.json", out / "eval.md", *plots]


def _plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in report["slices"] if r["slice"] != "sku"]
    names = [f"{r['slice']}={r['value']}" for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh(y - 0.2, [r["candidate"] for r in rows], height=0.4, label="candidate")
    if report["champion"]:
        ax.barh(y + 0.2, [r["champion"] or 0 for r in rows], height=0.4, label="champion")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy")
    ax.set_title(f"Accuracy per slice (gate: {report['decision']})")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    slices = out / "eval-slices.png"
    fig.savefig(slices, dpi=110)
    plt.close(fig)
    conf = report["confusion"]
    m = np.array(conf["matrix"], float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(conf["labels"]))
    if len(ticks) <= 60:
        ax.set_xticks(ticks, conf["labels"], rotation=90, fontsize=5)
        ax.set_yticks(ticks, conf["labels"], fontsize=5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Candidate: confusion (rows sum to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    confusion = out / "eval-confusion.png"
    fig.savefig(confusion, dpi=110)
    plt.close(fig)
    return [slices, confusion]
