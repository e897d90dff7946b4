"""Label audit: look again at labels people already gave, and send back the doubtful ones.

For every reviewed item, the teacher looks at its frame again; where it names another product
with at least ``min_score`` confidence, or where the item's own barcode read names another
product than its label, the item goes back to ``needs_review`` with the evidence (the label
events record it). :func:`audit_report` counts what became of the flagged items: how many a
reviewer has looked at again, and how many they changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud_sink.labels import LabelStore


@dataclass
class AuditResult:
    checked: int = 0
    flagged: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def audit(index: Any, blobs: Any, teacher: Any | None, *, min_score: float = 0.9) -> AuditResult:
    import cv2
    import numpy as np

    store = LabelStore(index)
    result = AuditResult()
    items = store.items(state="reviewed", limit=100_000)
    images = []
    for item in items:
        data = blobs.get_bytes(item["frame_key"])
        images.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    preds = teacher.predict(images) if teacher is not None and images else [None] * len(items)
    for item, pred in zip(items, preds, strict=True):
        result.checked += 1
        label = item["sku"] or ""
        reasons = []
        for c in item["candidates"]:
            if c.get("source") == "barcode" and c.get("sku") and c["sku"] != label:
                reasons.append(
                    (
                        "barcode",
                        f"the barcode read {c.get('detail', '')} names "
                        f"{c['sku']}, the label says {label or 'none'}",
                    )
                )
        if (
            pred is not None
            and teacher is not None
            and pred.sku != label
            and pred.score >= min_score
        ):
            reasons.append(
                (
                    "teacher",
                    f"the teacher ({teacher.version}) says "
                    f"{pred.sku or 'none'} at {pred.score:.2f}, the label "
                    f"says {label or 'none'}",
                )
            )
        if reasons and store.flag(item["item_id"], "; ".join(r for _k, r in reasons)):
            result.flagged += 1
            for kind, _r in reasons:
                result.by_reason[kind] = result.by_reason.get(kind, 0) + 1
    return result


def audit_report(index: Any) -> dict[str, int]:
    """Flagged items, how many were reviewed again, and how many of those were changed."""
    rows = index.db.execute(
        "SELECT item_id, action, seq FROM label_events WHERE action IN "
        "('flag', 'accept', 'correct', 'reject') ORDER BY item_id, seq"
    ).rows
    flagged = reviewed = changed = 0
    open_flag: dict[str, bool] = {}
    for item_id, action, _seq in rows:
        if action == "flag":
            flagged += 1
            open_flag[item_id] = True
        elif open_flag.pop(item_id, False):
            reviewed += 1
            changed += action != "accept"
    return {"flagged_total": flagged, "reviewed_again": reviewed, "changed": changed}
