"""The Recorder: trigger decisions in, sealed capture bundles out.

It starts the encoder process (:mod:`.process`) on the Collector's FrameBus, opens a clip when a
rule fires (from the rule's pre-roll), keeps it open while any rule is active, and closes it at
the latest post-roll end. When the encoder process reports the clip written, the Recorder adds
``sensors.mcap`` (the sensor channels of the clip's window) and ``manifest.json`` and seals the
bundle atomically: everything is written and fsync'd in ``bundles/.partial/<id>/``, then the
folder is renamed to ``bundles/<id>/``. A reader never sees half a bundle; a crash leaves only a
``.partial`` folder, which the journal's recovery deals with.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsight_edge import __version__, logs
from capsight_edge.bundle.manifest import (
    CLIP,
    SENSORS,
    Manifest,
    TriggerInfo,
    VideoInfo,
    sha256_file,
)
from capsight_edge.bundle.seal import seal
from capsight_edge.durable import make_dirs
from capsight_edge.errors import CapsightError
from capsight_edge.hygiene import semaphore_files, settle_imports
from capsight_edge.profile.schema import Profile
from capsight_edge.recorder.messages import (
    ClipFailed,
    ClipWritten,
    CloseClip,
    Command,
    Crashed,
    EncoderChosen,
    EncoderConfig,
    EncoderLost,
    OpenClip,
    Ready,
    Stop,
    Stopped,
)
from capsight_edge.recorder.process import run_recorder
from capsight_edge.triggers.engine import Decision

log = logging.getLogger("capsight.recorder")
MAX_CLIP_S = 120.0


def utc_of(t_ns: int, offset_ns: int) -> str:
    t = (t_ns + offset_ns) / 1e9
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@dataclass
class ClipInProgress:
    clip_id: str
    start_ns: int
    trigger: Decision
    partial: Path
    end_ns: int = 0
    rules: set[str] = field(default_factory=set)
    also: list[str] = field(default_factory=list)
    close_sent: bool = False


class Recorder:
    """See the module docstring. ``on_sealed(path, manifest)`` is called for every sealed
    bundle (the journal hooks in here); ``sensors`` is a SensorRing."""

    def __init__(
        self,
        profile: Profile,
        *,
        bus_name: str,
        width: int,
        height: int,
        fps: float,
        sensors: Any = None,
        preroll_mode: str = "auto",
        on_sealed: Callable[[Path, Manifest], None] | None = None,
        on_opened: Callable[[str, Decision], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.profile = profile
        self.data_dir = Path(os.path.expanduser(data_dir or profile.storage.data_dir))
        self.bundles = self.data_dir / "bundles"
        self.partial = self.bundles / ".partial"
        make_dirs(self.partial)  # a cut must not take bundles/ with everything sealed in it
        self.sensors = sensors
        self.on_sealed = on_sealed
        self.on_opened = on_opened
        self.on_failed = on_failed
        self.preroll_s = max((t.preroll_s for t in profile.triggers), default=3.0)
        enc = profile.encoder
        self.cfg = EncoderConfig(
            tuple(enc.preference), enc.quality, enc.bitrate_kbps, enc.gop_s, fps, width, height
        )
        self.mode = preroll_mode
        self._bus_name = bus_name
        ctx = mp.get_context("spawn")
        self._cmd_q: Any = ctx.Queue(maxsize=64)
        self._closed = False
        self._stopping = False  # stop() began: no new clip opens (nothing would finish it)
        self._result_q: Any = ctx.Queue()
        self._proc: Any = None
        self._ctx = ctx
        self._clip: ClipInProgress | None = None
        self._lock = threading.Lock()
        self._utc_offset = time.time_ns() - time.monotonic_ns()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.encoder_name = ""
        self.encoder_fallbacks: list[tuple[str, str]] = []
        self.sealed: list[Path] = []
        self.failed: list[str] = []
        self.stats: dict[str, Any] = {}
        self.seal_delays_s: list[float] = []
        self.dropped_commands = 0

    @property
    def semaphore_files(self) -> list[str]:
        """The /dev/shm files of the named semaphores behind its queues to the encoder process
        (a run records them: :func:`capsight_edge.hygiene.semaphore_files`)."""
        return semaphore_files(self._cmd_q, self._result_q)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Recorder:
        if self.mode == "auto":
            self.mode = self._choose_mode()
        settle_imports()
        self._proc = self._ctx.Process(
            target=run_recorder,
            name="capsight-recorder",
            daemon=True,
            args=(
                self._bus_name,
                self.cfg,
                self.preroll_s,
                self.mode,
                self._cmd_q,
                self._result_q,
                10,
                logs.current(),
                os.getpid(),
            ),
        )
        self._proc.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                first = self._result_q.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    raise CapsightError(
                        f"the encoder process did not start (exit code {self._proc.exitcode})"
                    ) from None
        if isinstance(first, Crashed):
            raise CapsightError(f"the encoder process failed to start:\n{first.traceback}")
        if isinstance(first, EncoderChosen):  # then Ready
            self.encoder_name, self.encoder_fallbacks = first.name, list(first.failed)
        self._thread = threading.Thread(target=self._results, name="recorder-results", daemon=True)
        self._thread.start()
        return self

    def _choose_mode(self) -> str:
        """Hardware encoder: encode continuously (it costs the CPU nothing). CPU only: keep raw
        frames and encode on a trigger (README "Recorder": the measurement behind this)."""
        from capsight_edge.recorder.encoders import BACKENDS, open_encoder

        try:
            enc, _ = open_encoder(
                list(self.cfg.preference), 320, 240, self.cfg.fps, log_fallback=False
            )
        except CapsightError:
            return "raw"
        return "encoded" if BACKENDS[enc.name][3] else "raw"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Finish an open clip (its post-roll, bounded by ``timeout_s``), seal it, stop."""
        with self._lock:
            self._stopping = True
            clip = self._clip
            if clip is not None and not clip.close_sent:
                end = max(clip.end_ns, time.monotonic_ns())
                self._close(clip, min(end, clip.start_ns + int(MAX_CLIP_S * 1e9)))
        deadline = time.monotonic() + timeout_s
        while self._clip is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._send(Stop())
        self._stop.set()
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)  # it seals what the encoder finished on Stop
        # A clip the encoder never finished (it died, or was killed past the deadline) is not
        # left half-written in .partial for the next start to find: it failed, and says so.
        self._abandon("stopped before the clip was finished")
        # The command queue's feeder thread ends with it: stop() leaves no thread behind. (It
        # flushes what is buffered first; the process has read it all unless it died, and then
        # nothing is worth waiting for.)
        self._closed = True
        if self._proc is not None and self._proc.exitcode not in (0, None):
            self._cmd_q.cancel_join_thread()
        self._cmd_q.close()
        self._cmd_q.join_thread()

    # -- decisions (called on the Collector's thread) -----------------------------------------
    def on_decision(self, d: Decision) -> None:
        with self._lock:
            if self._stopping:
                return  # a clip opened now would be left empty in .partial
            if d.kind == "fire":
                self._fire(d)
            elif d.kind == "end":
                self._end(d)

    def _fire(self, d: Decision) -> None:
        clip = self._clip
        if clip is not None and not clip.close_sent:
            clip.rules.add(d.rule)
            if d.rule != clip.trigger.rule and d.rule not in clip.also:
                clip.also.append(d.rule)
            return
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime((d.t_ns + self._utc_offset) / 1e9))
        clip_id = f"{self.profile.device.id}-{stamp}-{self._seq:04d}-{secrets.token_hex(3)}"
        partial = self.partial / clip_id
        partial.mkdir(parents=True, exist_ok=True)
        self._clip = ClipInProgress(clip_id, d.clip_start_ns, d, partial, rules={d.rule})
        if self.on_opened is not None:
            try:
                self.on_opened(clip_id, d)
            except Exception:
                log.exception("on_opened hook failed for %s", clip_id)
        self._send(OpenClip(clip_id, d.clip_start_ns, str(partial / CLIP)))
        log.info("clip %s opened by %s", clip_id, d.rule)

    def _end(self, d: Decision) -> None:
        clip = self._clip
        if clip is None or clip.close_sent:
            return
        clip.rules.discard(d.rule)
        clip.end_ns = max(clip.end_ns, d.clip_end_ns)
        if not clip.rules:
            self._close(clip, min(clip.end_ns, clip.start_ns + int(MAX_CLIP_S * 1e9)))

    def _close(self, clip: ClipInProgress, end_ns: int) -> None:
        clip.end_ns = end_ns
        clip.close_sent = True
        self._send(CloseClip(clip.clip_id, end_ns))

    def _send(self, cmd: Command) -> None:
        if self._closed:  # a decision that arrives after stop(): nothing records it
            return
        try:
            self._cmd_q.put(cmd, timeout=0.5)
        except queue.Full:
            self.dropped_commands += 1
            log.error("encoder process is not taking commands; dropped %s", type(cmd).__name__)

    # -- results ------------------------------------------------------------------------------
    def _results(self) -> None:
        # Until the encoder says Stopped (it sends a clip it finishes on Stop before that) or
        # is gone: an empty queue right after stop() does not mean nothing more is coming.
        while True:
            try:
                msg = self._result_q.get(timeout=0.2)
            except queue.Empty:
                gone = self._proc is None or not self._proc.is_alive()
                if gone and not self._stop.is_set():
                    log.error("the encoder process died")
                    self._abandon("the encoder process died")
                    return
                if gone and self._stop.is_set():
                    return
                continue
            if isinstance(msg, EncoderChosen):
                self.encoder_name, self.encoder_fallbacks = msg.name, list(msg.failed)
                for name, reason in msg.failed:
                    log.warning("encoder %s unavailable: %s; using %s", name, reason, msg.name)
            elif isinstance(msg, ClipWritten | ClipFailed):
                self._sealing(msg)
            elif isinstance(msg, Stopped):
                self.stats = msg.stats
                return
            elif isinstance(msg, Crashed):
                log.error("encoder process crashed:\n%s", msg.traceback)
                self._abandon("the encoder process crashed")
            elif isinstance(msg, EncoderLost):
                log.error("no encoder opens any more: %s", msg.reason)
            elif not isinstance(msg, Ready):
                log.error("unexpected message from the encoder process: %r", msg)

    def _abandon(self, reason: str) -> None:
        with self._lock:
            clip, self._clip = self._clip, None
        if clip is not None:
            self.failed.append(f"{clip.clip_id}: {reason}")
            shutil.rmtree(clip.partial, ignore_errors=True)
            self._failed_hook(clip.clip_id, reason)

    def _failed_hook(self, clip_id: str, reason: str) -> None:
        if self.on_failed is not None:
            try:
                self.on_failed(clip_id, reason)
            except Exception:
                log.exception("on_failed hook failed for %s", clip_id)

    def _sealing(self, info: ClipWritten | ClipFailed) -> None:
        with self._lock:
            clip = self._clip
            if clip is None or clip.clip_id != info.clip_id:
                return
            self._clip = None
        try:
            if isinstance(info, ClipFailed):
                raise CapsightError(info.error)
            path, manifest = self._seal(clip, info)
        except (CapsightError, OSError) as exc:
            # Not sealed: nothing of it may look complete.
            self.failed.append(f"{clip.clip_id}: {exc}")
            log.error("bundle %s not sealed: %s", clip.clip_id, exc)
            shutil.rmtree(clip.partial, ignore_errors=True)
            self._failed_hook(clip.clip_id, str(exc))
            return
        self.seal_delays_s.append((time.monotonic_ns() - clip.end_ns) / 1e9)
        self.sealed.append(path)
        log.info("bundle %s sealed (%d frames)", manifest.bundle_id, info.frames)
        if self.on_sealed is not None:
            try:
                self.on_sealed(path, manifest)
            except Exception:
                log.exception("on_sealed hook failed for %s", path)

    def _seal(self, clip: ClipInProgress, info: ClipWritten) -> tuple[Path, Manifest]:
        p = self.profile
        start, end = info.first_ns, max(info.last_ns, clip.end_ns)
        files = {}
        if self.sensors is not None:
            self.sensors.write_mcap(
                clip.partial / SENSORS,
                start,
                end,
                metadata={
                    "bundle_id": clip.clip_id,
                    "device_id": p.device.id,
                    "clock": "host CLOCK_MONOTONIC, ns",
                    # UTC = monotonic + utc_offset_ns (taken when the recorder started): what a
                    # viewer such as Foxglove needs to show wall-clock times.
                    "utc_offset_ns": str(self._utc_offset),
                },
            )
            files[SENSORS] = sha256_file(clip.partial / SENSORS)
        files[CLIP] = sha256_file(clip.partial / CLIP)
        t = clip.trigger
        manifest = Manifest(
            bundle_id=clip.clip_id,
            device_id=p.device.id,
            store_id=p.device.store_id,
            profile=p.name,
            trigger=TriggerInfo(
                t.rule, t.priority, t.t_ns, dict(t.signals), t.reason, list(clip.also)
            ),
            start_ns=start,
            end_ns=end,
            start_utc=utc_of(start, self._utc_offset),
            end_utc=utc_of(end, self._utc_offset),
            video=VideoInfo(
                codec=info.codec,
                encoder=info.encoder,
                width=info.width,
                height=info.height,
                fps=info.fps,
                frames=info.frames,
                duration_s=round(info.duration_s, 3),
                dropped_frames=info.skipped,
                complete=info.complete,
                note=info.note,
            ),
            files=files,
            created_utc=utc_of(time.monotonic_ns(), self._utc_offset),
            software=f"capsight {__version__}",
        )
        final = seal(clip.partial, self.bundles, manifest)
        return final, manifest

    @property
    def pid(self) -> int | None:
        """The encoder process's pid (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def busy(self) -> bool:
        return self._clip is not None
