"""What the clip and the scale add to the teacher's answer, before anyone reviews it.

- **The box, fitted to what changed.** The teacher sees a 144 px copy of the frame, so its box
  is a few of those pixels off (at 1280 px wide, one of them is 9). The clip's median frame
  (:class:`Background`) is the basket without the moving hand and product; the pixels of the
  labelled frame that differ from it are the product and the hand. :func:`fit_box` moves each
  side of the teacher's box to where the share of changed pixels falls below ``share`` of the
  product's own (measured in the middle of the box): an arm reaching across a side covers
  only part of it and is left out. The median frame is first brought to the frame's exposure
  (a cart moving under other lights changes every pixel a little and the basket's bright grid
  a lot). It keeps the teacher's box where the evidence is weak (too
  few changed columns or rows, or a fit that overlaps the teacher's box by less than
  ``min_overlap``).
- **The class, weighed by the scale.** At a weight event the change on the scale is the weight
  of what went in or came out. :func:`weigh` multiplies the teacher's probabilities by how well
  each product's catalogue weight explains the change (a normal density, standard deviation
  ``max(sd_g, sd_rel x weight)``: the scale's settled error plus how far a product strays from
  its stated weight); a product with no weight in the catalogue, and "no product", get a flat
  density over the catalogue's range, so missing data neither helps nor rules out.
- :func:`weight_agrees`: whether a change matches one product's weight (within 3 standard
  deviations): how a scan is carried to the item placed after it (see
  :func:`cloud_sink.prelabel.moments_of`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_sink.datasets import box_iou

#: The width the clip's median frame is kept at for fitting boxes (the frame is scaled alike).
FIT_WIDTH = 640


def sd_of(weight_g: float, sd_g: float, sd_rel: float) -> float:
    return max(sd_g, sd_rel * weight_g)


def weight_agrees(weight_g: float, delta_g: float, *, sd_g: float, sd_rel: float) -> bool:
    """Whether a change of ``delta_g`` on the scale is a product of ``weight_g`` going in or
    out."""
    return abs(abs(delta_g) - weight_g) <= 3 * sd_of(weight_g, sd_g, sd_rel)


def weigh(
    probs: Sequence[float],
    labels: Sequence[str],
    weights: Mapping[str, float],
    delta_g: float,
    *,
    sd_g: float,
    sd_rel: float,
) -> tuple[str, float]:
    """The most likely label given the teacher's ``probs`` (in ``labels`` order; "" is no
    product) and a change of ``delta_g`` on the scale, with its posterior probability."""
    if len(probs) != len(labels) or not labels:
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} labels")
    grams = abs(delta_g)
    span = max([*weights.values(), grams, 1.0])
    flat = 1.0 / span
    post: list[float] = []
    for p, label in zip(probs, labels, strict=True):
        w = weights.get(label) if label else None
        if w is None:
            like = flat
        else:
            sd = sd_of(w, sd_g, sd_rel)
            like = math.exp(-0.5 * ((grams - w) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        post.append(max(0.0, float(p)) * like)
    total = sum(post)
    if total <= 0 or not math.isfinite(total):
        return "", 0.0
    k = max(range(len(post)), key=post.__getitem__)
    return labels[k], post[k] / total


def small_frame(frame: Any) -> Any:
    """A decoded PyAV frame as BGR at :data:`FIT_WIDTH` pixels wide, scaled while converted
    (area averaging, as :func:`fit_box` scales the frame it fits; a third of the time of
    converting, then scaling)."""
    if frame.width <= FIT_WIDTH:
        return frame.to_ndarray(format="bgr24")
    return frame.reformat(
        width=FIT_WIDTH,
        height=_height(frame.width, frame.height),
        format="bgr24",
        interpolation="AREA",
    ).to_ndarray()


def _height(w: int, h: int) -> int:
    return max(1, round(FIT_WIDTH * h / w))


class Background:
    """The clip's median frame, from frames sampled over it (:func:`small_frame`), worked out
    only where a box is fitted (a median over the whole frame costs more than the rest of the
    fit), in tiles of :attr:`TILE` pixels kept once worked out: an item's track fits boxes
    around the same place frame after frame. Of an even count of samples, the upper of the
    middle two."""

    TILE = 64

    def __init__(self, samples: list[Any]) -> None:
        import numpy as np

        if not samples:
            raise ValueError("a background needs at least one frame")
        self.stack = np.stack(samples)
        self.shape = self.stack.shape[1:]
        self._coarse: Any = None
        self._median = np.empty(self.shape, self.stack.dtype)
        rows, cols = (-(-n // self.TILE) for n in self.shape[:2])
        self._done = np.zeros((rows, cols), bool)

    def coarse(self) -> Any:
        """The whole median frame, every fourth pixel each way (computed once)."""
        import numpy as np

        if self._coarse is None:
            part = self.stack[:, ::4, ::4]
            self._coarse = np.partition(part, len(part) // 2, axis=0)[len(part) // 2]
        return self._coarse

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> Any:
        """The median frame's pixels in ``[y0:y1, x0:x1]`` (as int16)."""
        import numpy as np

        t = self.TILE
        middle = len(self.stack) // 2
        for ty in range(y0 // t, -(-y1 // t)):
            for tx in range(x0 // t, -(-x1 // t)):
                if self._done[ty, tx]:
                    continue
                rows, cols = slice(ty * t, (ty + 1) * t), slice(tx * t, (tx + 1) * t)
                part = self.stack[:, rows, cols]
                self._median[rows, cols] = np.partition(part, middle, axis=0)[middle]
                self._done[ty, tx] = True
        return self._median[y0:y1, x0:x1].astype(np.int16)


def fit_box(
    img: Any,
    background: Background | None,
    box: list[int] | None,
    *,
    level: float = 45.0,
    share: float = 0.8,
    grow: float = 0.3,
    min_overlap: float = 0.3,
) -> list[int] | None:
    """``box`` (x, y, w, h in ``img``'s pixels) moved to the changed pixels around it, or None
    when the evidence is too weak to move it. ``level``: the colour difference (of 255, the
    largest over B, G, R) that counts as changed."""
    import cv2
    import numpy as np

    if box is None or background is None:
        return None
    H, W = background.shape[:2]
    h_img, w_img = img.shape[:2]
    sx, sy = w_img / W, h_img / H
    small = (
        img if (w_img, h_img) == (W, H) else cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    )
    x, y, w, h = box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy
    # Changed pixels only where the two passes can look: the box grown twice over.
    m = 2 * grow + 0.1
    cx0, cx1 = int(max(0, x - m * w)), int(min(W, x + w + m * w))
    cy0, cy1 = int(max(0, y - m * h)), int(min(H, y + h + m * h))
    if cx1 - cx0 < 4 or cy1 - cy0 < 4:
        return None
    changed = np.zeros((H, W), bool)
    seen = background.crop(cx0, cy0, cx1, cy1).astype(np.float32)
    diff = np.abs(small[cy0:cy1, cx0:cx1].astype(np.float32) - _exposed(seen, small, background))
    # the largest over B, G, R (two maximums: numpy reduces a 3-long last axis slowly)
    changed[cy0:cy1, cx0:cx1] = (
        np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) > level
    )
    for _ in range(2):  # the second pass measures along the first pass's sides
        x0, x1 = int(max(0, x - grow * w)), int(min(W, x + w + grow * w))
        y0, y1 = int(max(0, y - grow * h)), int(min(H, y + h + grow * h))
        rx0, rx1 = int(max(0, x + 0.1 * w)), int(min(W, x + 0.9 * w))
        ry0, ry1 = int(max(0, y + 0.1 * h)), int(min(H, y + 0.9 * h))
        if rx1 - rx0 < 4 or ry1 - ry0 < 4 or x1 - x0 < 4 or y1 - y0 < 4:
            return None
        cols = changed[ry0:ry1, x0:x1].mean(axis=0)
        rows = changed[y0:y1, rx0:rx1].mean(axis=1)
        own_c = float(np.median(cols[int(len(cols) * 0.4) : int(len(cols) * 0.6) + 1]))
        own_r = float(np.median(rows[int(len(rows) * 0.4) : int(len(rows) * 0.6) + 1]))
        cx = np.nonzero(cols >= share * max(0.3, own_c))[0]
        cy = np.nonzero(rows >= share * max(0.3, own_r))[0]
        if len(cx) < 4 or len(cy) < 4:
            return None
        x, w = float(x0 + cx[0]), float(cx[-1] + 1 - cx[0])
        y, h = float(y0 + cy[0]), float(cy[-1] + 1 - cy[0])
    fitted = [
        round(x * sx),
        round(y * sy),
        max(1, round(w * sx)),
        max(1, round(h * sy)),
    ]
    if box_iou(fitted, box) < min_overlap:
        return None
    return fitted


def _exposed(seen: Any, frame: Any, background: Background) -> Any:
    """The median frame's pixels ``seen`` as the camera would show them with ``frame``'s
    exposure: per channel, the line through the pairs of their quantiles (10 % to 90 % of the
    whole frame, mostly basket: the product is a small part of it). A cart moving under other
    lights, or a camera adjusting its exposure, changes every pixel a little and the basket's
    bright grid a lot; without this, the grid counts as changed."""
    import numpy as np

    qs = np.linspace(10, 90, 9)
    out = np.empty_like(seen)
    whole = background.coarse()
    for ch in range(seen.shape[2]):
        a, b = np.polyfit(
            np.percentile(whole[..., ch], qs), np.percentile(frame[::4, ::4, ch], qs), 1
        )
        out[..., ch] = a * seen[..., ch] + b
    return out
