"""From raw HX711 counts to a cart weight and item events.

The chain, each step a small object with ``push`` (and an iterator form for plain lists):

1. :class:`SpikeFilter` per channel: rail codes (0x7FFFFF, 0x800000) are dropped, then a median of
   the last 5 good values removes single-sample spikes (0, all-ones) that real boards emit.
2. :class:`~capsight_edge.sensors.calibration.Calibration`: per-cell zero and scale to grams; the
   cart weight is the sum of the cells.
3. :class:`StabilityWindow`: the weight is stable when its standard deviation over the last
   ``stable_window_s`` is within ``stable_tolerance_g``.
4. :class:`ItemEventDetector`: a change of the stable weight by at least ``item_threshold_g`` is an
   item added or removed; an unstable stretch that settles back to the same weight is a bump.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from capsight_edge.sensors.calibration import Calibration

RAIL_HIGH = 0x7FFFFF
RAIL_LOW = -0x800000


@dataclass(frozen=True)
class RawSample:
    t_ns: int
    counts: tuple[int, ...]


@dataclass(frozen=True)
class WeightReading:
    t_ns: int
    grams: float
    stable: bool
    stddev_g: float


@dataclass(frozen=True)
class WeightEvent:
    """``kind``: item_added, item_removed, unstable_start, unstable_end.

    For item events ``delta_g`` is the change and ``weight_g`` the new stable weight; for
    ``unstable_end``, ``bump`` says the weight came back to where it was, and ``peak_g`` is the
    largest excursion from the last stable weight.
    """

    kind: str
    t_ns: int
    delta_g: float = 0.0
    weight_g: float = 0.0
    start_ns: int = 0
    peak_g: float = 0.0
    bump: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SpikeFilter:
    """Per-channel rail rejection and median of the last ``n`` good values."""

    def __init__(self, channels: int, n: int = 5) -> None:
        self._hist: list[deque[int]] = [deque(maxlen=n) for _ in range(channels)]
        self.rails = 0

    def push(self, counts: tuple[int, ...]) -> tuple[float, ...] | None:
        """Filtered counts, or None until every channel has a good value."""
        out = []
        for h, c in zip(self._hist, counts, strict=True):
            if c in (RAIL_HIGH, RAIL_LOW):
                self.rails += 1
            else:
                h.append(c)
            if not h:
                return None
            s = sorted(h)
            out.append(
                float(s[len(s) // 2]) if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
            )
        return tuple(out)


class StabilityWindow:
    """Rolling mean and standard deviation of the weight over a time window."""

    def __init__(self, window_s: float, tolerance_g: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.tolerance_g = tolerance_g
        self._buf: deque[tuple[int, float]] = deque()

    def push(self, t_ns: int, grams: float) -> tuple[bool, float, float]:
        """(stable, mean, stddev) after adding one value."""
        self._buf.append((t_ns, grams))
        while self._buf and self._buf[0][0] < t_ns - self.window_ns:
            self._buf.popleft()
        values = [g for _, g in self._buf]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((g - mean) ** 2 for g in values) / len(values))
        full = self._buf[-1][0] - self._buf[0][0] >= self.window_ns * 0.9
        return full and std <= self.tolerance_g, mean, std


class ItemEventDetector:
    """Stable-to-stable weight changes become item events; unstable stretches are reported."""

    def __init__(self, item_threshold_g: float, drift_follow: float = 0.02) -> None:
        self.threshold_g = item_threshold_g
        self.drift_follow = drift_follow
        self.stable_g: float | None = None
        self.unstable_since: int | None = None
        self._peak = 0.0

    @property
    def unstable(self) -> bool:
        return self.unstable_since is not None

    def push(self, t_ns: int, grams: float, stable: bool, mean_g: float) -> list[WeightEvent]:
        events: list[WeightEvent] = []
        if self.stable_g is None:
            if stable:
                self.stable_g = mean_g
            return events
        if not stable:
            excursion = grams - self.stable_g
            if self.unstable_since is None:
                if abs(excursion) >= self.threshold_g / 2:
                    self.unstable_since = t_ns
                    self._peak = excursion
                    events.append(WeightEvent("unstable_start", t_ns, weight_g=grams))
            elif abs(excursion) > abs(self._peak):
                self._peak = excursion
            return events
        delta = mean_g - self.stable_g
        if self.unstable_since is not None:
            events.append(
                WeightEvent(
                    "unstable_end",
                    t_ns,
                    delta_g=delta,
                    weight_g=mean_g,
                    start_ns=self.unstable_since,
                    peak_g=self._peak,
                    bump=abs(delta) < self.threshold_g,
                )
            )
            self.unstable_since = None
        if abs(delta) >= self.threshold_g:
            kind = "item_added" if delta > 0 else "item_removed"
            events.append(WeightEvent(kind, t_ns, delta_g=delta, weight_g=mean_g))
            self.stable_g = mean_g
        else:
            # Below the threshold: follow slow drift and creep, never a step.
            self.stable_g += (mean_g - self.stable_g) * self.drift_follow
        return events


class WeightPipeline:
    """Raw samples in, weight readings and events out. Not thread-safe: one feeder."""

    def __init__(
        self,
        calibration: Calibration,
        *,
        item_threshold_g: float = 15.0,
        stable_window_s: float = 0.3,
        stable_tolerance_g: float = 4.0,
        median_n: int = 5,
    ) -> None:
        self.calibration = calibration
        self.spikes = SpikeFilter(calibration.channels, median_n)
        self.window = StabilityWindow(stable_window_s, stable_tolerance_g)
        self.detector = ItemEventDetector(item_threshold_g)
        self.last: WeightReading | None = None
        self.last_counts: tuple[float, ...] | None = None
        self.samples = 0

    def push(self, sample: RawSample) -> tuple[WeightReading | None, list[WeightEvent]]:
        self.samples += 1
        counts = self.spikes.push(sample.counts)
        if counts is None:
            return None, []
        self.last_counts = counts
        grams = self.calibration.grams(counts)
        stable, mean, std = self.window.push(sample.t_ns, grams)
        reading = WeightReading(sample.t_ns, grams, stable, std)
        self.last = reading
        return reading, self.detector.push(sample.t_ns, grams, stable, mean)

    def run(self, samples: Iterable[RawSample]) -> Iterator[WeightEvent]:
        """Iterator form: all events of a sequence of raw samples."""
        for s in samples:
            yield from self.push(s)[1]
