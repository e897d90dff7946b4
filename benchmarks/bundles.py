"""Real capture bundles for the sink and uploader tests and benchmarks, and sealing them into a
journal."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from capsight_edge.bundle.manifest import (
    CLIP,
    MANIFEST,
    SENSORS,
    Manifest,
    TriggerInfo,
    VideoInfo,
    sha256_file,
)
from capsight_edge.journal.journal import Journal
from capsight_edge.recorder.encoders import VideoEncoder
from capsight_edge.recorder.outputs import Mp4Output
from capsight_edge.sensors.sensorlog import SensorLog


def make_bundle(
    folder: Path,
    bundle_id: str,
    device: str = "cart-a",
    *,
    lie: bool = False,
    not_video: bool = False,
    still: bool = False,
    noise_frames: int = 0,
    priority: int = 3,
    rule: str = "unscanned_item",
    also: tuple[str, ...] = (),
) -> Path:
    """A real bundle: a libx264 clip, an MCAP sensor log, a manifest. ``noise_frames`` adds
    frames of random noise (about 0.1 MB each at 320x240) for uploads of a few MB; ``also``:
    other rules that fired in it."""
    folder.mkdir(parents=True)
    w, h = (320, 240) if noise_frames else (160, 120)
    if not_video:
        (folder / CLIP).write_bytes(b"this is not a video" * 100)
    else:
        enc = VideoEncoder("libx264", w, h, 15.0)
        out = Mp4Output(folder / CLIP, "h264", 15.0)
        rng = np.random.default_rng(len(bundle_id))
        for i in range(20 + noise_frames):
            if i >= 20:
                img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            else:
                img = np.full((h, w, 3), 90 if still else 40 + i * 5, np.uint8)
            out.write(enc.encode(img, int(i / 15 * 1e9)))
        out.write(enc.flush())
        out.close()
    with SensorLog(folder / SENSORS) as log:
        for i in range(40):
            log.add("/weight/fused", 10**9 + i * 12_500_000, grams=float(i), stable=True)
        log.event("/weight/events", 10**9 + 10**8, {"kind": "item_added", "delta_g": 412.0})
        log.event(
            "/camera/barcodes",
            10**9 + 2 * 10**8,
            {"t_ns": 10**9, "symbology": "EAN-13", "text": "4006381333931"},
        )
    files = {CLIP: sha256_file(folder / CLIP), SENSORS: sha256_file(folder / SENSORS)}
    if lie:
        files[CLIP].bytes += 1
    m = Manifest(
        bundle_id,
        device,
        "store-7",
        "sim",
        TriggerInfo(rule, priority, 0, {}, also=list(also)),
        0,
        10**9,
        "2026-11-26T08:00:00.000Z",
        "2026-11-26T08:00:06.000Z",
        VideoInfo(
            "h264",
            "libx264",
            w,
            h,
            15.0,
            20 + noise_frames,
            1.33,
        ),
        files,
        "2026-11-26T08:00:07.000Z",
        "test",
    )
    (folder / MANIFEST).write_text(m.to_json())
    return folder


def seal_bundle(
    journal: Journal, data_dir: Path, bundle_id: str, *, created_ns: int = 0, **kw: object
) -> Path:
    """Make a bundle in ``data_dir/bundles`` and record it as sealed in the journal."""
    priority = int(kw.get("priority", 3))  # type: ignore[call-overload]
    folder = make_bundle(data_dir / "bundles" / bundle_id, bundle_id, **kw)  # type: ignore[arg-type]
    m = Manifest.from_json((folder / MANIFEST).read_bytes())
    journal.add_recording(
        bundle_id, priority=priority, rule=m.trigger.rule, created_ns=created_ns or None
    )
    journal.mark_sealed(bundle_id, {k: asdict(v) for k, v in m.files.items()})
    return folder
