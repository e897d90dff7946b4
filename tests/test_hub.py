"""The sensor hub on the sim profile: real link, real pipeline, real log, simulated last inch."""

from __future__ import annotations

from pathlib import Path

from capsight_edge.devices import SimFactory, factory_from_profile
from capsight_edge.profile import load_profile
from capsight_edge.sensors.hub import SensorHub
from capsight_edge.sensors.sensorlog import read_messages
from firmware_bridge.sim.scenario import ItemEvent, Scenario
from tests.conftest import SIM, wait_until


def test_item_placed_on_the_simulated_cart_is_detected_and_logged(tmp_path: Path) -> None:
    profile = load_profile(SIM, data_dir=tmp_path)
    scenario = Scenario(duration_s=60, items=[ItemEvent(t_s=2.0, grams=350.0, hand_s=0.5)])
    log_path = tmp_path / "sensors.mcap"
    with (
        SimFactory(profile, scenario=scenario, seed=1) as factory,
        SensorHub(profile, factory=factory, log_path=log_path) as hub,
    ):
        assert wait_until(
            lambda: any(e.kind == "item_added" for e in hub.event_history), timeout_s=15
        )
        added = next(e for e in hub.event_history if e.kind == "item_added")
        assert abs(added.delta_g - 350.0) < 30  # profile scale vs the simulated cells
        signals = hub.signals(added.t_ns)
        assert signals["weight_delta"] and signals["weight_added"]
        assert wait_until(lambda: hub.last_imu is not None and hub.last_uwb is not None)
        snap = hub.snapshot()
        assert snap["link"]["state"] == "up" and snap["tared"]
    topics = {m[0] for m in read_messages(log_path)}
    assert {
        "/weight/raw",
        "/weight/fused",
        "/weight/events",
        "/imu",
        "/position/uwb",
        "/link/health",
    } <= topics


def test_nmea_positioning_through_the_hub(tmp_path: Path) -> None:
    prof = tmp_path / "gnss.toml"
    prof.write_text(f"extends = '{SIM}'\n[positioning]\nsource = 'nmea'\nnmea_transport = 'sim'\n")
    profile = load_profile(prof, data_dir=tmp_path)
    with factory_from_profile(profile) as factory, SensorHub(profile, factory=factory) as hub:
        assert wait_until(lambda: hub.last_fix is not None, timeout_s=6)
        assert hub.snapshot()["gnss"]["fixes"] >= 1
