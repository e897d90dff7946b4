"""The Collector: camera frames and sensor events in, capture decisions out.

Threads:
- **camera**: reads the frame source (the device factory's camera) and publishes each frame on
  the FrameBus (shared memory); the cart's own AI can attach to the same bus from its process.
  A synthetic camera's truth per frame goes to the sensor log's ``/sim/truth`` channel (a real
  camera has none, so a real cart's log never has that channel);
- **collector**: reads the bus (zero-copy views), runs motion detection on every frame and barcode
  decoding on the moving regions (rate-limited), feeds the trigger engine, ticks it, and listens
  on a control socket for manual triggers;
- sensor events (weight, bump, cart motion) reach the engine from the SensorHub's threads.

Decisions go to listeners (the recorder, the CLI), the log and the sensor log (``/triggers``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsight_edge.camera.barcodes import Barcode, BarcodeDetector, roi_backend
from capsight_edge.camera.framebus import FrameBus, FrameBusReader
from capsight_edge.camera.gs1 import net_weight_kg, same_gtin
from capsight_edge.camera.motion import MotionDetector
from capsight_edge.durable import make_dirs
from capsight_edge.errors import FrameError, ModelRejected
from capsight_edge.profile.schema import Profile
from capsight_edge.triggers.engine import Decision, TriggerEngine
from capsight_edge.triggers.weightcheck import DeclaredWeightCheck, WeightVerdict
from capsight_edge.unixsock import unix_socket_path

log = logging.getLogger("capsight.collector")
CONTROL_SOCKET = "control.sock"


def send_manual_trigger(data_dir: str | os.PathLike[str], note: str = "") -> None:
    """Ask the Collector running on ``data_dir`` for a capture now (``capsight trigger
    manual``)."""
    path = Path(os.path.expanduser(data_dir)) / CONTROL_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            with unix_socket_path(path) as where:
                s.sendto(b"manual " + note.encode()[:200], where)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise FrameError(f"no collector is running on {path} ({exc.strerror})") from exc


class Collector:
    """See the module docstring. ``factory``: where the camera comes from (its frame source is
    opened by :meth:`start`; without a factory, drive :meth:`process` directly); ``hub``: a
    started SensorHub or None; ``sensor_log``: a SensorLog (or a Tee) or None."""

    def __init__(
        self,
        profile: Profile,
        *,
        factory: Any = None,
        hub: Any = None,
        sensor_log: Any = None,
        barcode_backend: str | None = None,
        barcode_rate_hz: float = 10.0,
        control_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.profile = profile
        self.factory = factory
        self.source: Any = None
        self.hub = hub
        self.log = sensor_log
        self.engine = TriggerEngine(profile.triggers)
        self.motion = MotionDetector()
        self.barcodes = BarcodeDetector(
            roi_backend(
                barcode_backend or profile.camera.barcode_backend,
                profile.camera.barcode_formats,
            ),
            max_rate_hz=barcode_rate_hz,
        )
        lc = profile.load_cells
        self.weight_check = DeclaredWeightCheck(
            tolerance_g=lc.declared_weight_tolerance_g,
            tolerance_pct=lc.declared_weight_tolerance_pct,
        )
        self.bus: FrameBus | None = None
        self.stats: Counter[str] = Counter()
        self.last_codes: list[Barcode] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()
        self._jolts = 0
        self._control: socket.socket | None = None
        self._control_path: Path | None = None
        self._control_dir = control_dir
        self._bus_name: str | None = None
        #: The cart's ModelRuntime (``Cart`` attaches it when the profile names a registry): its
        #: answers on frames with a moving hand raise ``model_uncertain`` / ``model_disagrees``.
        self.models: Any = None
        self._next_model_ns = 0
        self._last_code: tuple[int, str] | None = None
        self.engine.add_listener(self._on_decision)

    def add_listener(self, fn: Callable[[Decision], None]) -> None:
        self.engine.add_listener(fn)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, *, bus_name: str | None = None) -> Collector:
        """Start the threads. ``bus_name``: consume an existing FrameBus (another process
        publishes the camera) instead of running the frame source here."""
        self._bus_name = bus_name
        if bus_name is not None:
            return self._start_threads(("collector", self._collect_loop))
        if self.factory is None:
            raise FrameError("a collector without a device factory has no camera to start")
        self.source = self.factory.camera()
        self.source.open()
        first = self.source.read()
        if first is None:
            raise FrameError(f"{self.source.name} delivered no frame")
        h, w = first.image.shape[:2]
        channels = 1 if first.image.ndim == 2 else first.image.shape[2]
        self.bus = FrameBus(w, h, channels, fps=self.source.fps)
        self.bus.publish(first.image, first.t_ns)
        if first.truth is not None and self.log:
            self.log.add("/sim/truth", first.t_ns, **first.truth.as_log())
        if self.hub is not None:
            self.hub.add_event_listener(self._on_weight_event)
        return self._start_threads(("camera", self._camera_loop), ("collector", self._collect_loop))

    def _start_threads(self, *loops: tuple[str, Callable[[], None]]) -> Collector:
        if self._control_dir is not None:
            self._open_control(Path(os.path.expanduser(self._control_dir)))
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self.source is not None and self._bus_name is None:
            self.source.close()
        if self._control is not None:
            self._control.close()
            # the path it was made at, not getsockname(): a path too long for AF_UNIX was bound
            # through a /proc/self/fd/N/ name whose descriptor is closed by now
            if self._control_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._control_path)
        if self.bus is not None:
            self.bus.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_control(self, folder: Path) -> None:
        make_dirs(folder)
        path = folder / CONTROL_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with unix_socket_path(path) as where:
            s.bind(where)
        s.setblocking(False)
        self._control, self._control_path = s, path

    # -- threads ----------------------------------------------------------------------------
    def _camera_loop(self) -> None:
        assert self.bus is not None
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except Exception as exc:  # a source bug must not kill capture silently
                self.stats["source_errors"] += 1
                log.exception("frame source failed: %s", exc)
                self._stop.wait(0.5)
                continue
            if frame is None:
                self.stats["source_ended"] += 1
                return
            try:
                self.bus.publish(frame.image, frame.t_ns)
                self.stats["published"] += 1
                if frame.truth is not None and self.log:
                    self.log.add("/sim/truth", frame.t_ns, **frame.truth.as_log())
            except FrameError as exc:
                self.stats["bad_frames"] += 1
                if self.stats["bad_frames"] == 1:
                    log.warning("dropped a frame: %s (further ones are counted)", exc)

    def _collect_loop(self) -> None:
        name = self._bus_name or (self.bus.name if self.bus is not None else None)
        assert name is not None
        reader = FrameBusReader(name)
        self._ready.set()
        try:
            while not self._stop.is_set():
                frame = reader.next_frame(timeout_s=0.2)
                now = time.monotonic_ns()
                try:
                    self._poll_control(now)
                    self._poll_sensors(now)
                    if frame is None:
                        self.engine.tick(now)
                        continue
                    self.process(frame.image, frame.t_ns, valid=frame.valid)
                except Exception as exc:  # one step's bug must not stop every trigger for good
                    self.stats["collector_errors"] += 1
                    if self.stats["collector_errors"] == 1:
                        log.exception("a collector step failed (further ones are counted): %s", exc)
                    continue
                self.stats["skipped"] = reader.skipped
        finally:
            reader.close()

    def process(self, image: Any, t_ns: int, valid: Callable[[], bool] | None = None) -> None:
        """One frame through motion, barcodes and the engine (also usable without threads)."""
        m = self.motion.push(image, t_ns)
        codes: list[Barcode] = []
        if m.regions and not m.recalibrated and self.barcodes.due(t_ns):
            codes = self.barcodes.decode_regions(image, m.regions, t_ns)
        answer = self._model_answer(image, t_ns) if m.hand_activity else None
        if valid is not None and not valid():
            self.stats["overwritten"] += 1  # the producer lapped us: results may be torn
            return
        self.stats["frames"] += 1
        self.stats["recalibrations"] = self.motion.recalibrations
        self.engine.signal("hand_motion", t_ns, m.hand_activity)
        if self.log:
            self.log.add(
                "/camera/motion",
                t_ns,
                moving_fraction=round(m.moving_fraction, 4),
                hand_activity=m.hand_activity,
            )
        for code in codes:
            self.stats["barcodes"] += 1
            self.last_codes = codes
            self.engine.signal("barcode", t_ns)
            self._last_code = (t_ns, code.key)
            stated = net_weight_kg(code.ais)
            if stated is not None:
                self._weight_verdict(self.weight_check.read(t_ns, stated, code.key))
            if self.log:
                self.log.event("/camera/barcodes", t_ns, {"t_ns": t_ns, **code.as_dict()})
        if answer is not None:
            self._model_signals(answer, t_ns)
        self.engine.tick(t_ns)

    def _model_answer(self, image: Any, t_ns: int) -> tuple[str, float, str] | None:
        """(label, score, GTIN-14) of the running model on this frame, at most
        ``[model] rate_hz`` times a second; None when no model runs or it gave no answer."""
        models = self.models
        if models is None or not models.version or t_ns < self._next_model_ns:
            return None
        self._next_model_ns = t_ns + int(1e9 / self.profile.model.rate_hz)
        try:
            label, score, _box = models.predict([image])[0]
        except ModelRejected:
            return None
        self.stats["model_runs"] += 1
        return label, score, models.gtin_of(label)

    def _model_signals(self, answer: tuple[str, float, str], t_ns: int) -> None:
        label, score, gtin = answer
        sure = score >= self.profile.model.uncertain_below
        if label and not sure:
            self.stats["model_uncertain"] += 1
            self.engine.signal("model_uncertain", t_ns)
        read = self._last_code
        recent = read is not None and t_ns - read[0] <= 1_500_000_000
        if recent:
            assert read is not None
            code = read[1].strip()
            same = bool(label) and (not gtin or same_gtin(code, gtin))
            disagrees = not same
        else:
            disagrees = bool(label) and sure  # a product in hand, and no read
        if disagrees:
            self.stats["model_disagrees"] += 1
            self.engine.signal("model_disagrees", t_ns)
        if self.log:
            self.log.add(
                "/model/answer", t_ns, label=label, score=round(score, 4), disagrees=disagrees
            )

    def _poll_control(self, now: int) -> None:
        if self._control is None:
            return
        while True:
            try:
                msg = self._control.recv(256)
            except (BlockingIOError, OSError):
                return
            if msg.startswith(b"manual"):
                self.stats["manual"] += 1
                self.engine.signal("manual", now)

    def _poll_sensors(self, now: int) -> None:
        hub = self.hub
        if hub is None:
            return
        if hub.bump.jolts != self._jolts:
            self._jolts = hub.bump.jolts
            self.engine.signal("bump", now)
        self.engine.signal("unstable", now, hub.pipeline.detector.unstable)
        self.engine.signal("cart_moving", now, hub.cart_moving(now))

    def _on_weight_event(self, ev: Any) -> None:
        if ev.kind in ("item_added", "item_removed"):
            self.engine.signal("weight_delta", ev.t_ns)
            self.engine.signal(
                "weight_added" if ev.kind == "item_added" else "weight_removed", ev.t_ns
            )
        if ev.kind == "item_added":
            self._weight_verdict(self.weight_check.weighed(ev.t_ns, ev.delta_g))

    def _weight_verdict(self, verdict: WeightVerdict | None) -> None:
        if verdict is None:
            return
        self.stats["weight_checked"] += 1
        if verdict.mismatch:
            self.stats["weight_mismatch"] += 1
            self.engine.signal("weight_mismatch", verdict.t_ns)
            log.info(
                "weight mismatch: %s states %.0f g, the basket gained %.0f g",
                verdict.key,
                verdict.stated_g,
                verdict.measured_g,
            )

    def _on_decision(self, d: Decision) -> None:
        self.stats[f"decision_{d.kind}"] += 1
        if self.log:
            self.log.event("/triggers", d.t_ns, d.as_dict())
