"""Ingest: when every file of a bundle has arrived, check it against its manifest and index it.

Each file of a bundle is one tus upload whose ``Upload-Metadata`` names ``bundle_id`` and
``filename`` (``manifest.json``, ``clip.mp4``, ``sensors.mcap``). Ingest runs once per completed
upload (the tus layer guarantees it) and is idempotent per bundle: a bundle already indexed is left
alone. A bundle whose files do not match its manifest, whose manifest names another device, or
whose clip is not a video is indexed as ``corrupt`` with the reason, and its files are kept aside.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import (
    CLIP,
    MANIFEST,
    SENSORS,
    Manifest,
    ManifestError,
    sha256_file,
)
from cloud_sink.blobs import BlobStore
from cloud_sink.db import SinkDB, Upload
from cloud_sink.index import Index

log = logging.getLogger("capsight.sink.ingest")
FILES = (MANIFEST, CLIP, SENSORS)


def probe_clip(path: Path) -> dict[str, Any]:
    """Codec, size, frames and duration of a video; ValueError if it is not one."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            s = c.streams.video[0]
            frames = sum(1 for _ in c.decode(s))
            duration = (
                float(s.duration * s.time_base)
                if s.duration and s.time_base
                else float(c.duration or 0) / 1e6
            )
            return {
                "codec": s.codec_context.name,
                "width": s.codec_context.width,
                "height": s.codec_context.height,
                "frames": frames,
                "duration_s": round(duration, 3),
            }
    except av.FFmpegError as exc:
        raise ValueError(f"not a playable video: {exc}") from exc


def keyframes_and_background(
    path: Path, every_s: float = 0.5, thumb_w: int = 320, empty_mad: float = 4.0
) -> tuple[list[bytes], dict[str, Any]]:
    """JPEG thumbnails of the clip's keyframes, and which sampled frames show only the empty
    background: a frame within ``empty_mad`` grey levels (mean absolute difference, at 64 px)
    of the clip's median frame shows nothing that moves."""
    import av
    import cv2
    import numpy as np

    thumbs: list[bytes] = []
    samples: list[Any] = []
    next_t = 0.0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for frame in c.decode(s):
            t = float(frame.time or 0.0)
            if frame.key_frame and len(thumbs) < 32:
                img = frame.to_ndarray(format="bgr24")
                h = int(img.shape[0] * thumb_w / img.shape[1])
                ok, jpg = cv2.imencode(
                    ".jpg",
                    cv2.resize(img, (thumb_w, h), interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 80],
                )
                if ok:
                    thumbs.append(jpg.tobytes())
            if t >= next_t:
                next_t = t + every_s
                grey = frame.to_ndarray(format="gray")
                samples.append(
                    cv2.resize(
                        grey,
                        (64, 64 * grey.shape[0] // grey.shape[1]),
                        interpolation=cv2.INTER_AREA,
                    ).astype(np.float32)
                )
    if not samples:
        return thumbs, {"sampled_frames": 0, "empty_frames": 0, "all_empty": False}
    background = np.median(np.stack(samples), axis=0)
    empty = sum(1 for f in samples if float(np.mean(np.abs(f - background))) < empty_mad)
    # A clip that never changes at all is only background.
    return thumbs, {
        "sampled_frames": len(samples),
        "empty_frames": empty,
        "all_empty": empty == len(samples),
    }


def summarise_sensors(path: Path) -> dict[str, Any]:
    """Per channel its sample count and rate; the weight events; the barcodes read."""
    from capsight_edge.sensors.sensorlog import read_messages

    counts: dict[str, int] = {}
    span: dict[str, list[int]] = {}
    events: list[dict[str, Any]] = []
    barcodes: set[str] = set()
    for topic, log_time, obj in read_messages(path):
        times = obj["t_ns"] if isinstance(obj.get("t_ns"), list) else [log_time]
        counts[topic] = counts.get(topic, 0) + len(times)
        lo_hi = span.setdefault(topic, [min(times), max(times)])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], min(times)), max(lo_hi[1], max(times))
        if topic == "/weight/events" and obj.get("kind") in ("item_added", "item_removed"):
            events.append({"kind": obj["kind"], "delta_g": round(obj.get("delta_g", 0.0), 1)})
        if topic == "/camera/barcodes" and obj.get("text"):
            barcodes.add(str(obj["text"]))
    channels = {}
    for topic, n in counts.items():
        seconds = (span[topic][1] - span[topic][0]) / 1e9
        channels[topic] = {
            "samples": n,
            "rate_hz": round((n - 1) / seconds, 2) if seconds > 0 else None,
        }
    return {"channels": channels, "weight_events": events, "barcodes": sorted(barcodes)}


def decode(path: Path, encoding: str, max_bytes: int = 16 << 30) -> Path:
    """The file as the device had it: ``zstd`` uploads are decompressed beside the upload
    (streamed, bounded by ``max_bytes`` against decompression bombs). ValueError when the
    encoding is unknown or the data does not decode."""
    if encoding != "zstd":
        raise ValueError(f"unknown encoding {encoding!r}")
    import zstandard

    out = path.with_name(path.name + ".decoded")
    written = 0
    try:
        with open(path, "rb") as fin, open(out, "wb") as fout:
            reader = zstandard.ZstdDecompressor().stream_reader(fin)
            while block := reader.read(1 << 20):
                written += len(block)
                if written > max_bytes:
                    raise ValueError(f"decompresses to more than {max_bytes} bytes")
                fout.write(block)
    except zstandard.ZstdError as exc:
        out.unlink(missing_ok=True)
        raise ValueError(f"not valid zstd data: {exc}") from exc
    except ValueError:
        out.unlink(missing_ok=True)
        raise
    return out


