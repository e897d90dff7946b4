"""The encoder process's two ways of keeping the seconds before a trigger, behind one interface,
and the chain of encoders that feeds them.

:class:`EncoderChain` opens the first encoder of the profile's preference list that works; when
the open one dies (mid-clip or not), the *next* one in the list takes over and the dead one goes
to the back of the list (tried again only when nothing else opens).

A pre-roll takes every frame (:meth:`PreRoll.frame`) and opens a clip's output from the past
(:meth:`PreRoll.attach`, from ``start_ns``) and lets it go (:meth:`PreRoll.detach`):

- :class:`EncodedPreRoll`: encode every frame continuously into a :class:`~.outputs.PacketRing`;
  a clip attaches to the ring from the last keyframe before its start. Costs the encoder all the
  time; free on a hardware encoder.
- :class:`RawPreRoll`: keep the last seconds as I420 frames (a frame tap before any encoder); a
  clip gets a fresh encoder (so it starts on a keyframe) fed the kept frames in a burst, then
  the live ones. Costs memory and a burst per clip; nothing between clips.

When the encoder dies, the next one takes over at once: an attached clip goes on with the new
encoder's stream (which starts with a keyframe and its parameter sets), having lost the frame
that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from capsight_edge.errors import EncoderUnavailable
from capsight_edge.recorder.encoders import VideoEncoder, open_encoder
from capsight_edge.recorder.messages import EncoderConfig
from capsight_edge.recorder.outputs import Output, PacketRing, RawRing, i420_to_bgr

log = logging.getLogger("capsight.recorder")


class EncoderChain:
    """``on_change(name, failed)`` hears of every change of encoder (the first included)."""

    def __init__(
        self, cfg: EncoderConfig, on_change: Callable[[str, list[tuple[str, str]]], None]
    ) -> None:
        self.cfg = cfg
        self.order = list(cfg.preference)
        self.on_change = on_change
        self.name = ""
        self.dead: list[tuple[str, str]] = []  # (name, why) of encoders that died while in use

    def open(self) -> VideoEncoder:
        c = self.cfg
        enc, failed = open_encoder(
            self.order,
            c.width,
            c.height,
            c.fps,
            quality=c.quality,
            bitrate_kbps=c.bitrate_kbps,
            gop_s=c.gop_s,
        )
        # Next time, start with the one that opened (the others stay as fallbacks).
        self.order = [enc.name] + [n for n in self.order if n != enc.name]
        if enc.name != self.name:
            self.name = enc.name
            self.on_change(enc.name, failed)
        return enc

    def died(self, name: str, why: str) -> VideoEncoder:
        """``name`` failed in use: the next encoder of the list takes over (EncoderUnavailable
        when none opens)."""
        log.error("encoder %s failed: %s; the next in the preference list takes over", name, why)
        self.dead.append((name, why))
        self.order = [n for n in self.order if n != name] + [name]
        return self.open()


class PreRoll(Protocol):
    """Keeps the seconds before a trigger and opens a clip's output from them."""

    encoder: VideoEncoder | None

    def frame(self, image: Any, t_ns: int) -> None:
        """Take one frame (BGR uint8). Raises what the encoder raises."""
        ...

    def attach(self, out: Output, start_ns: int) -> None:
        """Write into ``out`` from ``start_ns`` (a keyframe at or before), then live frames."""
        ...

    def detach(self, out: Output) -> None:
        """Stop writing into ``out`` (its last packets flushed first)."""
        ...

    def encoder_died(self, why: str) -> None:
        """The encoder failed: the next one takes over (EncoderUnavailable when none opens)."""
        ...


class EncodedPreRoll:
    def __init__(self, chain: EncoderChain, preroll_s: float) -> None:
        self.chain = chain
        self.ring = PacketRing(preroll_s + chain.cfg.gop_s)
        self.encoder: VideoEncoder | None = chain.open()

    def frame(self, image: Any, t_ns: int) -> None:
        if self.encoder is None:
            self.encoder = self.chain.open()
        self.ring.write(self.encoder.encode(image, t_ns))

    def attach(self, out: Output, start_ns: int) -> None:
        self.ring.attach(out, start_ns)

    def detach(self, out: Output) -> None:
        self.ring.detach(out)

    def encoder_died(self, why: str) -> None:
        dead, self.encoder = self.encoder, None
        self.ring.clear()  # those packets belong to the dead encoder's stream
        self.encoder = self.chain.died(dead.name if dead else "?", why)


class RawPreRoll:
    def __init__(self, chain: EncoderChain, preroll_s: float) -> None:
        self.chain = chain
        self.raw = RawRing(preroll_s + 0.5)
        # Open one now: a missing encoder is reported at start, not at the first clip.
        chain.open()
        self.encoder: VideoEncoder | None = None
        self._out: Output | None = None

    def frame(self, image: Any, t_ns: int) -> None:
        self.raw.push(image, t_ns)
        if self._out is not None:
            if self.encoder is None:
                self.encoder = self.chain.open()
            self._out.write(self.encoder.encode(image, t_ns))

    def attach(self, out: Output, start_ns: int) -> None:
        self.encoder = self.chain.open()  # a fresh one: the clip starts on a keyframe
        self._out = out
        for t_ns, i420 in self.raw.since(start_ns):
            out.write(self.encoder.encode(i420_to_bgr(i420), t_ns))

    def detach(self, out: Output) -> None:
        if self._out is out and self.encoder is not None:
            out.write(self.encoder.flush())
        self._out, self.encoder = None, None

    def encoder_died(self, why: str) -> None:
        dead, self.encoder = self.encoder, None
        self.encoder = self.chain.died(dead.name if dead else self.chain.name, why)


def make_preroll(mode: str, chain: EncoderChain, preroll_s: float) -> PreRoll:
    """``encoded`` or ``raw`` (README "Recorder": the measurement behind choosing)."""
    if mode == "encoded":
        return EncodedPreRoll(chain, preroll_s)
    if mode == "raw":
        return RawPreRoll(chain, preroll_s)
    raise EncoderUnavailable(f"unknown pre-roll mode {mode!r}")
