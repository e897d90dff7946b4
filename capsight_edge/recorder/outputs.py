"""Where encoded packets go (picamera2's outputs): a fragmented MP4 file, and the pre-roll
buffers, bounded by time and by bytes.

Every packet sink is an :class:`Output` (``write(packets)``, ``close()``). The encoded pre-roll
:class:`PacketRing` is an output too, and opens another: ``attach(out, start_ns)`` replays into
``out`` from the keyframe at or before ``start_ns`` and then passes it every live packet, with
no delay line; ``detach(out)`` stops. The raw pre-roll :class:`RawRing` is a frame tap before the
encoder (frames kept as I420, encoded only when a clip asks for them).
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from capsight_edge.errors import CapsightError
from capsight_edge.recorder.encoders import TIME_BASE, EncodedPacket, _has_sps


class OutputError(CapsightError):
    """A clip could not be written (disk error, or a stream with no parameter sets)."""


class Output(Protocol):
    """Takes encoded packets in capture order."""

    def write(self, packets: Iterable[EncodedPacket]) -> None: ...

    def close(self) -> None: ...


class Mp4Output:
    """A fragmented MP4 (playable while being written, and whatever was flushed before a crash
    stays playable). Timestamps are rebased so the clip starts at 0. The first packet must be a
    keyframe carrying its parameter sets."""

    def __init__(self, path: str | os.PathLike[str], codec: str, fps: float) -> None:
        self.path = Path(path)
        self.codec = codec
        self.fps = fps
        self._container: Any = None
        self._stream: Any = None
        self._t0: int | None = None
        self._last_pts = -1
        self.frames = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def _open(self, first: EncodedPacket) -> None:
        import av

        if not first.keyframe or not _has_sps(first.data):
            raise OutputError("a clip must start at a keyframe with its parameter sets")
        fmt = "h264" if self.codec == "h264" else "hevc"
        try:
            template = av.open(io.BytesIO(first.data), format=fmt).streams.video[0]
            self._container = av.open(
                str(self.path),
                "w",
                format="mp4",
                options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
            )
            self._stream = self._container.add_stream_from_template(template)
            self._stream.time_base = TIME_BASE
        except (OSError, av.FFmpegError) as exc:
            raise OutputError(f"{self.path}: cannot start the clip: {exc}") from exc
        self._t0 = first.t_ns

    def write(self, packets: Iterable[EncodedPacket]) -> None:
        import av

        for p in packets:
            if self._container is None:
                self._open(p)
            assert self._t0 is not None
            pts = round((p.t_ns - self._t0) / 1e9 * 90_000)
            if pts <= self._last_pts:
                pts = self._last_pts + 1  # never let timestamps go backwards
            packet = av.Packet(p.data)
            packet.stream = self._stream
            packet.pts = packet.dts = pts
            packet.time_base = TIME_BASE
            packet.is_keyframe = p.keyframe
            try:
                self._container.mux(packet)
            except (OSError, av.FFmpegError) as exc:
                raise OutputError(f"{self.path}: write failed: {exc}") from exc
            self._last_pts = pts
            self.frames += 1
            self.first_ns = p.t_ns if self.first_ns is None else self.first_ns
            self.last_ns = p.t_ns

    @property
    def duration_s(self) -> float:
        if self.first_ns is None or self.last_ns is None:
            return 0.0
        return (self.last_ns - self.first_ns) / 1e9 + 1.0 / self.fps

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except OSError as exc:
                raise OutputError(f"{self.path}: close failed: {exc}") from exc
            self._container = None


class PacketRing:
    """Encoded pre-roll: the packets of the last ``seconds`` (plus the GOP that reaches back
    past it, so a clip can always start at a keyframe), and at most ``max_bytes`` of them
    (whole GOPs are dropped from the front, never the newest one)."""

    def __init__(self, seconds: float, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.keep_ns = int(seconds * 1e9)
        self.max_bytes = max_bytes
        self._ring: deque[EncodedPacket] = deque()
        self._attached: list[Output] = []
        self.bytes = 0
        self.dropped_for_memory = 0

    # -- Output --------------------------------------------------------------------------------
    def write(self, packets: Iterable[EncodedPacket]) -> None:
        packets = list(packets)
        for p in packets:
            self._ring.append(p)
            self.bytes += len(p.data)
        self._trim()
        for out in list(self._attached):
            out.write(packets)

    def close(self) -> None:
        self.clear()

    def _trim(self) -> None:
        if not self._ring:
            return
        newest = self._ring[-1].t_ns
        # Drop whole GOPs that end before the window (or while over the byte bound): keep the
        # keyframe that starts what remains.
        while len(self._ring) > 1:
            keys = [i for i, p in enumerate(self._ring) if p.keyframe]
            if len(keys) < 2:
                break
            old = self._ring[keys[1]].t_ns <= newest - self.keep_ns
            if not old and self.bytes <= self.max_bytes:
                break
            if not old:
                self.dropped_for_memory += keys[1]
            for _ in range(keys[1]):
                self.bytes -= len(self._ring.popleft().data)

    # -- pre-roll ------------------------------------------------------------------------------
    def since(self, start_ns: int) -> list[EncodedPacket]:
        """Packets from the last keyframe at or before ``start_ns`` (or the oldest keyframe)."""
        packets = list(self._ring)
        keys = [i for i, p in enumerate(packets) if p.keyframe and _has_sps(p.data)]
        if not keys:
            return []
        start = keys[0]
        for i in keys:
            if packets[i].t_ns <= start_ns:
                start = i
        return packets[start:]

    def attach(self, out: Output, start_ns: int) -> None:
        """Open ``out`` from the past: the packets since ``start_ns`` (from a keyframe), then
        every live one until :meth:`detach`."""
        out.write(self.since(start_ns))
        self._attached.append(out)

    def detach(self, out: Output) -> None:
        if out in self._attached:
            self._attached.remove(out)

    def clear(self) -> None:
        """Forget the packets (a new encoder's stream starts); attached outputs stay."""
        self._ring.clear()
        self.bytes = 0


class RawRing:
    """Raw pre-roll: the last ``seconds`` of frames as I420 (1.5 bytes a pixel), encoded only when
    a clip opens. Bounded by time and by ``max_bytes``."""

    def __init__(self, seconds: float, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.keep_ns = int(seconds * 1e9)
        self.max_bytes = max_bytes
        self._ring: deque[tuple[int, Any]] = deque()
        self.bytes = 0
        self.dropped_for_memory = 0

    def push(self, image_bgr: Any, t_ns: int) -> None:
        import cv2

        i420 = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420)
        self._ring.append((t_ns, i420))
        self.bytes += i420.nbytes
        while self._ring and (
            self._ring[0][0] < t_ns - self.keep_ns or self.bytes > self.max_bytes
        ):
            if self._ring[0][0] >= t_ns - self.keep_ns:
                self.dropped_for_memory += 1
            self.bytes -= self._ring.popleft()[1].nbytes

    def since(self, start_ns: int) -> list[tuple[int, Any]]:
        """The kept frames from ``start_ns`` on, as (t_ns, I420 image)."""
        return [(t, img) for t, img in self._ring if t >= start_ns]

    def clear(self) -> None:
        self._ring.clear()
        self.bytes = 0


def i420_to_bgr(i420: Any) -> Any:
    import cv2

    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
