"""Real devices, where present, opened the way a cart opens them (through the profile's
``HardwareFactory``): each test skips with the reason when its device is absent.

Point them at hardware with environment variables:
``CAPSIGHT_CAMERA`` (a /dev/video path or index), ``CAPSIGHT_MCU_PORT`` (the MCU's serial port,
with ``CAPSIGHT_MCU_BAUD``), ``CAPSIGHT_IMU_BUS`` (an I2C bus number, with ``CAPSIGHT_IMU_ADDR``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from tests.conftest import SIM

pytestmark = pytest.mark.hardware


def hardware(tmp_path: Path, toml: str):  # type: ignore[no-untyped-def]
    """A HardwareFactory for a profile that extends sim.toml with ``toml``."""
    from capsight_edge.devices import HardwareFactory
    from capsight_edge.profile import load_profile

    path = tmp_path / "hw.toml"
    path.write_text(f"extends = '{SIM}'\n{toml}")
    return HardwareFactory(load_profile(path, data_dir=tmp_path))


def test_real_camera_delivers_frames(tmp_path: Path) -> None:
    device = os.environ.get("CAPSIGHT_CAMERA") or next(iter(sorted(glob.glob("/dev/video*"))), None)
    if device is None:
        pytest.skip("no camera: set CAPSIGHT_CAMERA or plug one in (/dev/video*)")
    toml = f"[camera]\nsource = 'v4l2'\ndevice = '{device}'\nwidth_px = 640\nheight_px = 480\n"
    with hardware(tmp_path, toml) as factory:
        src = factory.camera()
        src.open()
        frames = [src.read() for _ in range(10)]
        src.close()
    assert all(f is not None and f.image.size for f in frames)


def test_real_mcu_says_hello(tmp_path: Path) -> None:
    from firmware_bridge.link import LinkState, McuLink
    from firmware_bridge.messages import GetInfo

    port = os.environ.get("CAPSIGHT_MCU_PORT")
    if not port:
        pytest.skip("no MCU: set CAPSIGHT_MCU_PORT to its serial port")
    baud = os.environ.get("CAPSIGHT_MCU_BAUD", "921600")
    toml = f"[mcu]\ntransport = 'serial'\nport = '{port}'\nbaud = {baud}\n"
    with hardware(tmp_path, toml) as factory, McuLink(factory.mcu_transport()) as link:
        assert link.wait_for_state(LinkState.UP, 5)
        assert link.request(GetInfo(), timeout_s=3).payload.TYPE.name == "HELLO"


def test_real_imu_answers(tmp_path: Path) -> None:
    bus_no = os.environ.get("CAPSIGHT_IMU_BUS")
    if bus_no is None or not os.path.exists(f"/dev/i2c-{bus_no}"):
        pytest.skip("no I2C IMU: set CAPSIGHT_IMU_BUS to a bus with an MPU-6050")
    from capsight_edge.sensors.imu import Mpu6050

    address = int(os.environ.get("CAPSIGHT_IMU_ADDR", "0x68"), 0)
    toml = f"[imu]\ntransport = 'smbus'\ni2c_bus = {bus_no}\naddress = {address}\n"
    with hardware(tmp_path, toml) as factory:
        imu = Mpu6050(bus=factory.i2c_bus(), address=address)
        imu.probe()
        imu.configure(100)
        assert 0.5 < imu.read().accel_magnitude_g < 1.5
