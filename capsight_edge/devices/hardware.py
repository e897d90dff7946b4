"""The cart's real devices: pyserial ports, smbus2 buses, a V4L2/UVC camera, a file replay.

Every device node is checked before it is handed out (missing, no permission) and reserved, so
two programs never drive one port. Nothing opens a device before it is asked for.
"""

from __future__ import annotations

import os
from typing import Any

from capsight_edge.devices.factory import DeviceFactory
from capsight_edge.errors import DeviceUnavailable
from capsight_edge.profile.schema import Profile


def _node(path: str, what: str, remedy: str) -> str:
    """``path`` resolved (by-id links to their tty), or DeviceUnavailable when it is missing or
    not accessible."""
    if "://" in path:  # pyserial URL (loop://, socket://, rfc2217://): nothing to check
        return path
    if not os.path.exists(path):
        raise DeviceUnavailable(f"{what} {path} does not exist", remedy=remedy)
    real = os.path.realpath(path)
    if not os.access(real, os.R_OK | os.W_OK):
        raise DeviceUnavailable(
            f"{what} {path} is not accessible to this user",
            remedy="add the user to the device's group (dialout, video or i2c)",
        )
    return real


class HardwareFactory(DeviceFactory):
    """Real devices named by the profile (``camera.device``, ``mcu.port``, ``imu.i2c_bus``,
    ``positioning.nmea_port``), or a file replayed as the camera (``camera.source = "file"``)."""

    kind = "hardware"

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)

    def camera(self) -> Any:
        from capsight_edge.camera.sources import FileReplaySource, V4l2Source

        cam = self.profile.camera
        if self.kinds.camera == "file":
            self._claim("camera", label=f"replay {cam.replay_path}")
            return FileReplaySource(cam.replay_path, realtime=cam.replay_realtime)
        node = cam.device
        if not cam.device.isdigit():
            node = _node(
                cam.device, "camera", "plug the camera in, or fix camera.device (ls /dev/video*)"
            )
        key = f"/dev/video{cam.device}" if cam.device.isdigit() else node
        self._claim("camera", key, f"camera {cam.device}")
        source = V4l2Source(
            cam.device,
            width=cam.width_px,
            height=cam.height_px,
            fps=cam.fps,
            pixel_format=cam.pixel_format,
        )
        self.on_close(source.close)
        return source

    def mcu_transport(self) -> Any:
        from firmware_bridge.transport import SerialTransport

        mcu = self.profile.mcu
        node = _node(
            mcu.port,
            "MCU port",
            "check the cable; use the /dev/serial/by-id/ path; is the user in group 'dialout'?",
        )
        self._claim("mcu", node, f"MCU port {mcu.port}")
        transport = SerialTransport(mcu.port, mcu.baud)
        self.on_close(transport.close)
        return transport

    def i2c_bus(self) -> Any:
        imu = self.profile.imu
        dev = f"/dev/i2c-{imu.i2c_bus}"
        _node(dev, "I2C bus", "enable I2C (dtparam=i2c_arm=on / jetson-io) and load i2c-dev")
        self._claim("imu", f"{dev}@{imu.address:#04x}", f"IMU on {dev} at {imu.address:#04x}")
        try:
            import smbus2

            bus = smbus2.SMBus(imu.i2c_bus)
        except (OSError, ImportError) as exc:
            raise DeviceUnavailable(
                f"cannot open {dev}: {exc}", remedy="add the user to group 'i2c'"
            ) from exc
        self.on_close(bus.close)
        return bus

    def nmea_transport(self) -> Any:
        from firmware_bridge.transport import SerialTransport

        pos = self.profile.positioning
        node = _node(pos.nmea_port, "GNSS receiver", "check the receiver's cable and port")
        self._claim("nmea", node, f"GNSS receiver {pos.nmea_port}")
        transport = SerialTransport(pos.nmea_port, pos.nmea_baud, timeout_s=0.2)
        self.on_close(transport.close)
        return transport

    def describe(self, device: str) -> str:
        p = self.profile
        return {
            "camera": p.camera.replay_path if self.kinds.camera == "file" else p.camera.device,
            "mcu": p.mcu.port,
            "imu": f"i2c-{p.imu.i2c_bus} @ {p.imu.address:#04x}",
            "nmea": p.positioning.nmea_port,
        }.get(device, device)