class Ingest:
    def __init__(self, db: SinkDB, blobs: BlobStore, index: Index) -> None:
        self.db = db
        self.blobs = blobs
        self.index = index
        self._lock = threading.Lock()
        with self._lock:
            self.db._exec(
                "CREATE TABLE IF NOT EXISTS bundle_files (device TEXT NOT NULL, "
                "bundle_id TEXT NOT NULL, filename TEXT NOT NULL, upload_id TEXT NOT "
                "NULL, path TEXT NOT NULL, PRIMARY KEY (device, bundle_id, filename))"
            )

    def on_complete(self, upload: Upload, path: Path) -> None:
        bundle_id = upload.metadata.get("bundle_id", "")
        filename = upload.metadata.get("filename", "")
        if not bundle_id or filename not in FILES:
            log.warning(
                "upload %s from %s names no bundle file (bundle_id=%r filename=%r): "
                "kept, not ingested",
                upload.id,
                upload.device,
                bundle_id,
                filename,
            )
            return
        encoding = upload.metadata.get("encoding", "")
        if encoding:
            try:
                path = decode(path, encoding)
            except ValueError as exc:
                log.warning("upload %s (%s/%s): %s", upload.id, bundle_id, filename, exc)
                self.index.add_corrupt(bundle_id, upload.device, None, f"{filename}: {exc}")
                return
        try:
            self.db._exec(
                "INSERT INTO bundle_files VALUES (?, ?, ?, ?, ?)",
                (upload.device, bundle_id, filename, upload.id, str(path)),
            )
        except Exception:  # the same file arrived again under a new upload: keep the first
            log.info("bundle %s: %s arrived again; keeping the first", bundle_id, filename)
        self.try_assemble(upload.device, bundle_id)

    def arrived(self, device: str, bundle_id: str) -> dict[str, Path]:
        rows = self.db._exec(
            "SELECT filename, path FROM bundle_files WHERE device = ? AND bundle_id = ?",
            (device, bundle_id),
        ).fetchall()
        return {r[0]: Path(r[1]) for r in rows}

    def try_assemble(self, device: str, bundle_id: str) -> str | None:
        """Index the bundle if it is complete; returns its status, or None while waiting."""
        with self._lock:
            if self.index.get(bundle_id, device) is not None:
                return None  # idempotent: already ingested
            files = self.arrived(device, bundle_id)
            if MANIFEST not in files:
                return None
            try:
                manifest = Manifest.from_json(files[MANIFEST].read_bytes())
            except (ManifestError, OSError) as exc:
                return self._corrupt(device, bundle_id, None, f"manifest: {exc}")
            if manifest.bundle_id != bundle_id:
                return self._corrupt(
                    device, bundle_id, manifest, f"manifest names bundle {manifest.bundle_id}"
                )
            if manifest.device_id != device:
                return self._corrupt(
                    device,
                    bundle_id,
                    manifest,
                    f"manifest names device {manifest.device_id}, the uploader is {device}",
                )
            if any(name not in files for name in manifest.files):
                return None  # waiting for the rest
            for name, info in manifest.files.items():
                got = sha256_file(files[name])
                if (got.sha256, got.bytes) != (info.sha256, info.bytes):
                    return self._corrupt(
                        device, bundle_id, manifest, f"{name}: sha256/size differ from the manifest"
                    )
            clip: dict[str, Any] = {}
            thumbs: list[bytes] = []
            if CLIP in files:
                try:
                    clip = probe_clip(files[CLIP])
                    thumbs, clip["background"] = keyframes_and_background(files[CLIP])
                except ValueError as exc:
                    return self._corrupt(device, bundle_id, manifest, f"{CLIP}: {exc}")
            sensors = summarise_sensors(files[SENSORS]) if SENSORS in files else {}
            prefix = f"bundles/{device}/{bundle_id}"
            for name, path in files.items():
                self.blobs.put_file(f"{prefix}/{name}", path)
            for i, jpg in enumerate(thumbs):
                tmp = files[CLIP].with_suffix(f".thumb{i}.jpg")
                tmp.write_bytes(jpg)
                self.blobs.put_file(f"{prefix}/keyframes/{i:03d}.jpg", tmp)
                tmp.unlink()
            clip["keyframes"] = len(thumbs)
            self.index.add(manifest, device, "ok", "", clip, sensors)
            log.info("bundle %s from %s ingested", bundle_id, device)
            return "ok"

    def _corrupt(self, device: str, bundle_id: str, manifest: Manifest | None, reason: str) -> str:
        log.warning("bundle %s from %s is corrupt: %s", bundle_id, device, reason)
        self.index.add_corrupt(bundle_id, device, manifest, reason)
        return "corrupt"
