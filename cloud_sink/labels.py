"""The label store: one item per frame worth labelling, in the index's database.

States::

    unlabelled -> prelabelled -> quick_confirm | needs_review -> reviewed | rejected
                                      ^                               |
                                      +---------- (audit) ------------+

Every change is an event (who, when, what, seconds spent). Each item has a ``version``: a save
names the version it was made on, and a save on a version that is no longer current (a second
reviewer was faster) is refused with :class:`LabelConflict` (HTTP 409), never applied over the
other's work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from cloud_sink.datasets import NONE

STATES = ("unlabelled", "prelabelled", "quick_confirm", "needs_review", "reviewed", "rejected")
OPEN = ("quick_confirm", "needs_review")
ACTIONS = ("accept", "correct", "reject")


class LabelError(ValueError):
    pass


class LabelConflict(LabelError):
    """The item changed since the caller read it."""


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@dataclass
class Candidate:
    """One pre-label: what a source says about the frame."""

    source: str  # barcode | weight | scale | teacher | vlm
    sku: str  # "" = no product
    score: float
    box: list[int] | None = None
    model_version: str = ""
    detail: str = ""


@dataclass
class TrackFrame:
    """A frame of an item's moment besides the one reviewed: it takes the item's label when
    exported (one review labels the whole track)."""

    t_ns: int
    frame_key: str
    frame_sha256: str
    box: list[int] | None = None


@dataclass
class NewItem:
    item_id: str
    device_id: str
    bundle_id: str
    store_id: str
    t_ns: int
    t_utc: str
    frame_key: str
    frame_sha256: str
    width: int
    height: int
    candidates: list[Candidate]
    moment: dict[str, Any] = field(default_factory=dict)
    #: The other frames of the moment that show the same product (:class:`TrackFrame`).
    track: list[TrackFrame] = field(default_factory=list)


#: Which source's answer is the pre-label when several spoke (higher first; others by score):
#: what the sensors say (a read, the scale) before what a model sees.
PRIORITY = {"barcode": 2, "weight": 1, "scale": 1}


def route(
    candidates: list[Candidate], *, agree_score: float, alone_score: float
) -> tuple[Candidate | None, str]:
    """The pre-label and the queue it goes to. The pre-label is a barcode's if there is one,
    else the teacher weighed by the scale (``weight``: it holds the teacher's answer and more),
    else the most confident source. Agreeing sources (every source that spoke names the same
    SKU) with the model at least ``agree_score`` confident (the weighed answer where there is
    one, else the teacher's) go to quick confirmation; so does a lone source at least
    ``alone_score`` confident; anything else, and any product label without a box (a barcode
    read alone names the product, not where it is), to full review."""
    if not candidates:
        return None, "needs_review"
    skus = {c.sku for c in candidates}
    teacher = next((c for c in candidates if c.source == "weight"), None) or next(
        (c for c in candidates if c.source == "teacher"), None
    )
    best = max(candidates, key=lambda c: (PRIORITY.get(c.source, 0), c.score))
    if best.box is None and teacher is not None and teacher.sku == best.sku:
        best = Candidate(best.source, best.sku, best.score, teacher.box, best.model_version)
    complete = best.box is not None or best.sku == ""  # a product label needs its box
    if len(candidates) > 1 and len(skus) == 1:
        score = teacher.score if teacher is not None else best.score
        quick = score >= agree_score and complete
        return best, "quick_confirm" if quick else "needs_review"
    if len(candidates) == 1 and best.score >= alone_score and complete:
        return best, "quick_confirm"
    return best, "needs_review"


class LabelStore:
    def __init__(self, index: Any) -> None:
        self.index = index

    # -- writing pre-labels --------------------------------------------------------------------
    def add(self, item: NewItem, *, agree_score: float = 0.8, alone_score: float = 0.95) -> str:
        """Store an item with its pre-labels, routed; returns its state. An item that exists is
        left as it is (pre-labelling twice changes nothing)."""
        best, state = route(item.candidates, agree_score=agree_score, alone_score=alone_score)
        now = utc_now()
        with self.index.db.transaction() as db:
            if db.execute(
                "SELECT 1 FROM label_items WHERE item_id = ?", (item.item_id,)
            ).fetchone():
                return "exists"
            db.execute(
                "INSERT INTO label_items (item_id, device_id, bundle_id, store_id, t_ns, t_utc, "
                "frame_key, frame_sha256, width, height, state, sku, box, source, model_version, "
                "score, candidates, moment, track, updated_utc) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.item_id,
                    item.device_id,
                    item.bundle_id,
                    item.store_id,
                    item.t_ns,
                    item.t_utc,
                    item.frame_key,
                    item.frame_sha256,
                    item.width,
                    item.height,
                    state,
                    best.sku if best else None,
                    json.dumps(best.box) if best and best.box else None,
                    best.source if best else "",
                    best.model_version if best else "",
                    best.score if best else 0.0,
                    json.dumps([c.__dict__ for c in item.candidates]),
                    json.dumps(item.moment),
                    json.dumps([t.__dict__ for t in item.track]),
                    now,
                ),
            )
            self._event(
                db,
                item.item_id,
                "prelabel",
                "prelabel",
                "unlabelled",
                state,
                0.0,
                {"candidates": [c.__dict__ for c in item.candidates]},
            )
        return state

    # -- reading ---------------------------------------------------------------------------------
    def get(self, item_id: str) -> dict[str, Any] | None:
        row = self.index.db.execute(
            "SELECT * FROM label_items WHERE item_id = ?", (item_id,)
        ).fetchone()
        return _decode(dict(row)) if row is not None else None

    def items(
        self,
        *,
        state: str | None = None,
        store: str | None = None,
        bundle: tuple[str, str] | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if state:
            where.append("state = ?")
            args.append(state)
        if store:
            where.append("store_id = ?")
            args.append(store)
        if bundle:
            where.append("device_id = ? AND bundle_id = ?")
            args += list(bundle)
        sql = "SELECT * FROM label_items" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY state, t_utc LIMIT ?"
        args.append(max(1, min(limit, 100_000)))
        return [_decode(dict(r)) for r in self.index.db.execute(sql, args)]

    def counts(self) -> dict[str, int]:
        rows = self.index.db.execute("SELECT state, COUNT(*) FROM label_items GROUP BY state")
        return {s: 0 for s in STATES} | {r[0]: int(r[1]) for r in rows}

    def history(self, item_id: str) -> list[dict[str, Any]]:
        out = [
            dict(r)
            for r in self.index.db.execute(
                "SELECT * FROM label_events WHERE item_id = ? ORDER BY seq", (item_id,)
            )
        ]
        for r in out:
            r["detail"] = json.loads(r["detail"])
        return out

    # -- review ----------------------------------------------------------------------------------
    def review(
        self,
        item_id: str,
        *,
        version: int,
        action: str,
        who: str,
        seconds: float,
        sku: str | None = None,
        box: list[int] | None = None,
    ) -> dict[str, Any]:
        """``accept`` the pre-label, ``correct`` it (``sku`` and/or ``box``), or ``reject`` the
        item (not a usable frame). LabelConflict when ``version`` is not the item's current
        version; LabelError for anything else that does not fit."""
        if action not in ACTIONS:
            raise LabelError(f"action must be one of {', '.join(ACTIONS)}")
        if not 0 <= seconds <= 3600:
            raise LabelError("seconds must be between 0 and 3600")
        if box is not None and (len(box) != 4 or any(not isinstance(v, int) for v in box)):
            raise LabelError("box must be [x, y, width, height] in whole pixels")
        with self.index.db.transaction() as db:
            row = db.execute(
                "SELECT state, version, sku, box, width, height FROM label_items WHERE item_id = ?"
                + self.index.db.for_update(),
                (item_id,),
            ).fetchone()
            if row is None:
                raise LabelError(f"no label item {item_id!r}")
            state, current, old_sku, old_box, width, height = row
            if version != current:
                raise LabelConflict(
                    f"item {item_id} changed since you opened it (version {version}, now "
                    f"{current}): reload it and review again"
                )
            if state not in OPEN and state != "reviewed":
                raise LabelError(f"item {item_id} is {state}: there is nothing to review")
            if box is not None:
                x, y, w, h = box
                if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                    raise LabelError(f"box {box} is not inside the {width}x{height} frame")
            new_state = "rejected" if action == "reject" else "reviewed"
            sets: dict[str, Any] = {"state": new_state, "reviewer": who, "flagged": ""}
            if action == "correct":
                if sku is None and box is None:
                    raise LabelError("a correction names a sku, a box or both")
                new_sku = old_sku if sku is None else sku
                new_box = json.loads(old_box) if box is None and old_box else box
                if new_sku == NONE:
                    new_box = None
                sets |= {
                    "sku": new_sku,
                    "box": json.dumps(new_box) if new_box else None,
                    "source": "human",
                    "model_version": "",
                    "score": 1.0,
                }
            assignments = ", ".join(f"{k} = ?" for k in sets)
            db.execute(
                f"UPDATE label_items SET {assignments}, version = version + 1, "
                "review_s = review_s + ?, updated_utc = ? WHERE item_id = ?",
                (*sets.values(), seconds, utc_now(), item_id),
            )
            self._event(
                db, item_id, who, action, state, new_state, seconds, {"sku": sku, "box": box}
            )
        item = self.get(item_id)
        assert item is not None
        return item

    def flag(self, item_id: str, reason: str, *, who: str = "audit") -> bool:
        """Send a reviewed item back to review with the evidence (the label audit)."""
        with self.index.db.transaction() as db:
            row = db.execute(
                "SELECT state FROM label_items WHERE item_id = ?" + self.index.db.for_update(),
                (item_id,),
            ).fetchone()
            if row is None or row[0] != "reviewed":
                return False
            db.execute(
                "UPDATE label_items SET state = 'needs_review', flagged = ?, "
                "version = version + 1, updated_utc = ? WHERE item_id = ?",
                (reason[:500], utc_now(), item_id),
            )
            self._event(
                db, item_id, who, "flag", "reviewed", "needs_review", 0.0, {"reason": reason[:500]}
            )
        return True

    @staticmethod
    def _event(
        db: Any,
        item_id: str,
        who: str,
        action: str,
        src: str,
        dst: str,
        seconds: float,
        detail: dict[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO label_events (item_id, at_utc, who, action, from_state, to_state, "
            "seconds, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, utc_now(), who, action, src, dst, seconds, json.dumps(detail)),
        )


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["box"] = json.loads(row["box"]) if row.get("box") else None
    row["candidates"] = json.loads(row.get("candidates") or "[]")
    row["moment"] = json.loads(row.get("moment") or "{}")
    row["track"] = json.loads(row.get("track") or "[]")
    return row
