"""Everything a cart runs, started and stopped together: sensors, camera, Collector, Recorder.

``capsight run`` and ``capsight demo`` use this; the journal and the uploader hook in through
``on_sealed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import Manifest
from capsight_edge.collector import Collector
from capsight_edge.profile.schema import Profile
from capsight_edge.recorder.recorder import Recorder
from capsight_edge.sensors.ring import SensorRing, Tee

log = logging.getLogger("capsight.cart")


class Cart:
    """The running SDK on one cart. With every device simulated, one scenario drives them."""

    def __init__(
        self,
        profile: Profile,
        *,
        seed: int = 0,
        sensor_log: Any = None,
        preroll_mode: str = "auto",
        on_sealed: Callable[[Path, Manifest], None] | None = None,
        decision_listener: Callable[[Any], None] | None = None,
        sim_duration_s: float = 24 * 3600,
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.ring = SensorRing(
            seconds=max(
                180.0,
                2
                * max(
                    (t.max_length_s + t.preroll_s + t.postroll_s for t in profile.triggers),
                    default=60.0,
                ),
            )
        )
        self.sink = Tee(self.ring, sensor_log)
        self.preroll_mode = preroll_mode
        self.on_sealed = on_sealed
        self.decision_listener = decision_listener
        self.sim_duration_s = sim_duration_s
        self.hub: Any = None
        self.source: Any = None
        self.scenario: Any = None
        self.collector: Collector | None = None
        self.recorder: Recorder | None = None

    def start(self) -> Cart:
        p = self.profile
        if p.mcu.transport == "sim" and p.camera.source == "synthetic":
            from capsight_edge.simcart import start_simulated_cart

            self.hub, self.source, self.scenario = start_simulated_cart(
                p, self.seed, duration_s=self.sim_duration_s
            )
        else:
            from capsight_edge.camera.sources import source_from_profile
            from capsight_edge.sensors.hub import SensorHub

            self.hub = SensorHub(p).start()
            self.source = source_from_profile(p, seed=self.seed)
        self.hub.log = self.sink
        self.collector = Collector(
            p, self.source, hub=self.hub, sensor_log=self.sink, control_dir=p.storage.data_dir
        )
        if self.decision_listener is not None:
            self.collector.add_listener(self.decision_listener)
        self.collector.start()
        bus = self.collector.bus
        assert bus is not None
        h, w = bus._layout.height, bus._layout.width
        self.recorder = Recorder(
            p,
            bus_name=bus.name,
            width=w,
            height=h,
            fps=self.source.fps,
            sensors=self.ring,
            preroll_mode=self.preroll_mode,
            on_sealed=self.on_sealed,
        )
        self.recorder.start()
        self.collector.add_listener(self.recorder.on_decision)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop capturing: an open clip finishes its post-roll (bounded) and is sealed."""
        if self.recorder is not None:
            self.recorder.stop(timeout_s=timeout_s)
        if self.collector is not None:
            self.collector.stop()
        if self.hub is not None:
            self.hub.stop()

    def __enter__(self) -> Cart:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        return Path(os.path.expanduser(self.profile.storage.data_dir))
