"""Which video encoders really open on this machine.

A codec being compiled into the PyAV wheel says nothing about the hardware: the PyPI wheels carry
nvenc, v4l2m2m, qsv and amf, which open only where their hardware and driver are present, and do
not carry vaapi at all. So we probe by opening the encoder and encoding one frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any


@dataclass(frozen=True)
class EncoderProbe:
    name: str
    opens: bool
    reason: str
    seconds: float


def probe_encoder(name: str, width: int = 320, height: int = 240) -> EncoderProbe:
    """Open ``name`` through PyAV and encode one grey frame. Never raises."""
    start = time.perf_counter()
    try:
        import av
        import av.logging
        import numpy as np
    except ImportError as exc:  # edge extra not installed
        return EncoderProbe(
            name, False, f"PyAV is not installed ({exc})", time.perf_counter() - start
        )
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as exc:  # PyAV raises its own UnknownCodecError
        return EncoderProbe(
            name,
            False,
            f"not built into this PyAV ({type(exc).__name__})",
            time.perf_counter() - start,
        )
    # FFmpeg's own log line says why a hardware encoder failed ("Cannot load libcuda.so.1",
    # "OpenEncodeSessionEx failed: unsupported device" on a GPU without an encoder engine); PyAV
    # adds it to the exception only while its logging is on. Capture keeps it off the console.
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():
            return _open_and_encode(av, np, codec, name, width, height, start)
    finally:
        av.logging.set_level(previous)


def _open_and_encode(
    av: Any, np: Any, codec: Any, name: str, width: int, height: int, start: float
) -> EncoderProbe:
    try:
        ctx: Any = av.codec.CodecContext.create(codec)
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = (
            "yuv420p"
            if "yuv420p" in [f.name for f in codec.video_formats or []]
            else (codec.video_formats[0].name if codec.video_formats else "yuv420p")
        )
        ctx.time_base = Fraction(1, 15)
        ctx.framerate = Fraction(15, 1)
        ctx.open()
        frame = av.VideoFrame.from_ndarray(
            np.full((height, width, 3), 128, np.uint8), format="rgb24"
        ).reformat(format=ctx.pix_fmt)
        frame.pts = 0
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
        if not packets:
            return EncoderProbe(
                name, False, "opened but produced no packet", time.perf_counter() - start
            )
        return EncoderProbe(
            name, True, f"opened and encoded a {width}x{height} frame", time.perf_counter() - start
        )
    except Exception as exc:  # hardware missing: FFmpeg errors of many kinds
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return EncoderProbe(name, False, f"does not open here: {text}", time.perf_counter() - start)
