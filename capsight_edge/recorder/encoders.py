"""Video encoders behind one interface: BGR frames in, H.264/HEVC packets out.

Backends are registered by name, opened in the profile's preference order, and the first that
opens wins; every fallback is logged with its reason. Each backend maps the profile's one quality
knob (low / balanced / high) to its own controls; an explicit ``bitrate_kbps`` wins over it.
Packets are Annex B with the parameter sets (SPS/PPS) in band on every keyframe, so any clip can
start at any keyframe, and keyframes come every ``gop_s``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from capsight_edge.errors import EncoderUnavailable, FrameError

log = logging.getLogger("capsight.recorder.encoders")
TIME_BASE = Fraction(1, 90_000)
_LOGGED: set[tuple[tuple[str, ...], str]] = set()


@dataclass(frozen=True)
class EncodedPacket:
    data: bytes
    keyframe: bool
    t_ns: int  # capture time of the frame (host monotonic)


def _has_sps(data: bytes) -> bool:
    """Does an Annex B access unit carry an H.264 SPS (NAL 7) or HEVC VPS/SPS (32/33)?"""
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        nal = data[i + 3]
        if nal & 0x1F == 7 or (nal >> 1) & 0x3F in (32, 33):
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


Options = Callable[[str, int], dict[str, str]]


def _x264(quality: str, kbps: int) -> dict[str, str]:
    crf = {"low": "30", "balanced": "26", "high": "22"}[quality]
    opts = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "threads": "1",
        "x264-params": "repeat-headers=1:scenecut=0",
    }
    if kbps:
        opts.update({"b": f"{kbps}k", "maxrate": f"{kbps}k", "bufsize": f"{2 * kbps}k"})
    else:
        opts["crf"] = crf
    return opts


def _nvenc(quality: str, kbps: int) -> dict[str, str]:
    cq = {"low": "30", "balanced": "26", "high": "21"}[quality]
    opts = {"preset": "p2", "tune": "ll", "zerolatency": "1", "forced-idr": "1"}
    opts.update({"rc": "cbr", "b": f"{kbps}k"} if kbps else {"rc": "vbr", "cq": cq})
    return opts


def _v4l2m2m(quality: str, kbps: int) -> dict[str, str]:
    rate = kbps or {"low": 1000, "balanced": 2500, "high": 5000}[quality]
    return {"b": f"{rate}k"}


def _qsv(quality: str, kbps: int) -> dict[str, str]:
    q = {"low": "30", "balanced": "25", "high": "20"}[quality]
    return {"b": f"{kbps}k"} if kbps else {"global_quality": q, "preset": "veryfast"}


def _vaapi(quality: str, kbps: int) -> dict[str, str]:
    qp = {"low": "30", "balanced": "26", "high": "22"}[quality]
    return {"b": f"{kbps}k"} if kbps else {"qp": qp}


def _amf(quality: str, kbps: int) -> dict[str, str]:
    return {
        "b": f"{kbps or {'low': 1000, 'balanced': 2500, 'high': 5000}[quality]}k",
        "usage": "lowlatency",
    }


#: name -> (codec family, options for a quality knob, input pixel format, hardware?)
BACKENDS: dict[str, tuple[str, Options, str, bool]] = {
    "h264_nvenc": ("h264", _nvenc, "yuv420p", True),
    "hevc_nvenc": ("hevc", _nvenc, "yuv420p", True),
    "h264_v4l2m2m": ("h264", _v4l2m2m, "yuv420p", True),
    "h264_qsv": ("h264", _qsv, "nv12", True),
    "h264_vaapi": ("h264", _vaapi, "nv12", True),
    "h264_amf": ("h264", _amf, "yuv420p", True),
    "libx264": ("h264", _x264, "yuv420p", False),
}


#: Backends whose FFmpeg encoder has another name than the backend (a second handle on one
#: codec: tests register a spare this way to make one die while the other takes over).
FFMPEG_NAMES: dict[str, str] = {}


class VideoEncoder:
    """One open encoder. ``encode`` takes a BGR uint8 frame of the opened size."""

    def __init__(
        self,
        name: str,
        width: int,
        height: int,
        fps: float,
        *,
        quality: str = "balanced",
        bitrate_kbps: int = 0,
        gop_s: float = 1.0,
    ) -> None:
        import av

        if name not in BACKENDS:
            raise EncoderUnavailable(f"unknown encoder {name!r}")
        family, options, pix_fmt, self.hardware = BACKENDS[name]
        self.name, self.codec = name, family
        self.width, self.height, self.fps = width, height, fps
        self.pix_fmt = pix_fmt
        try:
            codec = av.codec.Codec(FFMPEG_NAMES.get(name, name), "w")
            ctx: Any = av.codec.CodecContext.create(codec)
            ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
            ctx.time_base = TIME_BASE
            ctx.framerate = Fraction(fps).limit_denominator(1000)
            ctx.gop_size = max(1, round(gop_s * fps))
            ctx.max_b_frames = 0
            ctx.options = options(quality, bitrate_kbps)
            ctx.open()
        except Exception as exc:  # FFmpeg/PyAV errors of every kind: the hardware is absent
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EncoderUnavailable(f"{name} does not open: {text}") from exc
        self._ctx = ctx
        self._av = av
        self.frames_in = 0
        self.rejected = 0
        self.encode_s = 0.0

    def encode(self, image: Any, t_ns: int) -> list[EncodedPacket]:
        if (
            getattr(image, "shape", None) != (self.height, self.width, 3)
            or str(getattr(image, "dtype", "")) != "uint8"
        ):
            self.rejected += 1
            raise FrameError(
                f"{self.name}: frame {getattr(image, 'shape', None)} "
                f"{getattr(image, 'dtype', None)}, encoder opened for "
                f"{self.height}x{self.width}x3 uint8"
            )
        start = time.perf_counter()
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24").reformat(
            format=self.pix_fmt
        )
        frame.pts = round(t_ns / 1e9 * 90_000)
        frame.time_base = TIME_BASE
        self._times = getattr(self, "_times", {})
        self._times[frame.pts] = t_ns
        packets = self._packets(self._ctx.encode(frame))
        self.frames_in += 1
        self.encode_s += time.perf_counter() - start
        return packets

    def flush(self) -> list[EncodedPacket]:
        return self._packets(self._ctx.encode(None))

    def _packets(self, packets: Any) -> list[EncodedPacket]:
        out = []
        for p in packets:
            t_ns = self._times.pop(p.pts, None) if p.pts is not None else None
            out.append(
                EncodedPacket(
                    bytes(p),
                    bool(p.is_keyframe),
                    t_ns if t_ns is not None else int(p.pts * 1e9 / 90_000),
                )
            )
        return out


def short_reason(reason: str) -> str:
    """``h264_nvenc does not open: [Errno 1] Operation not permitted: 'avcodec_open2(...)'``
    → ``Operation not permitted``: the cause, without libavcodec's option dump."""
    text = reason.split("does not open: ", 1)[-1]
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text.split(": '", 1)[0].split(" 'avcodec_open2", 1)[0].strip()[:80]


