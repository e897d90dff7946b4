"""The variable-weight check: a GS1 code that states its net weight (AI 310n) against what the
load cells felt.

Loose produce, cheese and meat carry a GS1 DataBar Expanded or GS1-128 label with AI 310n, the
net weight in kg with n decimals. When a shopper scans one and puts it in the basket, the stable
weight should rise by about that much (a little more: the tray and film). A read and an
``item_added`` within ``window_s`` of each other are paired; when the weight change is off by
more than ``max(tolerance_g, tolerance_pct of the stated weight)`` the signal
``weight_mismatch`` is raised (usable in trigger rules); either way each is used once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightVerdict:
    t_ns: int
    stated_g: float
    measured_g: float
    mismatch: bool
    key: str


class DeclaredWeightCheck:
    def __init__(
        self, *, tolerance_g: float = 20.0, tolerance_pct: float = 10.0, window_s: float = 10.0
    ) -> None:
        self.tolerance_g = tolerance_g
        self.tolerance_pct = tolerance_pct
        self.window_ns = int(window_s * 1e9)
        self._read: tuple[int, float, str] | None = None
        self._added: tuple[int, float] | None = None
        self._last_key: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self.checked = 0
        self.mismatches = 0

    def read(self, t_ns: int, net_weight_kg: float, key: str) -> WeightVerdict | None:
        """A code stating ``net_weight_kg`` was read at ``t_ns``."""
        with self._lock:
            last = self._last_key
            self._last_key = (key, t_ns)
            if last is not None and last[0] == key and t_ns - last[1] < self.window_ns:
                return None  # the same label read again while still in view
            self._read = (t_ns, net_weight_kg * 1000.0, key)
            return self._pair(t_ns)

    def weighed(self, t_ns: int, delta_g: float) -> WeightVerdict | None:
        """The stable weight rose by ``delta_g`` (an ``item_added``) at ``t_ns``."""
        with self._lock:
            self._added = (t_ns, delta_g)
            return self._pair(t_ns)

    def _pair(self, now_ns: int) -> WeightVerdict | None:
        if self._read is None or self._added is None:
            return None
        t_read, stated, key = self._read
        t_added, measured = self._added
        if abs(t_read - t_added) > self.window_ns:
            # too far apart: keep only the newer one
            if t_read < t_added:
                self._read = None
            else:
                self._added = None
            return None
        self._read = self._added = None
        allowed = max(self.tolerance_g, stated * self.tolerance_pct / 100.0)
        mismatch = abs(measured - stated) > allowed
        self.checked += 1
        self.mismatches += mismatch
        return WeightVerdict(now_ns, stated, measured, mismatch, key)
