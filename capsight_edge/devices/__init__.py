"""The cart's devices behind one seam (see :mod:`capsight_edge.devices.factory`)."""

from capsight_edge.devices.factory import DeviceFactory, DeviceKinds, device_kinds
from capsight_edge.devices.hardware import HardwareFactory
from capsight_edge.devices.select import RoutedFactory, factory_from_profile
from capsight_edge.devices.sim import SimFactory, SimHands, fleet_catalogue

__all__ = [
    "DeviceFactory",
    "DeviceKinds",
    "HardwareFactory",
    "RoutedFactory",
    "SimFactory",
    "SimHands",
    "device_kinds",
    "factory_from_profile",
    "fleet_catalogue",
]
