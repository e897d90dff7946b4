"""What a cart holds and how it is doing, in one object: ``capsight status`` prints it, and an
integrator's health endpoint can serve it.

The queue by state and priority, the disk against the storage guard's limits (and how many
minutes of recording still fit at the measured bitrate), whether capture is paused and why, the
last error, and the uploader's state with the upload queue's progress.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from capsight_edge.journal.guard import PAUSE_KEY as CAPTURE_PAUSE_KEY
from capsight_edge.journal.guard import StorageGuard
from capsight_edge.journal.journal import Journal
from capsight_edge.profile.schema import Profile
from capsight_edge.uploader.status import queue_progress


def cart_status(profile: Profile, journal: Journal) -> dict[str, Any]:
    """The cart's status (JSON field names are an interface: ``capsight status --json``)."""
    data = Path(os.path.expanduser(profile.storage.data_dir))
    guard = StorageGuard.from_profile(journal, profile)
    disk = guard.disk()
    last = journal.last_error()
    progress = queue_progress(journal)
    return {
        "data_dir": str(data),
        "queue": journal.counts(),
        "disk": {
            "total_bytes": disk.total,
            "free_bytes": disk.free,
            "used_pct": round(disk.used_pct, 1),
            "recording_bytes_per_min": round(disk.bytes_per_min),
            "headroom_min": round(disk.headroom_min, 1),
            "high_watermark_pct": guard.high,
            "low_watermark_pct": guard.low,
        },
        "capture_paused": journal.kv_get(CAPTURE_PAUSE_KEY),
        "last_error": {"bundle_id": last[0], "error": last[1]} if last else None,
        "upload": {**progress["uploader"], "uploads_held": progress["uploads_held"]},
        "upload_queue": {k: progress[k] for k in ("bundles", "bytes_left", "eta_s")},
    }
