"""The device seam: one factory per cart, a fleet that shares a catalogue, stores that differ,
reservations, and the simulated truth only where the camera is synthetic."""

from __future__ import annotations

import itertools
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from capsight_edge.collector import Collector
from capsight_edge.devices import (
    HardwareFactory,
    RoutedFactory,
    SimFactory,
    factory_from_profile,
    fleet_catalogue,
)
from capsight_edge.devices.render import SceneRenderer
from capsight_edge.errors import DeviceBusy, DeviceUnavailable
from capsight_edge.profile import load_profile
from capsight_edge.sensors.sensorlog import SensorLog, read_messages
from tests.camera_helpers import record_clip
from tests.conftest import ROOT, SIM, doctor_checks, wait_until


def cart_profile(tmp_path: Path, name: str, store: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"extends = '{SIM}'\n[device]\nid = '{name}'\nstore_id = '{store}'\n{extra}")
    return path


DIM_STORE = (
    "[sim.store_conditions]\nlight_level = 0.55\nlight_jitter = 0.05\nblur_rate = 0.9\n"
    "glare_rate = 0.6\nocclusion_rate = 0.4\ncrumpled_rate = 0.7\nlight_changes_per_hour = 60\n"
)


def test_two_carts_of_a_fleet_share_the_catalogue_and_see_their_own_store(
    tmp_path: Path,
) -> None:
    a = load_profile(cart_profile(tmp_path, "cart-a", "store-bright"))
    b = load_profile(cart_profile(tmp_path, "cart-b", "store-dim", DIM_STORE))
    fa, fb = SimFactory(a, seed=1), SimFactory(b, seed=2)
    try:
        # One catalogue: sku-0007 is the same product (code, weight, look) on both carts.
        assert fa.catalogue.products == fb.catalogue.products
        assert fa.catalogue.by_sku("sku-0007").code == fb.catalogue.by_sku("sku-0007").code
        # Each cart's shopper is its own, drawn from that one catalogue.
        assert fa.scenario.items != fb.scenario.items
        skus = {p.sku for p in fa.catalogue.products}
        assert {e.sku for e in fa.scenario.items + fb.scenario.items} <= skus
        # Different stores, different worlds.
        assert fa.conditions != fb.conditions
        ca = [fa.conditions.event(1, i) for i in range(200)]
        cb = [fb.conditions.event(1, i) for i in range(200)]
        assert np.mean([c.light_gain for c in cb]) < np.mean([c.light_gain for c in ca]) - 0.3
        assert sum(c.glare for c in cb) > 2 * sum(c.glare for c in ca)
        steps_b = SceneRenderer(fb.scenario, fb.catalogue, conditions=fb.conditions).light_steps
        assert steps_b and not SceneRenderer(fa.scenario, fa.catalogue).light_steps
    finally:
        fa.close()
        fb.close()
    # Another fleet (another catalogue seed) has other products.
    other = load_profile(cart_profile(tmp_path, "cart-c", "x", "[sim]\ncatalogue_seed = 99\n"))
    assert fleet_catalogue(other).products[0].code != fleet_catalogue(a).products[0].code


def test_every_product_has_a_look_of_its_own_in_clean_light() -> None:
    """A recogniser is trained on these: no two products may look alike, front or back."""
    profile = load_profile(SIM)
    catalogue = fleet_catalogue(profile)
    for side in ("front", "back"):
        thumbs = [
            cv2.resize(getattr(p, side), (64, 48), interpolation=cv2.INTER_AREA).astype(float)
            for p in catalogue.products
        ]
        closest = min(
            float(np.mean(np.abs(thumbs[i] - thumbs[j])))
            for i, j in itertools.combinations(range(len(thumbs)), 2)
        )
        assert closest > 10.0, (side, closest)


