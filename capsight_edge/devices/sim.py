"""A simulated cart: one scenario drives every simulated device, on one clock.

:class:`SimFactory` owns the cart's :class:`~firmware_bridge.sim.scenario.Scenario` (what the
shopper does, drawn from the fleet's catalogue), its :class:`~firmware_bridge.sim.scenario.
ScenarioClock`, and the simulators it starts on demand: the MCU simulator behind a pty (the real
link driver opens it like ``/dev/ttyACM0``), the simulated I2C bus with its MPU-6050, the GNSS
receiver on a pty, and the synthetic camera. Picture, weight, motion and position agree because
they all read the same scenario at the same scenario time.

A fleet shares one catalogue (``[sim] catalogue_seed``); each cart's seed draws its own shopper;
each store has its own conditions (``[sim.store_conditions]``). Only this module and
``firmware_bridge.sim`` know the simulators.
"""

from __future__ import annotations

import time
from typing import Any

from capsight_edge.devices.factory import DeviceFactory
from capsight_edge.profile.schema import Profile
from capsight_edge.scene.catalogue import Catalogue, Product
from capsight_edge.scene.conditions import StoreConditions
from firmware_bridge.sim.scenario import ItemEvent, Scenario, ScenarioClock, generate


def fleet_catalogue(profile: Profile) -> Catalogue:
    """The fleet's product catalogue: the same on every cart whose profile has the same
    ``[sim] catalogue_seed`` and ``catalogue_size``."""
    return Catalogue(profile.sim.catalogue_size, seed=profile.sim.catalogue_seed)


class SimHands:
    """The simulated shopper or technician: acts on the cart's scenario, now."""

    def __init__(self, factory: SimFactory) -> None:
        self._f = factory

    def place(self, grams: float, *, x: float = 0.5, y: float = 0.5, hand_s: float = 0.5) -> None:
        """Put a load on the platform (``grams`` < 0 takes it off) and return once it has
        settled, as a technician holding a reference weight would."""
        clock = self._f.clock
        ev = ItemEvent(t_s=clock(), grams=grams, hand_s=hand_s, x=x, y=y, sku="manual")
        self._f.scenario.add_item(ev)
        while clock() < ev.settle_s + 0.3:
            time.sleep(0.05)

    def show(
        self, product: Product | None = None, *, after_s: float = 0.3
    ) -> tuple[Product, float]:
        """Hold ``product`` (default: the catalogue's first) up to the camera, barcode facing
        it, starting ``after_s`` from now; returns the product and the scenario time by which
        it has gone into the basket."""
        p = product or self._f.catalogue.products[0]
        scan_s = 1.5
        ev = ItemEvent(
            t_s=self._f.clock() + after_s + scan_s,
            grams=p.weight_g,
            sku=p.sku,
            scan_s=scan_s,
            hand_s=0.5,
            scanned=True,
        )
        self._f.scenario.add_item(ev)
        return p, ev.release_s


class SimFactory(DeviceFactory):
    """Every device of a cart simulated from one scenario.

    ``seed``: the cart's shopper (scenario, per-event conditions, noise); ``scenario``: a
    given timeline instead (tests); ``scenario_kind``: ``shopping`` | ``idle`` | ``bumpy``
    (default: the profile's ``mcu.sim_scenario``); ``conditions``: the store's conditions
    instead of the profile's (``scene.conditions.CLEAN`` for studio light)."""

    kind = "sim"

    def __init__(
        self,
        profile: Profile,
        *,
        seed: int = 0,
        scenario: Scenario | None = None,
        scenario_kind: str | None = None,
        duration_s: float = 24 * 3600,
        conditions: StoreConditions | None = None,
    ) -> None:
        super().__init__(profile)
        sim = profile.sim
        self.seed = seed
        self.catalogue = fleet_catalogue(profile)
        self.conditions = conditions or StoreConditions.from_section(sim.store_conditions)
        self.scenario = scenario or generate(
            scenario_kind or profile.mcu.sim_scenario,
            duration_s,
            seed=seed,
            item_every_s=sim.item_every_s,
            bump_every_s=sim.bump_every_s,
            wave_rate=sim.empty_hand_rate,
            products=[(p.sku, p.weight_g) for p in self.catalogue.products],
        )
        self.clock: ScenarioClock = ScenarioClock()
        self.mcu_sim: Any = None
        self.gnss_sim: Any = None
        self._hands = SimHands(self)
        self._labels: dict[str, str] = {}

    @property
    def hands(self) -> SimHands:
        return self._hands

    def camera(self) -> Any:
        from capsight_edge.camera.sources import SyntheticSource
        from capsight_edge.devices.render import SceneRenderer

        self._claim("camera", label="synthetic camera")
        cam = self.profile.camera
        renderer = SceneRenderer(
            self.scenario,
            self.catalogue,
            width=cam.width_px,
            height=cam.height_px,
            seed=self.seed,
            conditions=self.conditions,
        )
        return SyntheticSource(renderer, fps=cam.fps, clock=self.clock)

    def mcu_transport(self) -> Any:
        from firmware_bridge.sim.mcu import McuSimulator
        from firmware_bridge.transport import SerialTransport

        self._claim("mcu", label="simulated MCU")
        p = self.profile
        self.mcu_sim = McuSimulator(
            self.scenario,
            n_cells=p.load_cells.count,
            rate_sps=p.load_cells.rate_sps,
            crystal_ppm=p.mcu.sim_crystal_ppm,
            seed=self.seed,
            uwb_hz=10.0 if p.positioning.source == "uwb" else 0.0,
            clock=self.clock,
        ).start()
        self.on_close(self.mcu_sim.stop)
        self._labels["mcu"] = f"{self.mcu_sim.port} (simulated MCU on a pty)"
        transport = SerialTransport(self.mcu_sim.port, p.mcu.baud)
        self.on_close(transport.close)
        return transport

    def temp_dirs(self) -> list[str]:
        return [self.mcu_sim.temp_dir] if self.mcu_sim is not None and self.mcu_sim.temp_dir else []

    def i2c_bus(self) -> Any:
        from firmware_bridge.sim.smbus import simulated_cart_bus

        self._claim("imu", label="simulated IMU")
        return simulated_cart_bus(
            self.scenario, bus=self.profile.imu.i2c_bus, seed=self.seed, clock=self.clock
        )

    def nmea_transport(self) -> Any:
        from firmware_bridge.sim.gnss import GnssSimulator
        from firmware_bridge.transport import SerialTransport

        self._claim("nmea", label="simulated GNSS receiver")
        self.gnss_sim = GnssSimulator(self.scenario, seed=self.seed, clock=self.clock).start()
        self.on_close(self.gnss_sim.stop)
        self._labels["nmea"] = f"{self.gnss_sim.port} (simulated GNSS receiver on a pty)"
        transport = SerialTransport(self.gnss_sim.port, self.profile.positioning.nmea_baud, 0.2)
        self.on_close(transport.close)
        return transport

    def describe(self, device: str) -> str:
        p = self.profile
        default = {
            "camera": f"synthetic cart scene {p.camera.width_px}x{p.camera.height_px}",
            "mcu": "simulated MCU on a pty",
            "imu": f"i2c-{p.imu.i2c_bus} @ {p.imu.address:#04x} (simulated bus)",
            "nmea": "simulated GNSS receiver on a pty",
        }
        return self._labels.get(device, default.get(device, device))
