"""Which factory a profile gets: :func:`factory_from_profile`, the only place that turns the
profile's transport kinds into devices.

Every device real: a :class:`HardwareFactory`; every device simulated: a :class:`SimFactory`;
a mix (``dev-laptop.toml``: a real webcam, a simulated MCU, IMU and positioning): a
:class:`RoutedFactory` that sends each device to one or the other, so the simulated devices
still share one scenario.
"""

from __future__ import annotations

from typing import Any

from capsight_edge.devices.factory import DeviceFactory, device_kinds
from capsight_edge.devices.hardware import HardwareFactory
from capsight_edge.devices.sim import SimFactory
from capsight_edge.profile.schema import Profile


class RoutedFactory(DeviceFactory):
    """Each device from ``sim`` when the profile simulates it, else from ``hardware``."""

    kind = "routed"

    def __init__(self, profile: Profile, hardware: HardwareFactory, sim: SimFactory) -> None:
        super().__init__(profile)
        self.hardware, self.sim = hardware, sim
        self.clock = sim.clock  # the simulated devices' scenario runs on the host clock too
        self.on_close(hardware.close)
        self.on_close(sim.close)

    def _for(self, device: str) -> DeviceFactory:
        return self.sim if self.simulated(device) else self.hardware

    def camera(self) -> Any:
        return self._for("camera").camera()

    def mcu_transport(self) -> Any:
        return self._for("mcu").mcu_transport()

    def i2c_bus(self) -> Any:
        return self._for("imu").i2c_bus()

    def nmea_transport(self) -> Any:
        return self._for("nmea").nmea_transport()

    @property
    def hands(self) -> Any:
        # The simulated shopper acts on the scenario: on the scale only if the MCU is
        # simulated, in the picture only if the camera is.
        return self.sim.hands if self.simulated("mcu") or self.simulated("camera") else None

    def describe(self, device: str) -> str:
        return self._for(device).describe(device)

    def temp_dirs(self) -> list[str]:
        return self.hardware.temp_dirs() + self.sim.temp_dirs()


def factory_from_profile(
    profile: Profile,
    *,
    seed: int = 0,
    scenario_kind: str | None = None,
    **sim_options: Any,
) -> DeviceFactory:
    """The factory for ``profile``. ``seed`` and ``scenario_kind`` (``idle`` for a cart at rest:
    the doctor, tare, calibration) and ``sim_options`` (see :class:`SimFactory`) apply to the
    simulated devices."""
    kinds = device_kinds(profile)
    simulated, used = kinds.simulated, kinds.used
    if not simulated & used:
        return HardwareFactory(profile)
    sim = SimFactory(profile, seed=seed, scenario_kind=scenario_kind, **sim_options)
    if used <= simulated:
        return sim
    return RoutedFactory(profile, HardwareFactory(profile), sim)
