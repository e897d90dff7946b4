"""Cheap activity detection: where in the frame something moved.

Work happens on a small grey copy (``work_height`` rows, about 120): nearest-neighbour resize of
the frame (an area resize of a 720p colour frame costs more than everything else together), a small
blur, the difference against a running-average background, a threshold, and the outlines of what
changed. A change over most of the frame (lights switching, the camera shaken) is not motion:
the background is re-learnt and the frame reported as a recalibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MotionResult:
    t_ns: int
    moving_fraction: float
    #: (x, y, w, h) in full-frame pixels, largest first
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)
    recalibrated: bool = False
    hand_activity: bool = False


class MotionDetector:
    """``threshold``: grey-level change that counts; ``min_area_fraction``: smallest region;
    ``global_fraction``: above this, the change is global (recalibrate); hand activity is raised
    while moving regions cover at least ``activity_fraction`` of the frame, and held ``hold_s``."""

    def __init__(
        self,
        *,
        work_height: int = 120,
        threshold: int = 25,
        alpha: float = 0.05,
        min_area_fraction: float = 0.001,
        global_fraction: float = 0.6,
        activity_fraction: float = 0.004,
        hold_s: float = 0.5,
        max_regions: int = 4,
    ) -> None:
        self.work_height = work_height
        self.threshold = threshold
        self.alpha = alpha
        self.min_area_fraction = min_area_fraction
        self.global_fraction = global_fraction
        self.activity_fraction = activity_fraction
        self.hold_ns = int(hold_s * 1e9)
        self.max_regions = max_regions
        self._bg: Any = None
        self._last_active_ns: int | None = None
        self.frames = 0
        self.recalibrations = 0

    def _small_grey(self, image: Any) -> Any:
        import cv2

        h = image.shape[0]
        step = max(1, h // self.work_height)
        small = image[::step, ::step]  # nearest neighbour by slicing: no copy until needed
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(small, (5, 5), 0), step

    def push(self, image: Any, t_ns: int) -> MotionResult:
        import cv2
        import numpy as np

        self.frames += 1
        grey, step = self._small_grey(image)
        if self._bg is None or self._bg.shape != grey.shape:
            self._bg = grey.astype(np.float32)
            return MotionResult(t_ns, 0.0, [], recalibrated=True)
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(self._bg))
        _, mask = cv2.threshold(diff, self.threshold, 255, cv2.THRESH_BINARY)
        fraction = float(cv2.countNonZero(mask)) / mask.size
        if fraction >= self.global_fraction:
            self._bg = grey.astype(np.float32)
            self.recalibrations += 1
            return MotionResult(
                t_ns, fraction, [], recalibrated=True, hand_activity=self._held(t_ns)
            )
        cv2.accumulateWeighted(grey, self._bg, self.alpha)
        regions: list[tuple[int, int, int, int]] = []
        if fraction > 0:
            mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            min_area = self.min_area_fraction * mask.size
            boxes = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= min_area]
            boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
            regions = [
                (x * step, y * step, w * step, h * step) for x, y, w, h in boxes[: self.max_regions]
            ]
        if fraction >= self.activity_fraction and regions:
            self._last_active_ns = t_ns
        return MotionResult(t_ns, fraction, regions, hand_activity=self._held(t_ns))

    def _held(self, t_ns: int) -> bool:
        return self._last_active_ns is not None and t_ns - self._last_active_ns <= self.hold_ns
