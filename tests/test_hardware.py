"""Real devices, where present: each test skips with the reason when its device is absent.

Point them at hardware with environment variables:
``CAPSIGHT_CAMERA`` (a /dev/video path or index), ``CAPSIGHT_MCU_PORT`` (the MCU's serial port,
with ``CAPSIGHT_MCU_BAUD``), ``CAPSIGHT_IMU_BUS`` (an I2C bus number, with ``CAPSIGHT_IMU_ADDR``).
"""

from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.hardware


def test_real_camera_delivers_frames() -> None:
    from capsight_edge.camera.sources import V4l2Source

    device = os.environ.get("CAPSIGHT_CAMERA") or next(iter(sorted(glob.glob("/dev/video*"))), None)
    if device is None:
        pytest.skip("no camera: set CAPSIGHT_CAMERA or plug one in (/dev/video*)")
    src = V4l2Source(device, width=640, height=480, fps=15)
    src.open()
    try:
        frames = [src.read() for _ in range(10)]
    finally:
        src.close()
    assert all(f is not None and f.image.size for f in frames)


def test_real_mcu_says_hello() -> None:
    from firmware_bridge.link import LinkState, McuLink
    from firmware_bridge.messages import GetInfo
    from firmware_bridge.transport import SerialTransport

    port = os.environ.get("CAPSIGHT_MCU_PORT")
    if not port:
        pytest.skip("no MCU: set CAPSIGHT_MCU_PORT to its serial port")
    link = McuLink(SerialTransport(port, int(os.environ.get("CAPSIGHT_MCU_BAUD", "921600"))))
    with link:
        assert link.wait_for_state(LinkState.UP, 5)
        assert link.request(GetInfo(), timeout_s=3).payload.TYPE.name == "HELLO"


def test_real_imu_answers() -> None:
    bus_no = os.environ.get("CAPSIGHT_IMU_BUS")
    if bus_no is None or not os.path.exists(f"/dev/i2c-{bus_no}"):
        pytest.skip("no I2C IMU: set CAPSIGHT_IMU_BUS to a bus with an MPU-6050")
    import smbus2

    from capsight_edge.sensors.imu import Mpu6050

    with smbus2.SMBus(int(bus_no)) as bus:
        imu = Mpu6050(bus=bus, address=int(os.environ.get("CAPSIGHT_IMU_ADDR", "0x68"), 0))
        imu.probe()
        imu.configure(100)
        assert 0.5 < imu.read().accel_magnitude_g < 1.5
