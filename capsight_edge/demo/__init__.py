"""``capsight demo``: the simulated flywheel (see :mod:`capsight_edge.demo.flywheel`)."""

from capsight_edge.demo.fleet import STORES
from capsight_edge.demo.flywheel import Settings, run_demo

__all__ = ["STORES", "Settings", "run_demo"]
