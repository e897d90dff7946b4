"""Map the MCU's microsecond clock onto the host's monotonic nanoseconds.

Each ping/pong exchange gives one point: the MCU saw the ping at ``rx_us`` on its clock, and on
the host's clock that moment lies, assuming symmetric link delays, halfway between send and
receive. A straight-line fit over the recent points gives offset and drift (crystals are off by
tens of ppm, so offset alone goes wrong by milliseconds within a minute). Exchanges whose round
trip is much longer than the best recent one carry mostly queueing delay and are left out.
"Recent" counts every exchange offered, kept or left out: when the link gets slower for good (a
busier CPU), the old best round trips leave that window and the new ones are kept again, instead
of every later exchange being left out against a best that can no longer be reached.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

#: How many of the latest exchanges set the best round trip that others are measured against.
RECENT = 16
#: Round trips within twice the best plus this are kept: a serial link's own jitter (a pty on a
#: busy host: 0.4 to 1.7 ms) is not queueing delay; a queued exchange waits milliseconds more.
RTT_FLOOR_NS = 1_000_000


@dataclass(frozen=True)
class SyncPoint:
    mcu_us: int
    host_ns: int
    rtt_ns: int


class ClockSync:
    """Thread-safe MCU-to-host clock mapping. ``to_host_ns`` works from the first exchange on
    (offset only); drift is estimated once ``min_points_for_drift`` points span ``min_span_s``."""

    def __init__(
        self,
        window: int = 64,
        rtt_slack: float = 2.0,
        min_points_for_drift: int = 4,
        min_span_s: float = 2.0,
    ) -> None:
        self._points: deque[SyncPoint] = deque(maxlen=window)
        self._offered: deque[int] = deque(maxlen=RECENT)  # round trips of the latest exchanges
        self._lock = threading.Lock()
        self._rtt_slack = rtt_slack
        self._min_points = min_points_for_drift
        self._min_span_us = min_span_s * 1e6
        # host_ns = intercept + slope * (mcu_us - ref_us)
        self._ref_us = 0
        self._intercept = 0.0
        self._slope = 1000.0
        self.exchanges = 0
        self.rejected = 0

    @property
    def synced(self) -> bool:
        return self.exchanges > 0

    @property
    def drift_ppm(self) -> float:
        """How fast the MCU's clock runs against the host's (positive: the MCU's is fast)."""
        return (1000.0 / self._slope - 1.0) * 1e6

    def reset(self) -> None:
        """Forget everything (the MCU rebooted: its clock restarted)."""
        with self._lock:
            self._points.clear()
            self._offered.clear()
            self._slope, self._intercept, self._ref_us = 1000.0, 0.0, 0
            self.exchanges = 0

    def add_exchange(self, send_ns: int, recv_ns: int, mcu_rx_us: int) -> bool:
        """Record one ping/pong; returns False when it was left out as a queueing outlier."""
        rtt = recv_ns - send_ns
        if rtt < 0:
            self.rejected += 1
            return False
        point = SyncPoint(mcu_rx_us, send_ns + rtt // 2, rtt)
        with self._lock:
            best = min(self._offered, default=rtt)
            self._offered.append(rtt)
            if self._points and rtt > self._rtt_slack * best + RTT_FLOOR_NS:
                self.rejected += 1
                return False
            self._points.append(point)
            self.exchanges += 1
            self._fit()
        return True

    def _fit(self) -> None:
        pts = list(self._points)
        best = min(p.rtt_ns for p in pts[-RECENT:])
        good = [p for p in pts if p.rtt_ns <= self._rtt_slack * best + RTT_FLOOR_NS]
        ref = good[-1].mcu_us
        xs = [p.mcu_us - ref for p in good]
        ys = [p.host_ns for p in good]
        n = len(good)
        span = max(xs) - min(xs)
        if n >= self._min_points and span >= self._min_span_us:
            mx, my = sum(xs) / n, sum(ys) / n
            sxx = sum((x - mx) ** 2 for x in xs)
            sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
            slope = sxy / sxx
            # A crystal is never off by more than 0.1 %: anything else is a bad fit.
            if abs(slope / 1000.0 - 1.0) < 1e-3:
                self._slope = slope
            self._intercept = my - self._slope * mx
        else:
            self._intercept = sum(y - self._slope * x for x, y in zip(xs, ys, strict=True)) / n
        self._ref_us = ref

    def to_host_ns(self, mcu_us: int) -> int:
        with self._lock:
            return int(self._intercept + self._slope * (mcu_us - self._ref_us))
