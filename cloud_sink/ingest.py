"""Ingest: when every file of a bundle has arrived, check it against its manifest and index it.

Each file of a bundle is one tus upload whose ``Upload-Metadata`` names ``bundle_id`` and
``filename`` (``manifest.json``, ``clip.mp4``, ``sensors.mcap``). Ingest is off the request path:
completing an upload queues it (``SinkDB.complete``, one transaction), and :class:`IngestWorker`
works the durable queue in the background, so a sink killed in between ingests the upload after
its restart. Ingest is idempotent per bundle (a bundle already indexed is left alone), so each
bundle is indexed exactly once. A bundle whose files do not match its manifest, whose manifest
names another device, or whose clip is not a video is indexed as ``corrupt`` with the reason,
and its files are kept aside. The clip is decoded once per ingest (:func:`scan_clip`).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from cloud_sink.db import IngestItem, SinkDB, Upload
from cloud_sink.index import Index

log = logging.getLogger("capsight.sink.ingest")
FILES = (MANIFEST, CLIP, SENSORS)


def scan_clip(
    path: Path, every_s: float = 0.5, thumb_w: int = 320, empty_mad: float = 4.0
) -> tuple[dict[str, Any], list[bytes]]:
    """One decoding pass over a clip: its codec, size, frames and duration; JPEG thumbnails of
    its keyframes; and which sampled frames show only the empty background (a frame within
    ``empty_mad`` grey levels, mean absolute difference at 64 px, of the clip's median frame
    shows nothing that moves). ValueError when it is not a playable video."""
    import av
    import cv2
    import numpy as np

    thumbs: list[bytes] = []
    samples: list[Any] = []
    frames, next_t = 0, 0.0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            s = c.streams.video[0]
            for frame in c.decode(s):
                frames += 1
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
            duration = (
                float(s.duration * s.time_base)
                if s.duration and s.time_base
                else float(c.duration or 0) / 1e6
            )
            info: dict[str, Any] = {
                "codec": s.codec_context.name,
                "width": s.codec_context.width,
                "height": s.codec_context.height,
                "frames": frames,
                "duration_s": round(duration, 3),
            }
    except av.FFmpegError as exc:
        raise ValueError(f"not a playable video: {exc}") from exc
    if not samples:
        info["background"] = {"sampled_frames": 0, "empty_frames": 0, "all_empty": False}
        return info, thumbs
    background = np.median(np.stack(samples), axis=0)
    empty = sum(1 for f in samples if float(np.mean(np.abs(f - background))) < empty_mad)
    # A clip that never changes at all is only background.
    info["background"] = {
        "sampled_frames": len(samples),
        "empty_frames": empty,
        "all_empty": empty == len(samples),
    }
    return info, thumbs


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
    """Ingest of completed uploads into the blob store and the index."""

    def __init__(self, db: SinkDB, blobs: BlobStore, index: Index, uploads_dir: Path) -> None:
        self.db = db
        self.blobs = blobs
        self.index = index
        self.uploads_dir = uploads_dir
        self._lock = threading.Lock()

    # -- the queue ------------------------------------------------------------------------------
    def run_pending(self, *, max_items: int | None = None) -> int:
        """Ingest what the queue holds (claiming each item); returns how many were done."""
        done = 0
        while max_items is None or done < max_items:
            item = self.db.claim_ingest()
            if item is None:
                break
            self.process(item)
            done += 1
        return done

    def process(self, item: IngestItem) -> None:
        """One queued upload; marked done (or failed, with the reason) in the queue after."""
        upload = self.db.get_upload(item.upload_id)
        if upload is None:
            self.db.finish_ingest(item.seq, "the upload is not in the database", failed=True)
            return
        try:
            result = self.on_complete(upload, self.uploads_dir / upload.id)
        except Exception as exc:  # a bug or a full disk: keep the item, say why
            log.exception("ingest of upload %s failed", upload.id)
            self.db.finish_ingest(item.seq, f"{type(exc).__name__}: {exc}", failed=True)
            return
        self.db.finish_ingest(item.seq, result or "waiting for the bundle's other files")

    # -- one upload -------------------------------------------------------------------------------
    def on_complete(self, upload: Upload, path: Path) -> str | None:
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
            return "not a bundle file: kept, not ingested"
        encoding = upload.metadata.get("encoding", "")
        if encoding:
            try:
                path = decode(path, encoding)
            except ValueError as exc:
                log.warning("upload %s (%s/%s): %s", upload.id, bundle_id, filename, exc)
                self.index.add_corrupt(bundle_id, upload.device, None, f"{filename}: {exc}")
                return "corrupt"
        if not self.db.add_bundle_file(upload.device, bundle_id, filename, upload.id, str(path)):
            log.info("bundle %s: %s arrived again; keeping the first", bundle_id, filename)
        return self.try_assemble(upload.device, bundle_id)

    def try_assemble(self, device: str, bundle_id: str) -> str | None:
        """Index the bundle if it is complete; returns its status, or None while waiting."""
        with self._lock:
            if self.index.get(bundle_id, device) is not None:
                return None  # idempotent: already ingested
            files = self.db.bundle_files(device, bundle_id)
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
                    clip, thumbs = scan_clip(files[CLIP])
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


class IngestWorker:
    """Works the ingest queue in the background of the sink's event loop: each item in a
    thread (ingest reads and hashes whole files), one at a time; :meth:`wake` (called when an
    upload completes) ends the wait at once."""

    def __init__(self, ingest: Ingest, *, idle_s: float = 1.0) -> None:
        self.ingest = ingest
        self.idle_s = idle_s
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        released = await asyncio.to_thread(self.ingest.db.release_claims)
        if released:
            log.warning(
                "ingest: %d uploads left half-ingested by a crash are queued again", released
            )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            done = await asyncio.to_thread(self.ingest.run_pending, max_items=1)
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_s)
