"""The simulated reviewer (test and demo code only): decides from the simulation's answer sheet
(``/sim/truth``) and spends time by a stated model.

Decision, for the truth sample nearest the item's moment:

- the pre-label names the product in view (or "none" when nothing is held) and its box overlaps
  the true box by IoU >= 0.7: **accept**;
- the class is right, the box is not: **correct** the box (extreme clicking);
- the class is wrong: **correct** the class (type-ahead) and, if needed, the box;
- the frame holds no product and the pre-label says there is one: **correct** to "none".

Time model (seconds), from published annotation studies, and the one figure we assume:

- verifying a proposed label (a yes/no look): 1.6 s, the mean verification time Papadopoulos
  et al. report in "We don't need no bounding-boxes" (CVPR 2016);
- drawing a box: 7.0 s by extreme clicking, against 34.5 s for the traditional drag with its
  quality checks, both from Papadopoulos et al., "Extreme clicking for efficient object
  annotation" (ICCV 2017); we charge the cheaper 7.0 s, so the "from scratch" baseline is not
  inflated;
- choosing a class by type-ahead over the catalogue: 3.0 s (our assumption; no study measured
  our UI).

From scratch an item costs class + box (10.0 s), or a verification (1.6 s) when the frame shows
nothing. With a pre-label: the verification, plus whatever must be corrected; an item no source
had anything to say about costs what it costs from scratch.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERIFY_S = 1.6
BOX_S = 7.0
CLASS_S = 3.0
IOU_OK = 0.7


def iou(a: list[int] | None, b: list[int] | None) -> float:
    if not a or not b:
        return 0.0
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    action: str  # accept | correct
    sku: str | None
    box: list[int] | None
    seconds: float
    scratch_s: float  # what the same item costs without a pre-label


class Truth:
    """``/sim/truth`` of one bundle: (t_ns, sku, box) samples, read from its ``sensors.mcap``."""

    def __init__(self, samples: list[tuple[int, str, list[int] | None]]) -> None:
        self.samples = sorted(samples)
        self.times = [s[0] for s in self.samples]

    @classmethod
    def from_mcap(cls, path: Any) -> Truth:
        from capsight_edge.sensors.sensorlog import read_messages

        samples = []
        for topic, _t, msg in read_messages(path):
            if topic != "/sim/truth":
                continue
            for i, t in enumerate(msg["t_ns"]):
                box = msg["item_bbox"][i] or None
                samples.append((int(t), msg["sku"][i], list(box) if box else None))
        return cls(samples)

    def at(self, t_ns: int) -> tuple[str, list[int] | None]:
        if not self.samples:
            return "", None
        i = bisect.bisect_left(self.times, t_ns)
        best = min(
            (j for j in (i - 1, i) if 0 <= j < len(self.samples)),
            key=lambda j: abs(self.times[j] - t_ns),
        )
        _t, sku, box = self.samples[best]
        return sku, box


class Truths:
    """The answer sheets of the bundles in a sink's blob store, each read once (``scratch``: a
    folder for the sensor log while it is read)."""

    def __init__(self, blobs: Any, scratch: Path) -> None:
        self.blobs, self.scratch = blobs, scratch
        self._read: dict[tuple[str, str], Truth] = {}

    def of(self, item: dict[str, Any]) -> Truth:
        key = (item["device_id"], item["bundle_id"])
        if key not in self._read:
            path = self.scratch / "truth.mcap"
            path.write_bytes(self.blobs.get_bytes(f"bundles/{key[0]}/{key[1]}/sensors.mcap"))
            self._read[key] = Truth.from_mcap(path)
        return self._read[key]


def correction(item: dict[str, Any], d: Decision) -> dict[str, Any]:
    """What a correction of ``item`` records (``POST /api/labels/{id}``'s ``sku`` and ``box``):
    the product and box the reviewer settled on, a part not corrected as proposed, no box for
    "no product". A product held out of view (the truth has no box for it) keeps the proposed
    box: the reviewer was charged for looking at it, and no box can be drawn."""
    sku = (d.sku if d.sku is not None else item.get("sku")) or ""
    box = d.box if d.box is not None else item.get("box")
    return {"sku": sku, "box": box if sku else None}


def review_into(store: Any, item: dict[str, Any], truth: Truth) -> Decision:
    """Review ``item`` and record the verdict in the label store ``store`` as reviewer "sim",
    as the demo does over the review API."""
    d = review(item, truth)
    store.review(
        item["item_id"],
        version=item["version"],
        action=d.action,
        who="sim",
        seconds=d.seconds,
        **(correction(item, d) if d.action == "correct" else {}),
    )
    return d


def review(item: dict[str, Any], truth: Truth) -> Decision:
    sku, box = truth.at(int(item["t_ns"]))
    scratch = CLASS_S + BOX_S if sku else VERIFY_S
    said, said_box = item.get("sku") or "", item.get("box")
    if not item.get("source"):  # no pre-label at all: labelled from scratch, at scratch cost
        if not sku:
            return Decision("correct", "", None, scratch, scratch)
        return Decision(
            "correct", sku, _inside(box, item["width"], item["height"]), scratch, scratch
        )
    if not sku:
        if not said:
            return Decision("accept", None, None, VERIFY_S, scratch)
        return Decision("correct", "", None, VERIFY_S + CLASS_S, scratch)
    if said == sku and iou(said_box, box) >= IOU_OK:
        return Decision("accept", None, None, VERIFY_S, scratch)
    seconds = VERIFY_S
    new_sku = None
    if said != sku:
        seconds += CLASS_S
        new_sku = sku
    new_box = None
    if iou(said_box, box) < IOU_OK:
        seconds += BOX_S
        new_box = _inside(box, item["width"], item["height"])
    return Decision("correct", new_sku, new_box, seconds, scratch)


def _inside(box: list[int] | None, w: int, h: int) -> list[int] | None:
    if not box:
        return None
    x, y, bw, bh = box
    x, y = max(0, min(x, w - 1)), max(0, min(y, h - 1))
    return [x, y, max(1, min(bw, w - x)), max(1, min(bh, h - y))]


def summary(decisions: list[Decision]) -> dict[str, Any]:
    n = len(decisions)
    accepted = sum(1 for d in decisions if d.action == "accept")
    spent = sum(d.seconds for d in decisions)
    scratch = sum(d.scratch_s for d in decisions)
    return {
        "items": n,
        "accepted_unchanged_pct": round(100 * accepted / n, 1) if n else None,
        "reviewer_s": round(spent, 1),
        "from_scratch_s": round(scratch, 1),
        "saved_pct": round(100 * (1 - spent / scratch), 1) if scratch else None,
        "model": json.dumps({"verify_s": VERIFY_S, "box_s": BOX_S, "class_s": CLASS_S}),
    }
