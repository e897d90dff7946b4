"""Frame sources behind one interface: a V4L2/UVC camera, a file replay, the synthetic scene.

A :class:`Frame` is a numpy image, its pixel format and the host monotonic time (ns) it was
captured. Every source has ``open()``, ``read()`` (the next frame, or None when it has ended) and
``close()``; a live camera that vanishes or stalls is reopened with backoff and the events counted,
and a corrupt frame is dropped and counted, never passed on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from capsight_edge.errors import DeviceError

log = logging.getLogger("capsight.camera")


@dataclass
class Frame:
    image: Any  # numpy uint8, HxWx3 for BGR, HxW for GRAY
    pixel_format: str  # "BGR" or "GRAY"
    t_ns: int
    seq: int = 0
    truth: Any = None  # what the synthetic scene put in this frame (None for real cameras)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class FrameSource(Protocol):
    name: str
    fps: float

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


def _valid(image: Any, width: int | None = None, height: int | None = None) -> bool:
    return (
        image is not None
        and getattr(image, "dtype", None) is not None
        and str(image.dtype) == "uint8"
        and image.ndim in (2, 3)
        and image.size > 0
        and (width is None or image.shape[1] == width)
        and (height is None or image.shape[0] == height)
    )


class SyntheticSource:
    """The synthetic cart scene at ``fps``. ``clock`` gives scenario seconds (share it with the
    MCU simulator so picture and weight agree); ``realtime=False`` steps the scenario clock by one
    frame period per read instead of waiting."""

    def __init__(
        self,
        renderer: Any,
        *,
        fps: float = 30.0,
        realtime: bool = True,
        clock: Callable[[], float] | None = None,
        start_s: float = 0.0,
        duration_s: float | None = None,
    ) -> None:
        self.renderer = renderer
        self.fps = fps
        self.realtime = realtime
        self.name = "synthetic"
        self._clock = clock
        self._t0 = time.monotonic()
        self._next = start_s
        self._end = None if duration_s is None else start_s + duration_s
        self._seq = 0

    def open(self) -> None:
        self._t0 = time.monotonic() - self._next

    def now_s(self) -> float:
        return self._clock() if self._clock else time.monotonic() - self._t0

    def read(self) -> Frame | None:
        if self._end is not None and self._next >= self._end:
            return None
        if self.realtime:
            delay = self._next - self.now_s()
            if delay > 0:
                time.sleep(delay)
            t_s = max(self._next, self.now_s())
            self._next = max(self._next + 1.0 / self.fps, t_s)
            t_ns = time.monotonic_ns()
        else:
            t_s = self._next
            self._next += 1.0 / self.fps
            t_ns = int(t_s * 1e9)
        image, truth = self.renderer.render(t_s)
        self._seq += 1
        return Frame(image, "BGR", t_ns, self._seq, truth)

    def close(self) -> None:
        pass


class FileReplaySource:
    """Frames of a video file (anything PyAV decodes), paced at the file's rate or as fast as
    possible; a frame that fails to decode is counted and skipped."""

    def __init__(self, path: str, *, realtime: bool = True, loop: bool = False) -> None:
        self.path = path
        self.realtime = realtime
        self.loop = loop
        self.name = f"file:{path}"
        self.fps = 30.0
        self.errors: Counter[str] = Counter()
        self._container: Any = None
        self._frames: Any = None
        self._seq = 0
        self._start_wall = 0.0
        self._first_pts: float | None = None

    def open(self) -> None:
        import av

        try:
            self._container = av.open(self.path)
            stream = self._container.streams.video[0]
        except (OSError, av.FFmpegError, IndexError) as exc:
            raise DeviceError(f"cannot replay {self.path}: {exc}") from exc
        if stream.average_rate:
            self.fps = float(stream.average_rate)
        self._frames = self._container.decode(stream)
        self._start_wall = time.monotonic()
        self._first_pts = None

    def read(self) -> Frame | None:
        import av

        while True:
            try:
                vf = next(self._frames)
            except StopIteration:
                if not self.loop:
                    return None
                self.close()
                self.open()
                continue
            except av.FFmpegError as exc:
                self.errors["decode"] += 1
                if self.errors["decode"] == 1:
                    log.warning(
                        "%s: a frame failed to decode (%s); further ones are counted",
                        self.path,
                        exc,
                    )
                if self.errors["decode"] > 1000:
                    return None
                continue
            image = vf.to_ndarray(format="bgr24")
            if not _valid(image):
                self.errors["corrupt"] += 1
                continue
            t = float(vf.time) if vf.time is not None else self._seq / self.fps
            if self._first_pts is None:
                self._first_pts = t
            if self.realtime:
                delay = (t - self._first_pts) - (time.monotonic() - self._start_wall)
                if delay > 0:
                    time.sleep(delay)
            self._seq += 1
            return Frame(image, "BGR", time.monotonic_ns(), self._seq)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class V4l2Source:
    """A V4L2/UVC camera through OpenCV. A camera that disappears or stalls (no frame for
    ``stall_s``) is reopened with backoff; reopen attempts and corrupt frames are counted."""

    def __init__(
        self,
        device: str,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        pixel_format: str = "MJPG",
        stall_s: float = 2.0,
        capture_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.device: int | str = int(device) if str(device).isdigit() else device
        self.name = f"v4l2:{device}"
        self.width, self.height, self.fps = width, height, fps
        self.pixel_format = pixel_format
        self.stall_s = stall_s
        self.errors: Counter[str] = Counter()
        self.reopens = 0
        self._factory = capture_factory
        self._cap: Any = None
        self._seq = 0
        self._backoff = 0.25
        self._closed = False

    def _open_once(self) -> bool:
        import cv2

        cap = self._factory(self.device) if self._factory else cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            return False
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.pixel_format[:4]))  # type: ignore[attr-defined]
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        return True

    def open(self) -> None:
        if not self._open_once():
            raise DeviceError(f"camera {self.device} does not open")

    def _reopen(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        while not self._closed:
            self.reopens += 1
            if self._open_once():
                self._backoff = 0.25
                log.warning("camera %s reopened", self.device)
                return
            time.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)

    def read(self) -> Frame | None:
        stalled_since = time.monotonic()
        while not self._closed:
            if self._cap is None:
                self._reopen()
                continue
            ok, image = self._cap.read()
            if ok and _valid(image):
                self._seq += 1
                return Frame(
                    image, "BGR" if image.ndim == 3 else "GRAY", time.monotonic_ns(), self._seq
                )
            self.errors["corrupt" if ok else "no_frame"] += 1
            if self.errors["no_frame"] + self.errors["corrupt"] == 1:
                log.warning(
                    "camera %s: bad or missing frame; further ones are counted", self.device
                )
            if time.monotonic() - stalled_since > self.stall_s or not self._cap.isOpened():
                self.errors["stall"] += 1
                self._reopen()
                stalled_since = time.monotonic()
        return None

    def close(self) -> None:
        self._closed = True
        if self._cap is not None:
            self._cap.release()
            self._cap = None
