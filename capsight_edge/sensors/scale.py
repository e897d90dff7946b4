"""Taring and calibrating the scale, as a technician does it: the flows behind
``capsight scale tare`` and ``capsight scale calibrate``.

Both run on a cart at rest: :func:`scale_session` opens the profile's devices with nobody
shopping (a simulated cart gets an idle scenario) and without the automatic tare. Whenever a
step needs something done to the cart (empty it, put the reference weight on it), the factory's
``hands`` do it on a simulated cart; on a real one the caller's ``prompt`` asks a person and
returns when they are done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capsight_edge.devices import factory_from_profile
from capsight_edge.profile.schema import Profile
from capsight_edge.sensors.calibration import FILENAME
from capsight_edge.sensors.hub import SensorHub

#: ``prompt(text, person_needed)``: show a step; when ``person_needed``, return only once a
#: person has done it (a simulated cart's hands do it themselves: then it is only news).
Prompt = Callable[[str, bool], None]


@dataclass(frozen=True)
class ScaleResult:
    zero_counts: list[float]
    counts_per_gram: list[float]
    file: Path


@contextlib.contextmanager
def scale_session(profile: Profile, *, link_timeout_s: float = 5.0) -> Iterator[SensorHub]:
    """The cart's sensors at rest, with the MCU link up."""
    with (
        factory_from_profile(profile, scenario_kind="idle") as factory,
        SensorHub(profile, factory=factory, auto_tare=False) as hub,
    ):
        hub.require_link(link_timeout_s)
        yield hub


def _file(profile: Profile) -> Path:
    return Path(os.path.expanduser(profile.storage.data_dir)) / FILENAME


def tare(hub: SensorHub, *, samples: int = 40) -> ScaleResult:
    """Zero the empty cart with the MCU's average of ``samples`` conversions per cell; stored."""
    means = hub.tare(samples=samples)
    cal = hub.calibration
    return ScaleResult(list(means), list(cal.counts_per_gram), _file(hub.profile))


def calibrate(
    hub: SensorHub,
    known_g: float,
    *,
    cell: int | None = None,
    prompt: Prompt,
    timeout_s: float = 15.0,
) -> ScaleResult:
    """Scale the cells with a reference weight of ``known_g`` grams (``cell``: one cell, the
    weight over its corner). Tares first when the cart has no calibration yet. Stored
    atomically; the stable weight is awaited up to ``timeout_s``."""
    if known_g <= 0:
        raise ValueError("the reference weight must be positive")
    cells = hub.profile.load_cells.count
    if cell is not None and not 0 <= cell < cells:
        raise ValueError(f"--cell {cell}: this cart has cells 0 to {cells - 1}")
    hands = hub.factory.hands if hub.factory.simulated("mcu") else None
    if not hub.calibrated:
        prompt("Empty the cart to tare it first.", hands is None)
        hub.tare()
    where = "on the cart" if cell is None else f"over the corner of cell {cell}"
    prompt(f"Place {known_g:g} g {where}.", hands is None)
    if hands is not None:
        # Cells sit at the platform's corners: cell 0 front left, 1 front right, 2 back left...
        x, y = (0.5, 0.5) if cell is None else ((cell % 2) * 0.98 + 0.01, (cell // 2) * 0.98 + 0.01)
        hands.place(known_g, x=x, y=y)
    cal = hub.calibrate(known_g, cell, timeout_s=timeout_s)
    return ScaleResult(list(cal.zero_counts), list(cal.counts_per_gram), _file(hub.profile))