def _collect(profile_path: Path, tmp_path: Path, seconds: float) -> list[str]:
    """Run the Collector on the profile's devices; the sensor log's topics."""
    profile = load_profile(profile_path, data_dir=tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "sensors.mcap"
    with factory_from_profile(profile, seed=3) as factory:
        log = SensorLog(log_path)
        collector = Collector(profile, factory=factory, sensor_log=log)
        try:
            collector.start()
            assert wait_until(lambda: collector.stats["frames"] >= int(seconds * 10), 30)
        finally:
            collector.stop()
            log.close()
    return sorted({topic for topic, _, _ in read_messages(log_path)})


def test_sim_truth_only_from_a_synthetic_camera(tmp_path: Path) -> None:
    synthetic = _collect(SIM, tmp_path / "a", 2.0)
    assert "/sim/truth" in synthetic and "/camera/motion" in synthetic
    clip = record_clip(
        tmp_path / "replay.mp4",
        SceneRenderer(fleet_catalogue_scenario(), fleet_catalogue(load_profile(SIM))),
        seconds=3,
    )
    replay = tmp_path / "replay.toml"
    replay.write_text(
        f"extends = '{SIM}'\n[camera]\nsource = 'file'\nreplay_path = '{clip}'\nfps = 15.0\n"
    )
    real_camera = _collect(replay, tmp_path / "b", 1.5)
    assert "/camera/motion" in real_camera and "/sim/truth" not in real_camera
    # The log holds only the channels that were written: no empty /sim/truth channel either.
    with open(tmp_path / "b" / "sensors.mcap", "rb") as fh:
        assert b"/sim/truth" not in fh.read()


def fleet_catalogue_scenario():  # type: ignore[no-untyped-def]
    from firmware_bridge.sim.scenario import generate

    cat = fleet_catalogue(load_profile(SIM))
    return generate("shopping", 10, seed=4, products=[(p.sku, p.weight_g) for p in cat.products])


def test_a_mixed_profile_routes_each_device_and_shares_one_scenario(tmp_path: Path) -> None:
    clip = record_clip(
        tmp_path / "replay.mp4",
        SceneRenderer(fleet_catalogue_scenario(), fleet_catalogue(load_profile(SIM))),
        seconds=1,
    )
    prof = cart_profile(
        tmp_path, "laptop", "s", f"[camera]\nsource = 'file'\nreplay_path = '{clip}'\n"
    )
    with factory_from_profile(load_profile(prof)) as factory:
        assert isinstance(factory, RoutedFactory)
        assert not factory.simulated("camera") and factory.simulated("mcu")
        assert type(factory.camera()).__name__ == "FileReplaySource"
        transport = factory.mcu_transport()
        assert transport.name == factory.sim.mcu_sim.port  # the simulator's pty
        assert factory.hands is factory.sim.hands
        # the simulator's pty folder is reported through the routed factory too, so a cart
        # with a real camera and a simulated MCU records it for the next start to remove
        assert factory.temp_dirs() == [factory.sim.mcu_sim.temp_dir]
        assert Path(factory.temp_dirs()[0]).is_dir()
    with factory_from_profile(load_profile(SIM)) as factory:
        assert isinstance(factory, SimFactory)
        with pytest.raises(DeviceBusy):  # one consumer per device
            factory.camera(), factory.camera()


@pytest.fixture
def serial_port(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real tty (a pty's slave, behind a by-id style link) standing in for the MCU port."""
    master, slave = pty.openpty()
    link = tmp_path / "usb-capsight-mcu"
    os.symlink(os.ttyname(slave), link)
    yield link
    os.close(master)
    os.close(slave)


def test_a_reserved_port_is_busy_for_every_other_user(tmp_path: Path, serial_port: Path) -> None:
    prof = cart_profile(
        tmp_path, "real", "s", f"[mcu]\ntransport = 'serial'\nport = '{serial_port}'\n"
    )
    profile = load_profile(prof, data_dir=tmp_path)
    holder = HardwareFactory(profile)
    holder.mcu_transport()
    try:
        # The same process, through another factory (another name for the same tty, too).
        with pytest.raises(DeviceBusy, match=f"pid {os.getpid()}"):
            HardwareFactory(profile).mcu_transport()
        # Another process: the doctor says who holds it instead of opening it twice.
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "capsight_edge.cli.main",
                "doctor",
                "--json",
                "--only",
                "mcu",
                "--profile",
                str(prof),
                "--data",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        link = next(c for c in doctor_checks(res.stdout) if c["name"] == "mcu link")
        assert link["status"] == "warn" and "in use by pid" in link["detail"], link
    finally:
        holder.close()
    again = HardwareFactory(profile)  # released on close
    again.mcu_transport()
    again.close()


def test_a_killed_holder_leaves_no_reservation(tmp_path: Path, serial_port: Path) -> None:
    prof = cart_profile(
        tmp_path, "real", "s", f"[mcu]\ntransport = 'serial'\nport = '{serial_port}'\n"
    )
    code = (
        "import sys, time; from capsight_edge.profile import load_profile; "
        "from capsight_edge.devices import HardwareFactory; "
        f"HardwareFactory(load_profile({str(prof)!r})).mcu_transport(); "
        "print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    with pytest.raises(DeviceBusy, match=f"pid {child.pid}"):
        HardwareFactory(load_profile(prof)).mcu_transport()
    child.kill()
    child.wait()
    f = HardwareFactory(load_profile(prof))
    f.mcu_transport()  # the kernel dropped the dead holder's lock
    f.close()


def test_missing_devices_are_unavailable_with_a_remedy(tmp_path: Path) -> None:
    prof = cart_profile(
        tmp_path,
        "real",
        "s",
        f"[mcu]\ntransport = 'serial'\nport = '{tmp_path}/ttyACM7'\n"
        "[imu]\ntransport = 'smbus'\ni2c_bus = 63\n",
    )
    with HardwareFactory(load_profile(prof)) as factory:
        for ask in (factory.mcu_transport, factory.i2c_bus):
            with pytest.raises(DeviceUnavailable) as exc:
                ask()
            assert "does not exist" in str(exc.value) and exc.value.remedy


def test_the_simulated_hands_put_weight_on_the_scale(tmp_path: Path) -> None:
    from capsight_edge.sensors.hub import SensorHub

    profile = load_profile(SIM, data_dir=tmp_path)
    with (
        SimFactory(profile, scenario_kind="idle") as factory,
        SensorHub(profile, factory=factory) as hub,
    ):
        # A simulated cart tares itself, then finds its (empty) stable weight.
        assert wait_until(lambda: hub.calibrated and hub.pipeline.detector.stable_g is not None, 10)
        start = time.monotonic()
        factory.hands.place(500.0)
        assert time.monotonic() - start < 5
        assert wait_until(
            lambda: any(e.kind == "item_added" for e in hub.event_history), timeout_s=5
        )
        added = next(e for e in hub.event_history if e.kind == "item_added")
        assert abs(added.delta_g - 500.0) < 40


def test_studio_frames_show_a_cart_in_use_and_label_the_product_in_the_hand() -> None:
    """Rendered product frames carry earlier picks lying in the basket, as a fleet's frames
    do; the label (sku, box) is the product in the hand, never one of those."""
    from capsight_edge.devices.studio import product_frame
    from capsight_edge.scene.catalogue import Catalogue
    from capsight_edge.scene.conditions import CLEAN

    cat = Catalogue(12, seed=1)
    crowded = 0
    for seed in range(12):
        sku = cat.products[seed].sku
        got = product_frame(cat, sku, CLEAN, (320, 180), seed)
        if got is None:
            continue
        _frame, truth = got
        assert truth.moving_sku == sku and truth.item_bbox is not None
        assert sku not in truth.placed
        crowded += bool(truth.placed)
    assert crowded >= 6


def test_model_input_is_area_averaged_from_any_frame_size() -> None:
    """to_input's two-step area average stays within a grey level or two of OpenCV's plain
    INTER_AREA on a rendered 720p frame, and passes a frame of the model's size through."""
    import numpy as np

    from capsight_edge.devices.studio import product_frame
    from capsight_edge.runtime.card import CardInput, to_input
    from capsight_edge.scene.catalogue import Catalogue
    from capsight_edge.scene.conditions import CLEAN

    cat = Catalogue(6, seed=1)
    frame = next(
        got[0]
        for s in range(20)
        if (got := product_frame(cat, cat.products[0].sku, CLEAN, (1280, 720), s)) is not None
    )
    spec = CardInput(name="image", width=144, height=144, scale=1.0, mean=[0, 0, 0], std=[1, 1, 1])
    ours = to_input([frame], spec)[0].transpose(1, 2, 0)[..., ::-1]  # back to HWC BGR
    plain = cv2.resize(frame, (144, 144), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert float(np.abs(ours - plain).mean()) < 1.5
    small = cv2.resize(frame, (144, 144), interpolation=cv2.INTER_AREA)
    assert np.array_equal(to_input([small], spec)[0].transpose(1, 2, 0)[..., ::-1], small)
