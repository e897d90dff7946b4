"""StorageGuard: pause capture before the disk fills, and make room by what each bundle is worth.

Capture pauses when any limit is crossed and resumes only when all are clear again (hysteresis):

- disk use at or above ``high_watermark_pct`` (resume at or below ``low_watermark_pct``);
- free space under ``min_free_bytes``;
- free space under ``headroom_min`` minutes of recording at the bitrate measured from the bundles
  sealed so far (Frigate's rule, applied before the disk is full instead of after).

While capture is paused it evicts bundles that are already uploaded (oldest first) until below
the low watermark: they cost nothing to lose. Bundles never uploaded are evicted only when the disk
is critically full (free space under ``min_free_bytes``): lowest priority first, oldest first
within a priority, never one that is uploading right now. Every pause and resume is logged and
stored in the journal, where ``capsight status`` reads it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.journal.journal import Journal, utc_now
from capsight_edge.journal.queue_ops import evict

log = logging.getLogger("capsight.journal.guard")
PAUSE_KEY = "capture_paused"


def disk_usage(path: Path) -> tuple[int, int, float]:
    """``(total, free, used_pct)`` of the disk that holds ``path`` (or its nearest existing
    parent: looking creates nothing). The one formula of "disk used" on a cart: what is not free
    to us, reserved blocks included (``status``, the storage guard and the heartbeat agree)."""
    at = Path(path).absolute()
    while not at.exists() and at != at.parent:
        at = at.parent
    usage = shutil.disk_usage(at)
    used_pct = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 0.0
    return usage.total, usage.free, used_pct


@dataclass(frozen=True)
class DiskState:
    total: int
    free: int
    used_pct: float
    bytes_per_min: float
    headroom_min: float


class StorageGuard:
    def __init__(
        self,
        journal: Journal,
        data_dir: str | os.PathLike[str],
        *,
        high_watermark_pct: float = 90.0,
        low_watermark_pct: float = 80.0,
        min_free_bytes: int = 512 * 2**20,
        headroom_min: float = 10.0,
        default_bytes_per_min: float = 30 * 2**20,
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self.journal = journal
        self.data_dir = Path(os.path.expanduser(data_dir))
        self.high, self.low = high_watermark_pct, low_watermark_pct
        self.min_free = min_free_bytes
        self.headroom_min = headroom_min
        self.default_bpm = default_bytes_per_min
        self.on_change = on_change
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.evicted: list[str] = []
        self.paused_reason: str | None = journal.kv_get(PAUSE_KEY)

    @classmethod
    def from_profile(
        cls,
        journal: Journal,
        profile: Any,
        *,
        on_change: Callable[[str | None], None] | None = None,
    ) -> StorageGuard:
        st = profile.storage
        return cls(
            journal,
            st.data_dir,
            high_watermark_pct=st.high_watermark_pct,
            low_watermark_pct=st.low_watermark_pct,
            min_free_bytes=st.min_free_bytes,
            headroom_min=st.headroom_min,
            on_change=on_change,
        )

    # -- measuring ------------------------------------------------------------------------------
    def bytes_per_minute(self) -> float:
        """Recording bitrate from the sealed bundles (bytes / seconds of clip)."""
        total_bytes, total_s = 0, 0.0
        for row in self.journal.bundles(("sealed", "uploading", "uploaded")):
            seconds = row.duration_s
            if seconds > 0:
                total_bytes += row.bytes
                total_s += seconds
        return total_bytes / total_s * 60 if total_s > 0 else self.default_bpm

    def disk(self) -> DiskState:
        """The data folder's disk (that of its nearest existing parent: looking creates
        nothing)."""
        total, free, used_pct = disk_usage(self.data_dir)
        bpm = self.bytes_per_minute()
        return DiskState(total, free, used_pct, bpm, free / bpm)

    def _limits(self, d: DiskState) -> list[str]:
        crossed = []
        if d.used_pct >= self.high:
            crossed.append(f"disk {d.used_pct:.1f}% used (high watermark {self.high:g}%)")
        if d.free < self.min_free:
            crossed.append(
                f"{d.free / 2**20:.0f} MiB free (minimum {self.min_free / 2**20:.0f} MiB)"
            )
        if d.headroom_min < self.headroom_min:
            crossed.append(
                f"{d.headroom_min:.1f} min of recording fit (headroom "
                f"{self.headroom_min:g} min at {d.bytes_per_min / 2**20:.1f} MiB/min)"
            )
        return crossed

    def _clear(self, d: DiskState) -> bool:
        return (
            d.used_pct <= self.low
            and d.free >= self.min_free
            and d.headroom_min >= self.headroom_min
        )

    # -- acting ---------------------------------------------------------------------------------
    def check(self) -> DiskState:
        """Pause or resume, and evict what must go; call often (the guard's thread does)."""
        with self._lock:
            d = self.disk()
            limits = self._limits(d)
            if limits and self.paused_reason is None:
                self._set_paused("; ".join(limits))
            if self.paused_reason is not None:
                self._evict(
                    ("uploaded",),
                    lambda s: s.used_pct <= self.low and s.headroom_min >= self.headroom_min,
                )
            if d.free < self.min_free:
                self._evict(("uploaded", "sealed"), lambda s: s.free >= self.min_free)
            d = self.disk()
            if self.paused_reason is not None and self._clear(d):
                self._set_paused(None)
            return d

    def _set_paused(self, reason: str | None) -> None:
        self.paused_reason = reason
        self.journal.kv_set(PAUSE_KEY, f"{reason} (since {utc_now()})" if reason else None)
        if reason:
            log.warning("capture paused: %s", reason)
        else:
            log.warning("capture resumed")
        if self.on_change is not None:
            self.on_change(reason)

    def eviction_order(self, states: tuple[str, ...] = ("uploaded", "sealed")) -> list[str]:
        """Uploaded bundles oldest first, then sealed ones by priority (lowest first), oldest
        first within a priority."""
        out = []
        if "uploaded" in states:
            out += [
                r.id
                for r in sorted(self.journal.bundles(("uploaded",)), key=lambda r: r.created_ns)
            ]
        if "sealed" in states:
            out += [
                r.id
                for r in sorted(
                    self.journal.bundles(("sealed",)), key=lambda r: (r.priority, r.created_ns)
                )
            ]
        return out

    def _evict(self, states: tuple[str, ...], enough: Callable[[DiskState], bool]) -> None:
        for bundle_id in self.eviction_order(states):
            if enough(self.disk()):
                return
            row = self.journal.get(bundle_id)
            if row is None or row.state not in states:
                continue  # changed meanwhile (an upload started): never touch it
            reason = (
                "storage pressure"
                if row.state == "uploaded"
                else "disk critically full (never uploaded)"
            )
            evict(self.journal, self.data_dir, bundle_id, reason)
            self.evicted.append(bundle_id)
            log.warning(
                "evicted %s (%s, priority %d): %s", bundle_id, row.state, row.priority, reason
            )

    def start(self, interval_s: float = 1.0) -> StorageGuard:
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.check()
                except Exception:  # a guard bug must not stop capture: log and go on
                    log.exception("storage check failed")

        self.check()
        self._thread = threading.Thread(target=loop, name="storage-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None