def open_encoder(
    preference: list[str],
    width: int,
    height: int,
    fps: float,
    *,
    quality: str = "balanced",
    bitrate_kbps: int = 0,
    gop_s: float = 1.0,
    log_fallback: bool = True,
) -> tuple[VideoEncoder, list[tuple[str, str]]]:
    """The first encoder of ``preference`` that opens, and (name, reason) of those that did
    not. Raises EncoderUnavailable when none opens. The fall-back is logged once per process
    as one short line (``log_fallback=False`` for probes; the full reasons at DEBUG and in
    ``capsight doctor``)."""
    failed: list[tuple[str, str]] = []
    for name in preference:
        try:
            enc = VideoEncoder(
                name, width, height, fps, quality=quality, bitrate_kbps=bitrate_kbps, gop_s=gop_s
            )
        except EncoderUnavailable as exc:
            failed.append((name, str(exc)))
            continue
        key = (tuple(n for n, _ in failed), name)
        if failed and log_fallback and key not in _LOGGED:  # clips reopen encoders often
            _LOGGED.add(key)
            log.warning(
                "%s not usable here (%s); encoding with %s (`capsight doctor` says more)",
                ", ".join(n for n, _ in failed),
                "; ".join(short_reason(r) for _, r in failed),
                name,
            )
            for other, reason in failed:
                log.debug("encoder %s: %s", other, reason)
        return enc, failed
    raise EncoderUnavailable(
        "no encoder in the preference list opens: " + "; ".join(reason for _, reason in failed)
    )
