"""What a store does to the pictures its carts take: light, motion blur, glare, fingers over the
label, crumpled packs.

A simulated fleet has one catalogue and several stores; each store has its own
:class:`StoreConditions` (rates per product event, and its light), so carts in different stores
see different worlds. Each product event draws its own :class:`Conditions` from the store's
rates, deterministically from the cart's seed and the event's index.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Conditions:
    """The conditions of one product event (what the camera sees while it happens)."""

    light_gain: float = 1.0
    blur_px: int = 0  # extra motion blur while moving
    glare: bool = False
    occluded: bool = False  # fingers across the barcode
    crumpled: bool = False


@dataclass(frozen=True)
class StoreConditions:
    """A store's conditions as rates per product event (0..1), and its light.

    ``light_level`` is the store's mean brightness (1.0 = normal), ``light_jitter`` the spread
    from one product event to the next (uniform, +/-), ``light_changes_per_hour`` how often the
    lights switch (a step to another brightness, held until the next switch)."""

    light_level: float = 0.975
    light_jitter: float = 0.225
    light_changes_per_hour: float = 0.0
    blur_rate: float = 0.4
    glare_rate: float = 0.15
    occlusion_rate: float = 0.1
    crumpled_rate: float = 0.2

    @classmethod
    def from_section(cls, section: Any) -> StoreConditions:
        """From a profile's ``[sim.store_conditions]`` table (same field names)."""
        return cls(**{f: getattr(section, f) for f in cls.__dataclass_fields__})

    def event(self, seed: int, index: int) -> Conditions:
        """The conditions of product event ``index`` on a cart seeded ``seed``."""
        rng = random.Random(seed * 100_003 + index)
        light = rng.uniform(
            self.light_level - self.light_jitter, self.light_level + self.light_jitter
        )
        blurred = rng.random() < self.blur_rate
        blur_px = rng.choice((3, 5)) if blurred else 0
        return Conditions(
            light_gain=max(0.2, light),
            blur_px=blur_px,
            glare=rng.random() < self.glare_rate,
            occluded=rng.random() < self.occlusion_rate,
            crumpled=rng.random() < self.crumpled_rate,
        )

    def light_steps(self, seed: int, duration_s: float) -> list[tuple[float, float]]:
        """(t_s, gain) switches of the store's lights over ``duration_s``: the lights go to
        another brightness around ``light_level`` at random times, ``light_changes_per_hour``
        on average."""
        if self.light_changes_per_hour <= 0:
            return []
        rng = random.Random(seed * 7_919 + 17)
        steps: list[tuple[float, float]] = []
        t = 0.0
        mean_gap = 3600.0 / self.light_changes_per_hour
        while True:
            t += rng.expovariate(1.0 / mean_gap)
            if t >= duration_s:
                return steps
            steps.append((round(t, 3), round(rng.uniform(0.7, 1.25), 3)))


#: Ideal studio conditions: no glare, blur, crumples, fingers or dim light.
CLEAN = StoreConditions(
    light_level=1.0,
    light_jitter=0.0,
    light_changes_per_hour=0.0,
    blur_rate=0.0,
    glare_rate=0.0,
    occlusion_rate=0.0,
    crumpled_rate=0.0,
)
