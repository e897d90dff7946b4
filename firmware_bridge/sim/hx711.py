"""What the HX711 load-cell amplifiers of a cart platform report, sample by sample.

Modelled from what real boards do: a few counts of noise, a zero that drifts with temperature, creep
under a standing load, occasional spikes (all-ones, zero) and rail codes (0x7FFFFF, 0x800000), a
hand that pushes and wobbles while placing an item, a platform that rings down after a release or a
bump. Deterministic from a seed; evaluated at any time, so the same model drives the real-time pty
simulator and fast simulated-time benchmarks.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

from firmware_bridge.sim.scenario import Bump, ItemEvent, Scenario

RAIL_HIGH = 0x7FFFFF
RAIL_LOW = -0x800000
_SPIKES = (RAIL_HIGH, RAIL_LOW, 0, 0x3FFFFF, 0x0FFFFF, -1)


@dataclass
class CellParams:
    zero_counts: int = 80_000
    counts_per_gram: float = 10.0  # at gain 128
    noise_counts: float = 15.0  # rms, at 80 SPS
    drift_counts_per_min: float = 6.0
    creep_fraction: float = 0.0005
    creep_tau_s: float = 30.0


def cell_shares(n: int, x: float, y: float) -> list[float]:
    """How a load at (x, y) on the platform splits over ``n`` cells (4: one per corner)."""
    if n == 4:
        return [(1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y]
    return [1.0 / n] * n


def _hand_wobble(ev: ItemEvent, t: float) -> float:
    """The hand pressing and moving while in contact (grams); smooth, deterministic."""
    a = 0.25 * abs(ev.grams) + 40.0
    ph = (zlib.crc32(ev.sku.encode()) % 1000) / 1000 * 2 * math.pi
    return a * (
        0.6
        + 0.5 * math.sin(2 * math.pi * 3.1 * t + ph)
        + 0.3 * math.sin(2 * math.pi * 7.3 * t + 2 * ph)
    )


class LoadModel:
    """Total and per-cell load (grams) over time for a scenario."""

    def __init__(self, scenario: Scenario, n_cells: int = 4, base_load_g: float = 0.0) -> None:
        self.scenario = scenario
        self.n = n_cells
        self.base_load_g = base_load_g

    def cell_loads(self, t: float) -> list[float]:
        items, bumps = self.scenario.snapshot()
        loads = [self.base_load_g / self.n] * self.n
        for ev in items:
            if t < ev.t_s:
                break
            shares = cell_shares(self.n, ev.x, ev.y)
            release = ev.t_s + ev.hand_s
            if t < release:
                frac = (t - ev.t_s) / ev.hand_s
                # Placing: the item's weight comes on gradually, the hand pushes on top.
                # Taking out: the hand presses first, then lifts the item away.
                item = ev.grams * frac if ev.grams > 0 else ev.grams * max(0.0, frac * 2 - 1)
                extra = item + _hand_wobble(ev, t - ev.t_s)
            else:
                dt = t - release
                ring = (
                    0.15
                    * abs(ev.grams)
                    * math.exp(-dt / ev.ring_tau_s)
                    * math.cos(2 * math.pi * 9.0 * dt)
                )
                extra = ev.grams + ring
            for i in range(self.n):
                loads[i] += extra * shares[i]
        for b in bumps:
            if b.t_s <= t <= b.end_s:
                dt = t - b.t_s
                ring = (
                    b.amplitude_g * math.exp(-dt / b.tau_s) * math.sin(2 * math.pi * b.freq_hz * dt)
                )
                for i in range(self.n):
                    loads[i] += ring / self.n * (1.0 + 0.3 * (i % 2 - 0.5))
        return loads

    def total_g(self, t: float) -> float:
        return sum(self.cell_loads(t))

    def settled_load_g(self, t: float) -> float:
        """The load that items put on the platform at ``t`` once everything has settled."""
        items, _ = self.scenario.snapshot()
        return self.base_load_g + sum(ev.grams for ev in items if ev.settle_s <= t)


class Hx711Array:
    """Raw 24-bit counts of ``n`` HX711 channels over a :class:`LoadModel`."""

    def __init__(
        self,
        model: LoadModel,
        *,
        seed: int = 0,
        spike_rate: float = 0.01,
        cells: list[CellParams] | None = None,
    ) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.spike_rate = spike_rate
        self.cells = cells or [
            CellParams(
                zero_counts=80_000 + 7_000 * i, counts_per_gram=10.0 * (1 + 0.03 * (i - 1.5))
            )
            for i in range(model.n)
        ]
        self.gain = 128
        self.rate_sps = 80
        self._pending_gain: int | None = None
        self._drift = [0.0] * model.n
        self._last_t: float | None = None
        self._creep = [0.0] * model.n
        self._creep_load = [0.0] * model.n

    def set_gain(self, gain: int) -> None:
        # The HX711 applies a new gain to the conversion after the next one.
        self._pending_gain = gain

    def sample(self, t: float) -> tuple[int, ...]:
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        gain_now = self.gain
        if self._pending_gain is not None:
            self.gain, self._pending_gain = self._pending_gain, None
        scale = gain_now / 128.0
        noise_scale = 1.0 if self.rate_sps == 80 else 0.55
        loads = self.model.cell_loads(t)
        out = []
        for i, cell in enumerate(self.cells):
            # Zero drift: a slow random walk (temperature).
            self._drift[i] += self.rng.gauss(
                0.0, cell.drift_counts_per_min / 60.0 * math.sqrt(max(dt, 1e-6) * 60.0)
            )
            # Creep: a standing load slowly reads a little heavier.
            target = loads[i] * cell.creep_fraction
            k = 1.0 - math.exp(-dt / cell.creep_tau_s) if dt else 0.0
            self._creep[i] += (target - self._creep[i]) * k
            value = (
                cell.zero_counts
                + self._drift[i]
                + (loads[i] + self._creep[i]) * cell.counts_per_gram
            ) * scale
            value += self.rng.gauss(0.0, cell.noise_counts * noise_scale)
            counts = round(value)
            if self.rng.random() < self.spike_rate:
                counts = self.rng.choice(_SPIKES)
            out.append(max(RAIL_LOW, min(RAIL_HIGH, counts)))
        return tuple(out)


def bump_accel_g(bumps: list[Bump], t: float) -> float:
    """Extra acceleration magnitude (g) the IMU feels from bumps at ``t``."""
    total = 0.0
    for b in bumps:
        if b.t_s <= t <= b.end_s:
            dt = t - b.t_s
            total += b.accel_g * math.exp(-dt / (b.tau_s / 2)) * math.cos(2 * math.pi * 12 * dt)
    return total
