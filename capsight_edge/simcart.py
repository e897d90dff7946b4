"""A whole simulated cart from one scenario: the MCU, IMU and positioning simulators behind the
real sensor hub, and the synthetic camera scene on the same clock (picture and weight agree)."""

from __future__ import annotations

import os
from typing import Any

from capsight_edge.profile.schema import Profile


def start_simulated_cart(
    profile: Profile,
    seed: int,
    *,
    log_path: str | os.PathLike[str] | None = None,
    item_every_s: float = 4.0,
    bump_every_s: float = 12.0,
    duration_s: float = 24 * 3600,
) -> tuple[Any, Any, Any]:
    """Start the sensor hub; return (hub, frame source, scenario). Stop the hub when done."""
    from capsight_edge.camera.sources import source_from_profile
    from capsight_edge.scene.catalogue import Catalogue
    from capsight_edge.sensors.hub import SensorHub
    from firmware_bridge.sim.scenario import generate

    catalogue = Catalogue(seed=seed)
    scenario = generate(
        "shopping",
        duration_s,
        seed=seed,
        item_every_s=item_every_s,
        bump_every_s=bump_every_s,
        products=[(p.sku, p.weight_g) for p in catalogue.products],
    )
    hub = SensorHub(profile, scenario=scenario, seed=seed, log_path=log_path)
    hub.start()
    clock = hub.sim.scenario_time if hub.sim is not None else None
    source = source_from_profile(
        profile, scenario=scenario, catalogue=catalogue, clock=clock, seed=seed
    )
    return hub, source, scenario
