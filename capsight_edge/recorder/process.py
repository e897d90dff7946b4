"""The encoder process: reads the FrameBus, keeps the pre-roll, writes clips.

It runs in its own process at lower priority (``nice``), so encoding never competes with the
cart's AI on equal terms and can never stall the frame producer: it reads shared memory like any
other FrameBus consumer, and when it falls behind it skips frames (counted). Commands arrive on a
bounded queue; results go back on another.

Pre-roll modes (see README "Recorder" for the measurement behind the default):
- ``encoded``: encode every frame continuously into a packet ring; a clip starts at the last
  keyframe before its start. Costs the encoder all the time; free on a hardware encoder.
- ``raw``: keep the last seconds as I420 frames; encode them in a burst when a clip opens, with a
  fresh encoder (so the clip starts on a keyframe). Costs memory and a burst per clip.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.errors import CapsightError, EncoderUnavailable, FrameError


@dataclass
class EncoderConfig:
    preference: list[str]
    quality: str
    bitrate_kbps: int
    gop_s: float
    fps: float
    width: int
    height: int


@dataclass
class _Clip:
    clip_id: str
    start_ns: int
    path: Path
    output: Any
    end_ns: int | None = None
    dropped: int = 0
    note: str = ""
    complete: bool = True
    failed: str = ""


def run_recorder(
    bus_name: str,
    cfg: EncoderConfig,
    preroll_s: float,
    mode: str,
    cmd_q: Any,
    result_q: Any,
    nice: int = 10,
    log_config: tuple[str, str] = ("human", "WARNING"),
) -> None:
    """Process entry point."""
    from capsight_edge import logs

    logs.configure(*log_config)
    with contextlib.suppress(OSError):
        os.nice(nice)
    try:
        _Recorder(bus_name, cfg, preroll_s, mode, cmd_q, result_q).run()
    except Exception:  # report, never die silently
        result_q.put(("crashed", traceback.format_exc()))


class _Recorder:
    def __init__(
        self,
        bus_name: str,
        cfg: EncoderConfig,
        preroll_s: float,
        mode: str,
        cmd_q: Any,
        result_q: Any,
    ) -> None:
        from capsight_edge.camera.framebus import FrameBusReader
        from capsight_edge.recorder.outputs import PacketRing, RawRing

        self.reader = FrameBusReader(bus_name)
        self.cfg = cfg
        self.mode = mode
        self.cmd_q, self.result_q = cmd_q, result_q
        self.preroll_ns = int(preroll_s * 1e9)
        self.packets = PacketRing(preroll_s + cfg.gop_s)
        self.raw = RawRing(preroll_s + 0.5)
        self.encoder: Any = None
        self.encoder_name = ""
        self.clip: _Clip | None = None
        self.stats = {"frames": 0, "torn": 0, "encode_errors": 0, "rejected": 0}
        self.last_t_ns = 0
        # Open the encoder now in both modes: a missing one is reported at start, not at the
        # first clip. In raw mode each clip gets a fresh one (so it starts on a keyframe).
        self.encoder = self._open_encoder()
        if mode == "raw":
            self.encoder = None

    def _open_encoder(self) -> Any:
        from capsight_edge.recorder.encoders import open_encoder

        c = self.cfg
        enc, failed = open_encoder(
            c.preference,
            c.width,
            c.height,
            c.fps,
            quality=c.quality,
            bitrate_kbps=c.bitrate_kbps,
            gop_s=c.gop_s,
        )
        if enc.name != self.encoder_name:
            self.result_q.put(("encoder", enc.name, failed))
        self.encoder_name = enc.name
        # Next time, start with the one that opened (the others stay as fallbacks).
        c.preference = [enc.name] + [n for n in c.preference if n != enc.name]
        return enc

    def run(self) -> None:
        self.result_q.put(("ready", os.getpid()))
        while True:
            if not self._commands():
                break
            frame = self.reader.next_frame(timeout_s=0.1)
            if frame is not None:
                self._frame(frame)
            self._maybe_finish()
        if self.clip is not None:
            self.clip.end_ns = self.clip.end_ns or self.last_t_ns
            self._finish("stopped")
        self.result_q.put(("stopped", dict(self.stats, skipped=self.reader.skipped)))
        self.reader.close()

    def _commands(self) -> bool:
        while True:
            try:
                cmd = self.cmd_q.get_nowait()
            except queue.Empty:
                return True
            kind = cmd[0]
            if kind == "stop":
                return False
            if kind == "open":
                self._open_clip(cmd[1], cmd[2], Path(cmd[3]))
            elif kind == "close" and self.clip is not None and self.clip.clip_id == cmd[1]:
                self.clip.end_ns = cmd[2]

    def _open_clip(self, clip_id: str, start_ns: int, path: Path) -> None:
        from capsight_edge.recorder.outputs import Mp4Output, OutputError, i420_to_bgr

        if self.clip is not None:  # one clip at a time: close the old one where it is
            self.clip.end_ns = self.last_t_ns
            self._finish("superseded")
        clip = _Clip(clip_id, start_ns, path, None)
        self.clip = clip
        try:
            if self.encoder is None:
                self.encoder = self._open_encoder()
            clip.output = Mp4Output(path, self.encoder.codec, self.cfg.fps)
            if self.mode == "encoded":
                clip.output.write(self.packets.since(start_ns))
            else:
                for t_ns, i420 in self.raw.since(start_ns):
                    clip.output.write(self.encoder.encode(i420_to_bgr(i420), t_ns))
        except (OutputError, EncoderUnavailable) as exc:
            clip.failed = str(exc)
            self._finish("failed")
        except Exception as exc:  # the encoder died: close what exists, mark the clip
            self._encoder_died(exc)

    def _frame(self, frame: Any) -> None:
        from capsight_edge.recorder.outputs import OutputError

        image, t_ns = frame.image, frame.t_ns
        self.stats["frames"] += 1
        try:
            if self.mode == "raw":
                self.raw.push(image, t_ns)
                packets = (
                    self.encoder.encode(image, t_ns)
                    if self.clip is not None and self.encoder is not None
                    else []
                )
            else:
                packets = self.encoder.encode(image, t_ns)
                self.packets.push(packets)
        except FrameError:
            self.stats["rejected"] += 1
            return
        except CapsightError:
            raise
        except Exception as exc:
            self._encoder_died(exc)
            return
        if not frame.valid():
            self.stats["torn"] += 1  # overwritten while we encoded: that frame may be mixed
        self.last_t_ns = t_ns
        if self.clip is not None and self.clip.output is not None and packets:
            try:
                self.clip.output.write(packets)
            except OutputError as exc:
                self.clip.failed = str(exc)
                self._finish("failed")

    def _encoder_died(self, exc: Exception) -> None:
        self.stats["encode_errors"] += 1
        name = getattr(self.encoder, "name", "?")
        self.encoder = None
        self.packets.clear()
        if self.clip is not None:
            self.clip.complete = False
            self.clip.note = f"encoder {name} failed mid-clip: {exc}"
            self.clip.end_ns = self.last_t_ns
            self._finish("encoder failed")
        if self.mode == "encoded":
            try:
                self.encoder = self._open_encoder()
            except EncoderUnavailable as again:
                self.result_q.put(("encoder_lost", str(again)))

    def _maybe_finish(self) -> None:
        clip = self.clip
        if clip is not None and clip.end_ns is not None and self.last_t_ns >= clip.end_ns:
            self._finish("post-roll done")

    def _finish(self, reason: str) -> None:
        clip = self.clip
        if clip is None:
            return
        self.clip = None
        info: dict[str, Any] = {
            "clip_id": clip.clip_id,
            "path": str(clip.path),
            "reason": reason,
            "complete": clip.complete,
            "note": clip.note,
        }
        out = clip.output
        try:
            if out is not None:
                if self.mode == "raw" and self.encoder is not None:
                    out.write(self.encoder.flush())
                    self.encoder = None  # the next clip starts on a fresh keyframe
                out.close()
        except Exception as exc:
            clip.failed = clip.failed or f"closing the clip failed: {exc}"
        if clip.failed or out is None or out.frames == 0:
            info["failed"] = clip.failed or "no frame was recorded"
        else:
            info.update(
                codec=out.codec,
                frames=out.frames,
                duration_s=out.duration_s,
                first_ns=out.first_ns,
                last_ns=out.last_ns,
                encoder=self.encoder_name,
                width=self.cfg.width,
                height=self.cfg.height,
                fps=self.cfg.fps,
                skipped=self.reader.skipped,
            )
        info["finished_ns"] = time.monotonic_ns()
        self.result_q.put(("clip", info))
