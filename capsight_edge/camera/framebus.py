"""FrameBus: one producer, many consumers, frames in shared memory.

The producer copies each frame once into a ring of slots in a ``multiprocessing.shared_memory``
block; consumers in this or other processes attach by name and get numpy *views* of a slot, no
copies. The producer never waits: it overwrites the oldest slot (latest wins). Each slot is
guarded by a sequence lock (``begin`` and ``end`` sequence numbers written before and after the
pixels), so a consumer can tell whether the frame it was looking at has been overwritten while it
worked (:meth:`SharedFrame.valid`). Consumers count the frames they skipped.
"""

from __future__ import annotations

import contextlib
import struct
import time
import uuid
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, cast

from capsight_edge.errors import FrameError

_MAGIC = 0x43534642  # "CSFB"
_HEAD = struct.Struct("<IIIIIIdQ")  # magic, version, width, height, channels, slots, fps, latest
_SLOT = struct.Struct("<QQQ")  # begin seq, end seq, t_ns
_HEAD_SIZE = 64
_SLOT_HEAD = 32


@dataclass
class SharedFrame:
    image: Any
    t_ns: int
    seq: int
    pixel_format: str
    _bus: FrameBusReader

    def valid(self) -> bool:
        """True while the slot still holds this frame (check after using the view)."""
        begin, end, _ = self._bus._slot_head(self.seq % self._bus.slots)
        return begin == end == self.seq


class _Layout:
    def __init__(
        self, shm: shared_memory.SharedMemory, width: int, height: int, channels: int, slots: int
    ) -> None:
        import numpy as np

        self.shm = shm
        self.width, self.height, self.channels, self.slots = width, height, channels, slots
        self.frame_bytes = width * height * channels
        shape = (height, width, channels) if channels > 1 else (height, width)
        self.views = []
        for i in range(slots):
            off = _HEAD_SIZE + i * (_SLOT_HEAD + self.frame_bytes) + _SLOT_HEAD
            self.views.append(np.ndarray(shape, np.uint8, buffer=shm.buf, offset=off))

    def slot_offset(self, i: int) -> int:
        return _HEAD_SIZE + i * (_SLOT_HEAD + self.frame_bytes)


def _size(width: int, height: int, channels: int, slots: int) -> int:
    return _HEAD_SIZE + slots * (_SLOT_HEAD + width * height * channels)


class FrameBus:
    """The producer's side. ``name`` lets other processes attach (:class:`FrameBusReader`)."""

    def __init__(
        self,
        width: int,
        height: int,
        channels: int = 3,
        *,
        slots: int = 4,
        fps: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.name = name or f"capsight-fb-{uuid.uuid4().hex[:12]}"
        self.shm = shared_memory.SharedMemory(
            self.name, create=True, size=_size(width, height, channels, slots)
        )
        self._buf: Any = cast(Any, self.shm.buf)
        self._layout = _Layout(self.shm, width, height, channels, slots)
        self.width, self.height, self.channels = width, height, channels
        self.slots = slots
        self.seq = 0
        self.pixel_format = "BGR" if channels == 3 else "GRAY"
        _HEAD.pack_into(self._buf, 0, _MAGIC, 1, width, height, channels, slots, fps, 0)
        self.rejected = 0

    def publish(self, image: Any, t_ns: int) -> int:
        """Copy one frame in; never blocks. A frame of the wrong shape is rejected (FrameError)."""
        lay = self._layout
        want = lay.views[0].shape
        if getattr(image, "shape", None) != want or str(getattr(image, "dtype", "")) != "uint8":
            self.rejected += 1
            raise FrameError(
                f"frame of shape {getattr(image, 'shape', None)} "
                f"{getattr(image, 'dtype', None)}, the bus carries {want} uint8"
            )
        seq = self.seq + 1
        slot = seq % lay.slots
        off = lay.slot_offset(slot)
        buf = self._buf
        _SLOT.pack_into(buf, off, seq, 0, t_ns)  # begin: readers see it in flux
        lay.views[slot][...] = image
        _SLOT.pack_into(buf, off, seq, seq, t_ns)  # end: complete
        struct.pack_into("<Q", buf, _HEAD.size - 8, seq)  # latest
        self.seq = seq
        return seq

    def close(self) -> None:
        self._layout.views.clear()
        self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()

    def __enter__(self) -> FrameBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open an existing segment without registering it with this process tree's resource
    tracker (Python < 3.13 would unlink the producer's memory when this consumer exits, or
    complain when the producer, in the same tree, unlinks it)."""
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name, create=False)
    except FileNotFoundError as exc:
        raise FrameError(f"no frame bus named {name!r}") from exc
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


class FrameBusReader:
    """A consumer: attach by name; ``next_frame`` gives the newest frame after the last one
    seen, as a zero-copy view, and counts the frames skipped in between."""

    def __init__(self, name: str) -> None:
        self.shm = _attach(name)
        self._buf: Any = cast(Any, self.shm.buf)
        magic, _, w, h, c, slots, fps, _ = _HEAD.unpack_from(self._buf, 0)
        if magic != _MAGIC:
            raise FrameError(f"{name!r} is not a capsight frame bus")
        self._layout = _Layout(self.shm, w, h, c, slots)
        self.slots, self.fps = slots, fps
        self.pixel_format = "BGR" if c == 3 else "GRAY"
        self.last_seq = 0
        self.received = 0
        self.skipped = 0
        self.torn = 0

    def _slot_head(self, slot: int) -> tuple[int, int, int]:
        return _SLOT.unpack_from(self._buf, self._layout.slot_offset(slot))  # type: ignore[return-value]

    def latest_seq(self) -> int:
        return int(struct.unpack_from("<Q", self._buf, _HEAD.size - 8)[0])

    def next_frame(self, timeout_s: float = 1.0) -> SharedFrame | None:
        """The newest frame newer than the last one returned, or None at the time-out."""
        deadline = time.monotonic() + timeout_s
        period = 1.0 / self.fps if self.fps > 0 else 0.01
        while True:
            seq = self.latest_seq()
            if seq > self.last_seq:
                slot = seq % self.slots
                begin, end, t_ns = self._slot_head(slot)
                if begin == end == seq:
                    if self.last_seq:
                        self.skipped += seq - self.last_seq - 1
                    self.last_seq = seq
                    self.received += 1
                    return SharedFrame(self._layout.views[slot], t_ns, seq, self.pixel_format, self)
                self.torn += 1  # being written right now: look again in a moment
            now = time.monotonic()
            if now >= deadline:
                return None
            # Sleep until the next frame is due rather than spin: each wake-up costs CPU.
            _, _, last_t = self._slot_head(seq % self.slots)
            due = (last_t / 1e9 + period) - time.monotonic() + 0.001
            wait = due if 0.001 < due <= period else period / 4
            time.sleep(min(wait, max(0.0, deadline - now)))

    def close(self) -> None:
        self._layout.views.clear()
        self.shm.close()
