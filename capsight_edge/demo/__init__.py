"""``capsight demo``: the simulated flywheel (see :mod:`capsight_edge.demo.fleet`)."""

from capsight_edge.demo.fleet import STORES, run_demo

__all__ = ["STORES", "run_demo"]
