"""The encoder process: reads the FrameBus, keeps the pre-roll, writes clips.

It runs in its own process at lower priority (``nice``), so encoding never competes with the
cart's AI on equal terms and can never stall the frame producer: it reads shared memory like any
other FrameBus consumer, and when it falls behind it skips frames (counted). Commands arrive on a
bounded queue and results go back on another, both as the typed messages of :mod:`.messages`.

The process knows one pre-roll (:mod:`.preroll`: encoded or raw, chosen by the Recorder) and at
most one open clip, an :class:`~.outputs.Mp4Output` that the pre-roll writes into from the
clip's start. When the encoder dies, the next one of the preference list takes over and the clip
goes on (its manifest notes which encoder failed and when).
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
from capsight_edge.recorder.messages import (
    ClipFailed,
    ClipWritten,
    CloseClip,
    Crashed,
    EncoderChosen,
    EncoderConfig,
    EncoderLost,
    OpenClip,
    Ready,
    Stop,
    Stopped,
)


@dataclass
class _Clip:
    clip_id: str
    start_ns: int
    path: Path
    output: Any = None
    end_ns: int | None = None
    encoders: str = ""
    notes: tuple[str, ...] = ()
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
    parent_pid: int = 0,
) -> None:
    """Process entry point. The process dies with ``parent_pid`` (no orphan encoders)."""
    from capsight_edge import logs
    from capsight_edge.hygiene import die_with_parent

    if parent_pid:
        die_with_parent(parent_pid)
    logs.configure(*log_config)
    with contextlib.suppress(OSError):
        os.nice(nice)
    try:
        EncoderProcess(bus_name, cfg, preroll_s, mode, cmd_q, result_q).run()
    except Exception:  # report, never die silently
        result_q.put(Crashed(traceback.format_exc()))


class EncoderProcess:
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
        from capsight_edge.recorder.preroll import EncoderChain, make_preroll

        self.reader = FrameBusReader(bus_name)
        self.cfg = cfg
        self.cmd_q, self.result_q = cmd_q, result_q
        self.chain = EncoderChain(
            cfg, lambda name, failed: result_q.put(EncoderChosen(name, tuple(failed)))
        )
        self.preroll = make_preroll(mode, self.chain, preroll_s)
        self.clip: _Clip | None = None
        self.stats = {"frames": 0, "torn": 0, "encode_errors": 0, "rejected": 0}
        self.last_t_ns = 0

    def run(self) -> None:
        self.result_q.put(Ready(os.getpid()))
        while self.commands():
            frame = self.reader.next_frame(timeout_s=0.1)
            if frame is not None:
                self.on_frame(frame)
            self.maybe_finish()
        if self.clip is not None:
            self.clip.end_ns = self.clip.end_ns or self.last_t_ns
            self.finish("stopped")
        self.result_q.put(Stopped(dict(self.stats, skipped=self.reader.skipped)))
        self.reader.close()

    def commands(self) -> bool:
        """Take the waiting commands; False once told to stop."""
        while True:
            try:
                cmd = self.cmd_q.get_nowait()
            except queue.Empty:
                return True
            if isinstance(cmd, Stop):
                return False
            if isinstance(cmd, OpenClip):
                self.open_clip(cmd)
            elif isinstance(cmd, CloseClip) and self.clip and self.clip.clip_id == cmd.clip_id:
                self.clip.end_ns = cmd.end_ns

    def open_clip(self, cmd: OpenClip) -> None:
        from capsight_edge.recorder.encoders import BACKENDS
        from capsight_edge.recorder.outputs import Mp4Output, OutputError

        if self.clip is not None:  # one clip at a time: close the old one where it is
            self.clip.end_ns = self.last_t_ns
            self.finish("superseded")
        clip = _Clip(cmd.clip_id, cmd.start_ns, Path(cmd.path))
        self.clip = clip
        try:
            clip.output = Mp4Output(clip.path, BACKENDS[self.chain.name][0], self.cfg.fps)
            self.preroll.attach(clip.output, cmd.start_ns)
            clip.encoders = self.chain.name
        except (OutputError, EncoderUnavailable) as exc:
            clip.failed = str(exc)
            self.finish("failed")
        except Exception as exc:  # the encoder died in the pre-roll burst
            self.encoder_died(exc)

    def on_frame(self, frame: Any) -> None:
        from capsight_edge.recorder.outputs import OutputError

        self.stats["frames"] += 1
        try:
            self.preroll.frame(frame.image, frame.t_ns)
        except FrameError:
            self.stats["rejected"] += 1
            return
        except OutputError as exc:
            if self.clip is not None:
                self.clip.failed = str(exc)
                self.finish("failed")
            return
        except CapsightError:
            raise
        except Exception as exc:  # the encoder died
            self.encoder_died(exc)
            return
        if not frame.valid():
            self.stats["torn"] += 1  # overwritten while we encoded: that frame may be mixed
        self.last_t_ns = frame.t_ns

    def encoder_died(self, exc: Exception) -> None:
        self.stats["encode_errors"] += 1
        name = self.chain.name
        clip = self.clip
        try:
            self.preroll.encoder_died(f"{type(exc).__name__}: {exc}")
        except EncoderUnavailable as lost:
            self.result_q.put(EncoderLost(str(lost)))
            if clip is not None:
                clip.complete = False
                clip.notes += (f"encoder {name} failed mid-clip ({exc}); no other encoder opens",)
                clip.end_ns = self.last_t_ns
                self.finish("encoder failed")
            return
        if clip is not None:
            at = (self.last_t_ns - clip.start_ns) / 1e9
            clip.notes += (
                f"encoder {name} failed mid-clip ({exc}); {self.chain.name} took over at "
                f"{at:+.2f} s",
            )
            clip.encoders = f"{clip.encoders}+{self.chain.name}"

    def maybe_finish(self) -> None:
        clip = self.clip
        if clip is not None and clip.end_ns is not None and self.last_t_ns >= clip.end_ns:
            self.finish("post-roll done")

    def finish(self, reason: str) -> None:
        clip, self.clip = self.clip, None
        if clip is None:
            return
        out = clip.output
        try:
            if out is not None:
                self.preroll.detach(out)
                out.close()
        except Exception as exc:
            clip.failed = clip.failed or f"closing the clip failed: {exc}"
        done_ns = time.monotonic_ns()
        if clip.failed or out is None or out.frames == 0:
            error = clip.failed or "no frame was recorded"
            self.result_q.put(ClipFailed(clip.clip_id, str(clip.path), reason, error, done_ns))
            return
        self.result_q.put(
            ClipWritten(
                clip_id=clip.clip_id,
                path=str(clip.path),
                reason=reason,
                codec=out.codec,
                encoder=clip.encoders or self.chain.name,
                frames=out.frames,
                duration_s=out.duration_s,
                first_ns=int(out.first_ns),
                last_ns=int(out.last_ns),
                width=self.cfg.width,
                height=self.cfg.height,
                fps=self.cfg.fps,
                skipped=self.reader.skipped,
                complete=clip.complete,
                note="; ".join(clip.notes)[:2000],
                finished_ns=done_ns,
            )
        )
