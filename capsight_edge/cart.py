"""Everything a cart runs, started and stopped together: journal (with crash recovery first),
storage guard, sensors, camera, Collector, Recorder, and the uploader when the profile names a
sink.

The one assembly of a cart: ``capsight run`` (and through it the demo) runs a whole one;
``capsight trigger test`` runs one with ``record=False`` (sensors, camera and triggers only).
Every device comes from one :class:`~capsight_edge.devices.DeviceFactory`, handed in or made
from the profile (then the cart owns it and closes it on stop). The uploader shares the journal:
a bundle is in its queue the moment it is sealed. ``cart.uploader.pause(reason)`` is the
integrator's hook to hold uploads at once (cart not docked, store network busy).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import Manifest
from capsight_edge.collector import Collector
from capsight_edge.devices import DeviceFactory, factory_from_profile
from capsight_edge.events import BundleSealed, Events, LinkHealth
from capsight_edge.hygiene import RunRecord
from capsight_edge.journal.guard import StorageGuard
from capsight_edge.journal.journal import Journal
from capsight_edge.journal.recovery import RecoveryReport, recover
from capsight_edge.profile.schema import Profile
from capsight_edge.recorder.recorder import Recorder
from capsight_edge.sensors.hub import SensorHub
from capsight_edge.sensors.ring import SensorRing, Tee

log = logging.getLogger("capsight.cart")


class Cart:
    """The running SDK on one cart. ``factory``: the devices (default: made from the profile
    with ``seed`` for its simulated ones, and owned by the cart); ``record=False``: sensors,
    camera and triggers only (no journal, recorder or uploads)."""

    def __init__(
        self,
        profile: Profile,
        *,
        factory: DeviceFactory | None = None,
        seed: int = 0,
        sensor_log: Any = None,
        preroll_mode: str = "auto",
        on_sealed: Callable[[Path, Manifest], None] | None = None,
        decision_listener: Callable[[Any], None] | None = None,
        record: bool = True,
        uploads: bool = True,
        uploader_options: dict[str, Any] | None = None,
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.factory = factory
        self._owns_factory = factory is None
        self.record = record
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
        self.hub: SensorHub | None = None
        self.collector: Collector | None = None
        self.recorder: Recorder | None = None
        self.journal: Journal | None = None
        self.guard: StorageGuard | None = None
        self.recovery: RecoveryReport | None = None
        self.uploads = record and uploads and bool(profile.upload.sink_url)
        self.uploader_options = uploader_options or {}
        self.uploader: Any = None
        self.models: Any = None  # the ModelRuntime, when the profile names a registry
        self._models_stop: Any = None
        self._models_thread: Any = None
        self._uploader_thread: Any = None
        self.run_record: RunRecord | None = None
        self._stopped = False
        #: Typed events for the embedding program (:mod:`capsight_edge.events`).
        self.events = Events()

    # -- journal hooks ------------------------------------------------------------------------
    def _opened(self, clip_id: str, d: Any) -> None:
        assert self.journal is not None
        self.journal.add_recording(clip_id, priority=d.priority, rule=d.rule, created_ns=d.t_ns)

    def _sealed(self, path: Path, manifest: Manifest) -> None:
        from dataclasses import asdict

        assert self.journal is not None
        files = {k: asdict(v) for k, v in manifest.files.items()}
        self.journal.mark_sealed(
            manifest.bundle_id,
            files,
            duration_s=manifest.video.duration_s if manifest.video else 0.0,
        )
        if self.on_sealed is not None:
            self.on_sealed(path, manifest)
        self.events.publish(
            BundleSealed(
                bundle_id=manifest.bundle_id,
                path=path,
                rule=manifest.trigger.rule,
                bytes=sum(f.bytes for f in manifest.files.values()),
                duration_s=manifest.video.duration_s if manifest.video else None,
                manifest=manifest,
            )
        )

    def _failed(self, clip_id: str, reason: str) -> None:
        assert self.journal is not None
        row = self.journal.get(clip_id)
        if row is not None and row.state == "recording":
            self.journal.discard(clip_id, reason)

    def _pause(self, reason: str | None) -> None:
        if self.collector is not None:
            self.collector.engine.pause(reason)

    def start(self) -> Cart:
        p = self.profile
        self.run_record = RunRecord(self.data_dir).claim()  # and clean up after a killed run
        self._stopped = False
        if self.factory is None:
            self.factory = factory_from_profile(p, seed=self.seed)
        if self.record:
            self.journal = Journal(self.data_dir / "journal.db")
            self.recovery = recover(self.journal, self.data_dir)
            self.guard = StorageGuard.from_profile(self.journal, p, on_change=self._pause)
            self.guard.start()
        self.hub = SensorHub(p, factory=self.factory)
        self.hub.add_event_listener(self.events.publish)
        self.hub.start()
        for folder in self.factory.temp_dirs():
            self.run_record.add_temp_dir(folder)
        if self.hub.link is not None:
            link = self.hub.link

            def link_changed(previous: Any, state: Any) -> None:
                st = link.stats()
                self.events.publish(
                    LinkHealth(
                        t_ns=time.monotonic_ns(),
                        state=state.value,
                        previous=previous.value,
                        frames=st.frames,
                        reconnects=st.reconnects,
                        frame_error_rate=st.frame_error_rate,
                    )
                )

            link.add_state_listener(link_changed)
            link_changed(type("Start", (), {"value": ""})(), link.state)  # where it stands now
        self.hub.log = self.sink
        self.collector = Collector(
            p, factory=self.factory, hub=self.hub, sensor_log=self.sink, control_dir=self.data_dir
        )
        if self.decision_listener is not None:
            self.collector.add_listener(self.decision_listener)
        self.collector.add_listener(self.events.publish)
        if self.guard is not None:
            self._pause(self.guard.paused_reason)
        self.collector.start()
        if self.collector.bus is not None:
            self.run_record.add_segment(self.collector.bus.name)
        if not self.record:
            return self
        bus = self.collector.bus
        assert bus is not None and self.collector.source is not None
        self.recorder = Recorder(
            p,
            bus_name=bus.name,
            width=bus.width,
            height=bus.height,
            fps=self.collector.source.fps,
            sensors=self.ring,
            preroll_mode=self.preroll_mode,
            on_sealed=self._sealed,
            on_opened=self._opened,
            on_failed=self._failed,
        )
        self.run_record.add_segment(*self.recorder.semaphore_files)
        self.recorder.start()
        if self.recorder.pid is not None:
            self.run_record.add_child(self.recorder.pid)
        self.collector.add_listener(self.recorder.on_decision)
        if self.uploads:
            from capsight_edge.uploader.service import UploaderThread, uploader_from_profile

            assert self.journal is not None
            self.uploader = uploader_from_profile(p, self.journal, **self.uploader_options)
            self._uploader_thread = UploaderThread(self.uploader).start()
        if p.model.registry_url and p.model.trust_root:
            self._start_models()
        return self

    def _start_models(self) -> None:
        """The model runtime, polling the registry every ``[model] poll_s`` while the upload
        schedule allows traffic (a poll of an unchanged registry is one request, answered 304);
        the running version goes into the journal, whence the heartbeat reports it."""
        import datetime as dt
        import threading

        from capsight_edge.errors import ModelRejected
        from capsight_edge.runtime.models import runtime_from_profile
        from capsight_edge.uploader.shaping import UploadSchedule

        p = self.profile
        self.models = runtime_from_profile(p, self.data_dir)
        if self.collector is not None:
            self.collector.models = self.models
        self._models_stop = threading.Event()

        schedule = UploadSchedule.from_profile(p.upload)

        def poll() -> None:
            while True:
                try:
                    # Inside the upload windows only: a window at 0 bit/s keeps the link quiet.
                    if schedule.rate_at(dt.datetime.now()) > 0:
                        result = self.models.pull()
                        if result.status == "updated":
                            log.info("model %s running", self.models.version)
                except ModelRejected as exc:
                    log.warning("model pull: %s", exc)
                if self.journal is not None and self.models.version:
                    self.journal.kv_set("model_version", self.models.version)
                if self._models_stop.wait(p.model.poll_s):
                    return

        self._models_thread = threading.Thread(target=poll, name="capsight-models", daemon=True)
        self._models_thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop capturing: an open clip finishes its post-roll (bounded) and is sealed. Safe to
        call twice, and after a start that failed half-way: it stops what was started."""
        if self._stopped:
            return
        self._stopped = True
        if self.recorder is not None:
            self.recorder.stop(timeout_s=timeout_s)
        if self.collector is not None:
            self.collector.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.guard is not None:
            self.guard.stop()
        if self._models_stop is not None:
            self._models_stop.set()
            self._models_thread.join(timeout=timeout_s)
            self.models.close()
        if self._uploader_thread is not None:
            self._uploader_thread.stop()
        if self.journal is not None:
            self.journal.close()
        if self.factory is not None and self._owns_factory:
            self.factory.close()
        if self.run_record is not None:
            self.run_record.release()
        self.events.end()

    def capture_now(self, note: str = "") -> None:
        """Ask for a capture now (the ``manual`` signal, as ``capsight trigger manual`` does)."""
        from capsight_edge.collector import send_manual_trigger

        send_manual_trigger(self.data_dir, note)

    def __enter__(self) -> Cart:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        return Path(os.path.expanduser(self.profile.storage.data_dir))
