"""One timeline for the simulated cart: items placed and removed, bumps, the walk through the store.

The load cells, the IMU, the UWB tag and (later) the synthetic camera scene all read the same
:class:`Scenario`, so what the camera shows and what the scale weighs agree. Scenarios are
deterministic from a seed.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class ScenarioClock:
    """Scenario seconds on the host's monotonic clock: 0 at ``t0_ns`` (by default, when the
    clock is made). Every simulated device of one cart reads the same clock, so what the camera
    shows, what the scale weighs and what the IMU feels happen at the same scenario time.

    Calling the clock gives the scenario time now; :meth:`at` converts a host timestamp."""

    def __init__(self, t0_ns: int | None = None) -> None:
        self.t0_ns = time.monotonic_ns() if t0_ns is None else t0_ns

    def at(self, host_ns: int) -> float:
        return (host_ns - self.t0_ns) / 1e9

    def __call__(self) -> float:
        return self.at(time.monotonic_ns())

    def host_ns(self, t_s: float) -> int:
        """The host monotonic time (ns) of scenario second ``t_s``."""
        return self.t0_ns + int(t_s * 1e9)


@dataclass(frozen=True)
class ItemEvent:
    """A shopper's hand puts an item in (``grams`` > 0) or takes one out (``grams`` < 0).

    The hand is in contact from ``t_s`` for ``hand_s``; the platform then rings down (amplitude
    15 % of the item's weight, time constant ``ring_tau_s``). The load has settled at
    :attr:`settle_s`, when the ringing is below 2 g (the cells' noise): detection latency is
    measured from there.
    """

    t_s: float
    grams: float
    hand_s: float = 0.6
    x: float = 0.5  # position on the platform, 0..1 across
    y: float = 0.5  # 0..1 along
    sku: str = ""
    ring_tau_s: float = 0.06
    #: The shopper showed the barcode to the camera before placing (the scan takes ``scan_s``
    #: before ``t_s``); False: the item went in unscanned, barcode away from the camera.
    scanned: bool = True
    scan_s: float = 1.2

    @property
    def release_s(self) -> float:
        return self.t_s + self.hand_s

    @property
    def settle_s(self) -> float:
        ring_g = 0.15 * abs(self.grams)
        return self.release_s + self.ring_tau_s * math.log(max(ring_g / 2.0, 1.0))


@dataclass(frozen=True)
class Bump:
    """The cart hits something: the platform rings, the IMU sees a jolt; no weight changes."""

    t_s: float
    amplitude_g: float = 150.0
    accel_g: float = 1.2
    freq_hz: float = 6.0
    tau_s: float = 0.15

    @property
    def end_s(self) -> float:
        return self.t_s + 5 * self.tau_s


@dataclass(frozen=True)
class HandWave:
    """A hand moves over the basket holding nothing (no weight change, no barcode)."""

    t_s: float
    duration_s: float = 1.5


@dataclass
class Scenario:
    duration_s: float
    items: list[ItemEvent] = field(default_factory=list)
    bumps: list[Bump] = field(default_factory=list)
    #: (t_s, x_mm, y_mm) waypoints of the cart's walk; linear in between.
    path: list[tuple[float, float, float]] = field(default_factory=list)
    waves: list[HandWave] = field(default_factory=list)
    #: (t_s, gain): the store's lighting switches to ``gain`` at ``t_s`` (1.0 = normal).
    light_steps: list[tuple[float, float]] = field(default_factory=list)
    seed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_item(self, event: ItemEvent) -> None:
        """Add an event while the simulation runs (interactive use, calibration)."""
        with self._lock:
            self.items = sorted([*self.items, event], key=lambda e: e.t_s)

    def snapshot(self) -> tuple[list[ItemEvent], list[Bump]]:
        with self._lock:
            return self.items, self.bumps

    def position_mm(self, t_s: float) -> tuple[float, float]:
        if not self.path:
            return (0.0, 0.0)
        if t_s <= self.path[0][0]:
            return self.path[0][1:]  # type: ignore[return-value]
        for (t0, x0, y0), (t1, x1, y1) in zip(self.path, self.path[1:], strict=False):
            if t0 <= t_s <= t1:
                a = (t_s - t0) / (t1 - t0) if t1 > t0 else 1.0
                return (x0 + a * (x1 - x0), y0 + a * (y1 - y0))
        return self.path[-1][1:]  # type: ignore[return-value]

    def is_moving(self, t_s: float) -> bool:
        x0, y0 = self.position_mm(t_s - 0.25)
        x1, y1 = self.position_mm(t_s + 0.25)
        return math.hypot(x1 - x0, y1 - y0) > 50


def _store_walk(rng: random.Random, duration_s: float) -> list[tuple[float, float, float]]:
    """Aisles 2.5 m apart, 20 m long; walk at about 0.8 m/s with stops at shelves."""
    t, x, y = 0.0, 1000.0, 1000.0
    path = [(t, x, y)]
    while t < duration_s:
        if rng.random() < 0.5:
            nx, ny = x, rng.uniform(1000, 21000)
        else:
            nx, ny = rng.choice([1000.0, 3500.0, 6000.0, 8500.0, 11000.0]), y
        t += math.hypot(nx - x, ny - y) / 800.0 + 0.1
        x, y = nx, ny
        path.append((t, x, y))
        t += rng.uniform(2, 8)  # stop at a shelf
        path.append((t, x, y))
    return path


def generate(
    kind: str,
    duration_s: float,
    seed: int = 0,
    *,
    min_item_g: float = 20.0,
    max_item_g: float = 2000.0,
    item_every_s: float = 8.0,
    bump_every_s: float = 20.0,
    products: Sequence[tuple[str, float]] | None = None,
    unscanned_rate: float = 0.2,
    wave_rate: float = 0.15,
) -> Scenario:
    """A deterministic scenario.

    ``shopping``: items added (and sometimes taken out again) every ``item_every_s`` on average,
    about ``unscanned_rate`` of them unscanned, hands waving over the basket now and then, bumps in
    between; ``idle``: nothing happens; ``bumpy``: bumps and walking, no items.
    ``products``: (sku, grams) pairs to draw items from (a catalogue), so weights and pictures
    agree; without it, weights are drawn log-uniformly between ``min_item_g`` and ``max_item_g``.
    """
    if kind not in ("shopping", "idle", "bumpy"):
        raise ValueError(f"unknown scenario {kind!r}")
    rng = random.Random(seed)
    sc = Scenario(duration_s=duration_s, seed=seed)
    if kind == "idle":
        return sc
    sc.path = _store_walk(rng, duration_s)
    busy: list[tuple[float, float]] = []  # appended in time order, never overlapping

    def free(a: float, b: float) -> bool:
        i = bisect.bisect_left(busy, (a,))
        near = busy[max(0, i - 1) : i + 3]
        return all(b < s - 0.5 or a > e + 0.5 for s, e in near)

    if kind == "shopping":
        t = 3.0
        inside: list[ItemEvent] = []
        while t < duration_s - 4:
            if rng.random() < wave_rate:
                wave = HandWave(t_s=t, duration_s=rng.uniform(1.0, 2.0))
                sc.waves.append(wave)
                busy.append((wave.t_s, wave.t_s + wave.duration_s))
                t += wave.duration_s + rng.uniform(1.0, 3.0)
                continue
            hand_s = rng.uniform(0.35, 0.9)
            if inside and rng.random() < 0.3:
                put = inside.pop(rng.randrange(len(inside)))
                ev = ItemEvent(
                    t_s=t,
                    grams=-put.grams,
                    hand_s=hand_s,
                    x=put.x,
                    y=put.y,
                    sku=put.sku,
                    scanned=False,
                    scan_s=0.0,
                )
            else:
                if products:
                    sku, grams = products[rng.randrange(len(products))]
                else:
                    grams = math.exp(rng.uniform(math.log(min_item_g), math.log(max_item_g)))
                    sku = f"sku-{rng.randrange(10_000):04d}"
                scanned = rng.random() >= unscanned_rate
                scan_s = rng.uniform(0.9, 1.6) if scanned else rng.uniform(0.4, 0.7)
                ev = ItemEvent(
                    t_s=t + scan_s,
                    grams=round(grams, 1),
                    hand_s=hand_s,
                    x=rng.uniform(0.2, 0.8),
                    y=rng.uniform(0.25, 0.8),
                    sku=sku,
                    scanned=scanned,
                    scan_s=scan_s,
                )
                inside.append(ev)
            sc.items.append(ev)
            busy.append((ev.t_s - ev.scan_s, ev.settle_s))
            t = ev.settle_s + rng.expovariate(1 / item_every_s) + 1.0
    t = rng.uniform(1, bump_every_s)
    while t < duration_s - 2:
        bump = Bump(
            t_s=t,
            amplitude_g=rng.uniform(50, 300),
            accel_g=rng.uniform(0.5, 2.0),
            freq_hz=rng.uniform(4, 9),
            tau_s=rng.uniform(0.08, 0.2),
        )
        if free(bump.t_s, bump.end_s):
            sc.bumps.append(bump)
        t += rng.expovariate(1 / bump_every_s) + 1.0
    return sc
