"""The basket as the cart's camera sees it, rendered from the shared scenario timeline.

A shopper's hand holds a product up to the camera (the scan: barcode facing the lens, moving
slowly), then lowers it into the basket, where it stays; unscanned products come in fast with their
back to the camera; removals lift an item out; some hands wave over the basket holding nothing; a
bump shakes the camera; the store's lights switch. Each product event gets its own conditions from
the store's conditions and the cart's seed: lighting, motion blur, fingers over the label, glare,
crumpled packaging.

``render(t)`` returns the frame and a :class:`FrameTruth` saying what is in it, so tests and
benchmarks can score detectors against the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from capsight_edge.scene.catalogue import Catalogue, Product
from capsight_edge.scene.conditions import CLEAN, Conditions, StoreConditions
from firmware_bridge.sim.scenario import HandWave, ItemEvent, Scenario

SKIN_BGR = (120, 160, 215)


@dataclass
class FrameTruth:
    """What the synthetic scene put in one frame. Only tests, the simulated reviewer and the
    evaluator may read it (the sensor log's ``/sim/truth`` channel); pre-labelling and
    training never do."""

    t_s: float
    hand_visible: bool = False
    hand_bbox: tuple[int, int, int, int] | None = None
    moving_sku: str | None = None
    #: The barcode in view is sharp, facing the camera and not covered: a decoder should read it.
    barcode_readable: bool = False
    barcode_code: str | None = None
    item_bbox: tuple[int, int, int, int] | None = None
    placed: list[str] = field(default_factory=list)
    light_gain: float = 1.0
    shake_px: int = 0
    #: The conditions of the product event in view (None when no product moves).
    conditions: Conditions | None = None

    def as_log(self) -> dict[str, Any]:
        """One sample of the sensor log's ``/sim/truth`` channel."""
        c = self.conditions or Conditions()
        return {
            "sku": self.moving_sku or "",
            "item_bbox": list(self.item_bbox) if self.item_bbox else [],
            "hand_visible": self.hand_visible,
            "barcode_readable": self.barcode_readable,
            "barcode_code": self.barcode_code or "",
            "in_basket": len(self.placed),
            "light_gain": round(self.light_gain, 3),
            "shake_px": self.shake_px,
            "blur_px": c.blur_px,
            "glare": c.glare,
            "occluded": c.occluded,
            "crumpled": c.crumpled,
        }


def _smooth(a: float) -> float:
    a = min(1.0, max(0.0, a))
    return a * a * (3 - 2 * a)


class SceneRenderer:
    """Renders BGR frames of ``width`` x ``height`` for a scenario and a catalogue, in a store's
    ``conditions`` (``clean=True``: ideal studio conditions, :data:`CLEAN`)."""

    def __init__(
        self,
        scenario: Scenario,
        catalogue: Catalogue,
        *,
        width: int = 1280,
        height: int = 720,
        seed: int = 0,
        clean: bool = False,
        conditions: StoreConditions | None = None,
    ) -> None:
        import numpy as np

        self.scenario = scenario
        self.catalogue = catalogue
        self.w, self.h = width, height
        self.seed = seed
        self.store = CLEAN if clean else (conditions or StoreConditions())
        self.light_steps = scenario.light_steps or self.store.light_steps(seed, scenario.duration_s)
        self.scale = height / 720.0
        self._np = np
        self._background = self._basket()
        self._base_key: tuple[str, ...] | None = None
        self._base = self._background
        self._sprites: dict[tuple[str, bool, bool], Any] = {}

    # -- static parts -------------------------------------------------------------------------
    def _basket(self) -> Any:
        import cv2

        np = self._np
        img = np.empty((self.h, self.w, 3), np.uint8)
        grad = np.linspace(70, 110, self.h, dtype=np.float32)[:, None]
        img[:] = np.clip(grad + np.zeros((1, self.w), np.float32), 0, 255).astype(np.uint8)[
            :, :, None
        ]
        step = max(8, int(40 * self.scale))
        for x in range(0, self.w, step):
            cv2.line(img, (x, 0), (x, self.h), (150, 150, 150), 2)
        for y in range(0, self.h, step):
            cv2.line(img, (0, y), (self.w, y), (140, 140, 140), 2)
        noise = np.random.default_rng(self.seed).integers(0, 6, img.shape, dtype=np.uint8)
        return cv2.add(img, noise)

    def _product(self, sku: str) -> Product:
        try:
            return self.catalogue.by_sku(sku)
        except KeyError:
            # A scenario made without this catalogue: pick a stable stand-in.
            return self.catalogue.products[sum(map(ord, sku)) % len(self.catalogue)]

    def _sprite(self, product: Product, front: bool, crumpled: bool) -> Any:
        key = (product.sku, front, crumpled)
        if key not in self._sprites:
            img = product.front if front else product.back
            if crumpled:
                img = self._crumple(img, product.sku)
            self._sprites[key] = img
        return self._sprites[key]

    def _crumple(self, img: Any, sku: str) -> Any:
        import cv2

        np = self._np
        h, w = img.shape[:2]
        rng = np.random.default_rng(sum(map(ord, sku)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        amp, fx, fy = rng.uniform(1.0, 2.5), rng.uniform(0.01, 0.03), rng.uniform(0.01, 0.04)
        mx = xx + amp * np.sin(yy * fy * 2 * math.pi)
        my = yy + amp * np.sin(xx * fx * 2 * math.pi)
        out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        shade = (0.85 + 0.15 * np.sin(xx * fx * 4 * math.pi))[:, :, None]
        return np.clip(out * shade, 0, 255).astype(np.uint8)

    def _basket_point(self, x: float, y: float) -> tuple[int, int]:
        return int(self.w * (0.1 + 0.8 * x)), int(self.h * (0.15 + 0.8 * y))

    # -- per frame ----------------------------------------------------------------------------
    def placed_at(self, t: float) -> list[ItemEvent]:
        inside: dict[str, ItemEvent] = {}
        items, _ = self.scenario.snapshot()
        for ev in items:
            if ev.t_s + ev.hand_s > t:
                break
            if ev.grams > 0:
                inside[ev.sku + f"@{ev.t_s}"] = ev
            else:
                for key in [k for k in inside if k.startswith(ev.sku + "@")][:1]:
                    del inside[key]
        return list(inside.values())

    def _base_for(self, placed: list[ItemEvent]) -> Any:
        key = tuple(f"{e.sku}@{e.t_s}" for e in placed)
        if key != self._base_key:
            img = self._background.copy()
            for i, ev in enumerate(placed):
                sprite = self._sprite(self._product(ev.sku), i % 3 != 0, False)
                small = self._resize(sprite, 0.55)
                cx, cy = self._basket_point(ev.x, ev.y)
                self._paste(img, small, cx, cy)
            self._base, self._base_key = img, key
        return self._base

    def _resize(self, img: Any, factor: float) -> Any:
        import cv2

        f = factor * self.scale
        if abs(f - 1.0) < 1e-3:
            return img
        return cv2.resize(
            img,
            (max(1, int(img.shape[1] * f)), max(1, int(img.shape[0] * f))),
            interpolation=cv2.INTER_AREA,
        )

    def _paste(self, dst: Any, src: Any, cx: int, cy: int) -> tuple[int, int, int, int] | None:
        h, w = src.shape[:2]
        x0, y0 = cx - w // 2, cy - h // 2
        x1, y1 = max(0, x0), max(0, y0)
        x2, y2 = min(self.w, x0 + w), min(self.h, y0 + h)
        if x2 <= x1 or y2 <= y1:
            return None
        dst[y1:y2, x1:x2] = src[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        return (x1, y1, x2 - x1, y2 - y1)

    def _hand(self, img: Any, cx: int, cy: int) -> tuple[int, int, int, int]:
        """An arm from the top right, the palm at (cx, cy); returns the hand's bounding box."""
        import cv2

        s = self.scale
        top = (min(self.w - 1, cx + int(160 * s)), 0)
        cv2.line(img, top, (cx, cy), SKIN_BGR, int(60 * s))
        cv2.ellipse(img, (cx, cy), (int(50 * s), int(38 * s)), 30, 0, 360, SKIN_BGR, -1)
        x0, x1 = cx - int(60 * s), top[0] + int(40 * s)
        return (max(0, x0), 0, min(self.w, x1) - max(0, x0), cy + int(45 * s))

    def render(self, t: float) -> tuple[Any, FrameTruth]:
        import cv2

        np = self._np
        placed = self.placed_at(t)
        frame = self._base_for(placed).copy()
        truth = FrameTruth(t_s=t, placed=[e.sku for e in placed])
        items, bumps = self.scenario.snapshot()
        for index, ev in enumerate(items):
            start = ev.t_s - ev.scan_s
            if start <= t < ev.t_s + ev.hand_s:
                self._draw_item_event(frame, ev, index, t, truth)
                break
        else:
            for wave in self.scenario.waves:
                if wave.t_s <= t < wave.t_s + wave.duration_s:
                    self._draw_wave(frame, wave, t, truth)
                    break
        gain = 1.0
        for t_step, g in self.light_steps:
            if t >= t_step:
                gain = g
        if truth.moving_sku is not None:
            gain *= self._conditions(self._index_of(truth.moving_sku, t)).light_gain
        if abs(gain - 1.0) > 0.02:
            frame = cv2.convertScaleAbs(frame, alpha=gain)
        truth.light_gain = gain
        shake = 0.0
        for b in bumps:
            if b.t_s <= t <= b.end_s:
                dt = t - b.t_s
                shake += (
                    12
                    * self.scale
                    * b.accel_g
                    * math.exp(-dt / b.tau_s)
                    * math.sin(2 * math.pi * b.freq_hz * dt)
                )
        if abs(shake) >= 1:
            frame = np.roll(frame, int(shake), axis=0)
            truth.shake_px = int(shake)
            truth.barcode_readable = False
        return frame, truth

    @property
    def clean(self) -> bool:
        return self.store == CLEAN

    def _conditions(self, index: int) -> Conditions:
        return self.store.event(self.seed, index)

    def _index_of(self, sku: str, t: float) -> int:
        items, _ = self.scenario.snapshot()
        for i, ev in enumerate(items):
            if ev.sku == sku and ev.t_s - ev.scan_s <= t < ev.t_s + ev.hand_s:
                return i
        return 0

    def _draw_item_event(
        self, frame: Any, ev: ItemEvent, index: int, t: float, truth: FrameTruth
    ) -> None:
        import cv2

        cond = self._conditions(index)
        product = self._product(ev.sku)
        dest = self._basket_point(ev.x, ev.y)
        entry = (int(self.w * 0.55), -int(120 * self.scale))
        show = (int(self.w * 0.5), int(self.h * 0.42))
        front = ev.scanned and ev.grams > 0
        if ev.grams < 0:  # taking out: reach in, lift up and away
            a = (t - ev.t_s) / ev.hand_s
            p = dest if a < 0.4 else _lerp(dest, entry, _smooth((a - 0.4) / 0.6))
            scale, speed = 0.55 + 0.25 * max(0.0, a - 0.4), 1.0
            draw_item = a >= 0.4
        elif t < ev.t_s:  # scan (or a quick unscanned entry) before the item goes in
            a = (t - (ev.t_s - ev.scan_s)) / max(ev.scan_s, 1e-6)
            if ev.scanned:
                if a < 0.3:
                    p, speed = _lerp(entry, show, _smooth(a / 0.3)), 1.0
                elif a < 0.75:
                    wob = 6 * self.scale * math.sin(2 * math.pi * 1.5 * t)
                    p, speed = (show[0] + int(wob), show[1]), 0.05
                else:
                    p, speed = _lerp(show, dest, 0.3 * _smooth((a - 0.75) / 0.25)), 0.6
            else:
                p, speed = _lerp(entry, dest, 0.6 * _smooth(a)), 1.0
            scale, draw_item = 1.0, True
        else:  # lowering into the basket
            a = (t - ev.t_s) / ev.hand_s
            start = _lerp(show, dest, 0.3) if ev.scanned else _lerp(entry, dest, 0.6)
            p, speed = _lerp(start, dest, _smooth(a)), 0.8
            scale, draw_item = 1.0 - 0.45 * _smooth(a), True
        box = None
        if draw_item:
            sprite = self._resize(self._sprite(product, front, cond.crumpled), scale)
            blur = int(speed * (cond.blur_px + 4)) if speed > 0.3 else 0
            if blur >= 2:
                k = np.zeros((blur, blur), np.float32) if (np := self._np) else None
                assert k is not None
                k[blur // 2, :] = 1.0 / blur
                sprite = cv2.filter2D(sprite, -1, k)
            if cond.glare and front:
                sprite = sprite.copy()
                cv2.ellipse(
                    sprite,
                    (sprite.shape[1] // 2, sprite.shape[0] // 2),
                    (sprite.shape[1] // 5, sprite.shape[0] // 6),
                    0,
                    0,
                    360,
                    (255, 255, 255),
                    -1,
                )
            box = self._paste(frame, sprite, p[0], p[1])
        if box is not None and not cond.occluded:  # holding it by the right edge
            hand = (box[0] + box[2] + int(10 * self.scale), p[1])
        else:  # fingers across the label
            hand = (p[0] + int(20 * self.scale), p[1] + int(45 * self.scale * scale))
        truth.hand_bbox = self._hand(frame, *hand)
        truth.hand_visible = True
        truth.moving_sku = ev.sku
        truth.conditions = cond
        truth.item_bbox = box
        truth.barcode_code = product.code if front else None
        truth.barcode_readable = bool(
            front
            and box is not None
            and speed < 0.3
            and scale > 0.9
            and not cond.occluded
            and not cond.glare
        )

    def _draw_wave(self, frame: Any, wave: HandWave, t: float, truth: FrameTruth) -> None:
        a = (t - wave.t_s) / wave.duration_s
        x = int(self.w * (0.2 + 0.6 * a))
        y = int(self.h * (0.35 + 0.15 * math.sin(2 * math.pi * a)))
        truth.hand_bbox = self._hand(frame, x, y)
        truth.hand_visible = True


def _lerp(a: tuple[int, int], b: tuple[int, int], f: float) -> tuple[int, int]:
    return int(a[0] + (b[0] - a[0]) * f), int(a[1] + (b[1] - a[1]) * f)
