"""The cart's sensors, wired from a profile onto one clock.

:class:`SensorHub` takes its devices from a :class:`~capsight_edge.devices.DeviceFactory`: the
MCU link over the factory's serial transport, the IMU on its I2C bus, positioning (UWB through
the MCU, or an NMEA receiver on its port). It never knows whether a device is real or simulated.
It runs the weight pipeline, keeps the latest state of everything for
``capsight sensors watch`` and the trigger engine, and writes every channel to the sensor log.
Every timestamp is host ``time.monotonic_ns()``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from capsight_edge.devices.factory import DeviceFactory
from capsight_edge.errors import CalibrationError, DeviceError, LinkError
from capsight_edge.profile.schema import Profile
from capsight_edge.sensors.calibration import Calibration
from capsight_edge.sensors.imu import (
    BumpDetector,
    CartMotionDetector,
    ImuReader,
    ImuSample,
    Mpu6050,
)
from capsight_edge.sensors.nmea import GnssFix, LineFramer, NmeaParser
from capsight_edge.sensors.sensorlog import SensorLog
from capsight_edge.sensors.weight import RawSample, WeightEvent, WeightPipeline
from firmware_bridge.framing import Frame
from firmware_bridge.link import LinkState, McuLink, RequestFailed
from firmware_bridge.messages import Heartbeat, SetRate, Tare, UwbPosition, WeightSample
from firmware_bridge.transport import Transport, TransportError

log = logging.getLogger("capsight.sensors.hub")


class NmeaReader:
    """Reads NMEA lines from a serial port on its own thread, re-opening it after failures."""

    def __init__(self, transport: Transport, parser: NmeaParser, on_fix: Any) -> None:
        self.transport = transport
        self.parser = parser
        self.on_fix = on_fix
        self.framer = LineFramer()
        self._logged: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0

    def start(self) -> NmeaReader:
        self._thread = threading.Thread(target=self._run, name="nmea", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.transport.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.transport.is_open:
                    self.transport.open()
                data = self.transport.read(1024)
            except TransportError:
                self.transport.close()
                self.reconnects += 1
                self._stop.wait(1.0)
                continue
            now = time.monotonic_ns()
            for line in self.framer.feed(data):
                fix = self.parser.feed_line(line, now)
                if fix is not None:
                    self.on_fix(fix)
            for kind in set(self.parser.rejected) - self._logged:
                self._logged.add(kind)
                log.warning(
                    "NMEA on %s: rejected a line (%s); further ones are counted",
                    self.transport.name,
                    kind,
                )


class SensorHub:
    """See the module docstring. ``factory`` hands out the devices (its owner closes it);
    ``auto_tare``: zero the empty cart on start when it has no calibration (default: when the
    MCU is simulated, since nobody is there to tare it)."""

    def __init__(
        self,
        profile: Profile,
        *,
        factory: DeviceFactory,
        log_path: str | os.PathLike[str] | None = None,
        auto_tare: bool | None = None,
    ) -> None:
        self.profile = profile
        self.factory = factory
        self.data_dir = Path(os.path.expanduser(profile.storage.data_dir))
        self.link: McuLink | None = None
        self.imu_reader: ImuReader | None = None
        self.nmea: NmeaReader | None = None
        self.nmea_parser = NmeaParser()
        self.log: Any = None  # a SensorLog, or a Tee of several (the cart's ring and log)
        self._log_path = log_path
        lc = profile.load_cells
        self.calibration = Calibration.load(self.data_dir, lc.counts_per_gram)
        self.calibrated = (self.data_dir / "calibration.json").exists()
        # A simulated cart has nobody to tare it: it zeroes itself on start.
        self.auto_tare = factory.simulated("mcu") if auto_tare is None else auto_tare
        self.pipeline = self._new_pipeline()
        self.bump = BumpDetector()
        self.motion = CartMotionDetector()
        self.events: queue.Queue[WeightEvent] = queue.Queue()
        self.event_history: deque[WeightEvent] = deque(maxlen=1000)
        self.last_imu: ImuSample | None = None
        self.last_uwb: tuple[int, UwbPosition] | None = None
        self.last_fix: GnssFix | None = None
        self.last_heartbeat: Heartbeat | None = None
        self.weight_samples = 0
        self._lock = threading.Lock()
        self._stable_counts: deque[tuple[float, ...]] = deque(maxlen=64)
        self._health_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._event_listeners: list[Any] = []
        self._uwb_track: deque[tuple[int, float, float]] = deque(maxlen=40)

    def _new_pipeline(self) -> WeightPipeline:
        lc = self.profile.load_cells
        return WeightPipeline(
            self.calibration,
            item_threshold_g=lc.item_threshold_g,
            stable_window_s=lc.stable_window_s,
            stable_tolerance_g=lc.stable_tolerance_g,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, mcu: bool = True, imu: bool = True, positioning: bool = True) -> SensorHub:
        p = self.profile
        if self._log_path is not None:
            self.log = SensorLog(
                self._log_path,
                metadata={
                    "device_id": p.device.id,
                    "store_id": p.device.store_id,
                    "profile": p.name,
                    "clock": "host CLOCK_MONOTONIC, ns",
                },
            )
        if mcu:
            self._start_mcu()
        if imu and p.imu.enabled:
            self._start_imu()
        if positioning and p.positioning.source == "nmea":
            self._start_nmea()
        self._health_thread = threading.Thread(
            target=self._health_loop, name="sensor-health", daemon=True
        )
        self._health_thread.start()
        return self

    def _start_mcu(self) -> None:
        self.link = McuLink(self.factory.mcu_transport())
        self.link.add_listener(self._on_frame)
        self.link.start()

    def _start_imu(self) -> None:
        p = self.profile
        try:
            bus = self.factory.i2c_bus()
        except DeviceError as exc:  # the cart runs on without motion sensing
            log.warning("IMU: %s", exc)
            return
        self.imu_reader = ImuReader(
            Mpu6050(bus=bus, address=p.imu.address), p.imu.rate_hz, self._on_imu
        ).start()

    def _start_nmea(self) -> None:
        self.nmea = NmeaReader(
            self.factory.nmea_transport(), self.nmea_parser, self._on_fix
        ).start()

    def stop(self) -> None:
        self._stop.set()
        for part in (self.imu_reader, self.nmea, self.link):
            if part is not None:
                part.stop()
        if self._health_thread:
            self._health_thread.join(timeout=3)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> SensorHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inputs (called on the producer threads) -------------------------------------------
    def _on_frame(self, frame: Frame, t_ns: int) -> None:
        p = frame.payload
        if isinstance(p, WeightSample):
            self._on_weight(p, t_ns)
        elif isinstance(p, UwbPosition):
            self.last_uwb = (t_ns, p)
            self._uwb_track.append((t_ns, p.x_mm, p.y_mm))
            if self.log:
                self.log.add(
                    "/position/uwb", t_ns, x_mm=p.x_mm, y_mm=p.y_mm, z_mm=p.z_mm, quality=p.quality
                )
        elif isinstance(p, Heartbeat):
            self.last_heartbeat = p

    def _on_weight(self, p: WeightSample, t_ns: int) -> None:
        if len(p.counts) != self.calibration.channels:
            return
        with self._lock:
            self.weight_samples += 1
            reading, events = self.pipeline.push(RawSample(t_ns, p.counts))
            if reading is not None and reading.stable and self.pipeline.last_counts:
                self._stable_counts.append(self.pipeline.last_counts)
            if self.auto_tare and reading is not None and reading.stable and not self.calibrated:
                self._apply_tare(list(self.pipeline.last_counts or ()), persist=False)
                events = []
        if self.log:
            self.log.add("/weight/raw", t_ns, counts=list(p.counts))
            if reading is not None:
                self.log.add(
                    "/weight/fused", t_ns, grams=round(reading.grams, 2), stable=reading.stable
                )
        for ev in events:
            self.events.put(ev)
            self.event_history.append(ev)
            for fn in self._event_listeners:
                try:
                    fn(ev)
                except Exception:  # a consumer bug must not stop the sensors
                    log.exception("weight event listener failed")
            if self.log:
                self.log.event("/weight/events", ev.t_ns, ev.as_dict())

    def _on_imu(self, sample: ImuSample) -> None:
        self.last_imu = sample
        self.bump.push(sample)
        self.motion.push(sample)
        if self.log:
            self.log.add(
                "/imu",
                sample.t_ns,
                accel_g=[round(a, 4) for a in sample.accel_g],
                gyro_dps=[round(g, 3) for g in sample.gyro_dps],
                temp_c=round(sample.temp_c, 2),
            )

    def _on_fix(self, fix: GnssFix) -> None:
        self.last_fix = fix
        if self.log and fix.t_ns is not None:
            self.log.event("/position/gnss", fix.t_ns, fix.as_dict())

    def _health_loop(self) -> None:
        while not self._stop.wait(1.0):
            if self.log and self.link is not None:
                self.log.event("/link/health", time.monotonic_ns(), asdict(self.link.stats()))
            if self.log:
                self.log.flush()

    def add_event_listener(self, fn: Any) -> None:
        """``fn(WeightEvent)`` on the MCU link's thread for every weight event."""
        self._event_listeners.append(fn)

    def cart_moving(self, now_ns: int | None = None, min_speed_mm_s: float = 200.0) -> bool:
        """The cart moves: the IMU feels it being pushed, or UWB positions over the last second
        travel faster than their noise allows."""
        now = now_ns if now_ns is not None else time.monotonic_ns()
        if self.motion.moving(now):
            return True
        pts = [p for p in list(self._uwb_track) if now - p[0] <= 1_500_000_000]
        if len(pts) < 5:
            return False
        (t0, x0, y0), (t1, x1, y1) = pts[0], pts[-1]
        dt = (t1 - t0) / 1e9
        return dt > 0.5 and ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / dt >= min_speed_mm_s

    # -- queries ------------------------------------------------------------------------------
    def signals(self, now_ns: int | None = None, window_s: float = 2.0) -> dict[str, bool]:
        """The trigger signals this hub raises (see capsight_edge.triggers.expr.SIGNALS)."""
        now = now_ns if now_ns is not None else time.monotonic_ns()
        recent = [e for e in list(self.event_history) if now - e.t_ns <= window_s * 1e9]
        added = any(e.kind == "item_added" for e in recent)
        removed = any(e.kind == "item_removed" for e in recent)
        return {
            "weight_added": added,
            "weight_removed": removed,
            "weight_delta": added or removed,
            "unstable": self.pipeline.detector.unstable,
            "bump": self.bump.active(now),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything `capsight sensors watch` shows, as plain data."""
        reading = self.pipeline.last
        link = self.link.stats() if self.link else None
        out: dict[str, Any] = {
            "t_ns": time.monotonic_ns(),
            "weight_g": round(reading.grams, 1) if reading else None,
            "stable": reading.stable if reading else None,
            "stable_weight_g": round(self.pipeline.detector.stable_g, 1)
            if self.pipeline.detector.stable_g is not None
            else None,
            "weight_samples": self.weight_samples,
            "rail_codes": self.pipeline.spikes.rails,
            "tared": self.calibrated or any(self.calibration.zero_counts),
            "events": [e.as_dict() for e in list(self.event_history)[-5:]],
            "link": asdict(link) if link else None,
            "frame_error_rate": link.frame_error_rate if link else None,
        }
        if self.last_imu:
            out["imu"] = {
                "accel_g": [round(a, 3) for a in self.last_imu.accel_g],
                "gyro_dps": [round(g, 2) for g in self.last_imu.gyro_dps],
                "samples": self.imu_reader.samples if self.imu_reader else 0,
                "errors": dict(self.imu_reader.errors) if self.imu_reader else {},
                "bump": self.bump.active(time.monotonic_ns()),
            }
        if self.last_uwb:
            _t, u = self.last_uwb
            out["uwb"] = {"x_mm": u.x_mm, "y_mm": u.y_mm, "z_mm": u.z_mm, "quality": u.quality}
        if self.nmea is not None:
            out["gnss"] = {
                "fix": self.last_fix.as_dict() if self.last_fix else None,
                **self.nmea_parser.summary(),
            }
        return out

    # -- operations ------------------------------------------------------------------------------
    def require_link(self, timeout_s: float = 3.0) -> McuLink:
        if self.link is None or not self.link.wait_for_state(LinkState.UP, timeout_s):
            raise LinkError(f"MCU link on {self.factory.describe('mcu')} is not up")
        return self.link

    def wait_stable(self, timeout_s: float = 10.0, min_samples: int = 16) -> tuple[float, ...]:
        """Mean per-cell counts over a stretch of stable weight."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._stable_counts.clear()
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._stable_counts) >= min_samples:
                    rows = list(self._stable_counts)
                    return tuple(sum(c) / len(rows) for c in zip(*rows, strict=True))
            time.sleep(0.05)
        raise CalibrationError(
            f"the weight did not settle within {timeout_s} s: keep the cart "
            "still and nothing touching the basket"
        )

    def tare(self, samples: int = 40, timeout_s: float = 5.0) -> list[float]:
        """Zero every cell with the MCU's averaged reading of the empty platform; persisted."""
        link = self.require_link()
        try:
            frame = link.request(
                Tare(samples, (1 << self.calibration.channels) - 1), timeout_s=timeout_s
            )
        except RequestFailed as exc:
            raise LinkError(f"tare failed: {exc}") from exc
        except TransportError as exc:
            raise LinkError(str(exc)) from exc
        means = list(frame.payload.means)  # type: ignore[attr-defined]
        with self._lock:
            self._apply_tare(means[: self.calibration.channels], persist=True)
        return means

    def _apply_tare(self, zero: list[float], *, persist: bool) -> None:
        self.calibration.tare(zero)
        self.calibrated = True
        self.pipeline = self._new_pipeline()
        if persist:
            self.calibration.save(self.data_dir)

    def calibrate(
        self, known_g: float, cell: int | None = None, timeout_s: float = 10.0
    ) -> Calibration:
        counts = self.wait_stable(timeout_s)
        with self._lock:
            self.calibration.scale_to_known(counts, known_g, cell)
            self.pipeline = self._new_pipeline()
        self.calibration.save(self.data_dir)
        return self.calibration

    def set_rate(self, rate_sps: int) -> None:
        try:
            self.require_link().request(SetRate(rate_sps))
        except (RequestFailed, TransportError) as exc:
            raise DeviceError(f"set rate {rate_sps} SPS: {exc}") from exc
