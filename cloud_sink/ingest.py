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
import os
import threading
import time
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import (
    BUNDLE_ID,
    CLIP,
    MANIFEST,
    SENSORS,
    FileInfo,
    Manifest,
    ManifestError,
    sha256_file,
)
from cloud_sink.blobs import BlobStore
from cloud_sink.config import Limits
from cloud_sink.db import BundleFile, IngestItem, SinkDB, Upload
from cloud_sink.index import Index
from cloud_sink.media import REVIEW_CLIP, remux_faststart
from cloud_sink.schemas import parse_sensor_message
from cloud_sink.sql import Unavailable
from cloud_sink.staging import S3Staging

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


class Corrupt(Exception):
    """The bundle breaks a rule or a limit: indexed ``corrupt`` with this reason (never a
    server path: reasons are shown to operators and in the API)."""


def summarise_sensors(path: Path, limits: Limits) -> dict[str, Any]:
    """Per channel its sample count and rate; the weight events; the barcodes read. The log is
    read within ``limits`` (record, chunk and message sizes, message count) and every message
    through its schema; Corrupt says which rule a message or the file broke."""
    from capsight_edge.sensors.sensorlog import SensorLogError, iter_messages_bounded

    counts: dict[str, int] = {}
    span: dict[str, list[int]] = {}
    events: list[dict[str, Any]] = []
    barcodes: set[str] = set()
    try:
        messages = iter_messages_bounded(
            path,
            max_chunk_bytes=limits.mcap_chunk_bytes,
            max_message_bytes=limits.mcap_message_bytes,
            max_messages=limits.mcap_messages,
        )
        for n, (topic, log_time, data) in enumerate(messages):
            try:
                msg = parse_sensor_message(data)
            except ValueError as exc:
                raise Corrupt(f"{SENSORS}: message {n} on {topic[:64]}: {exc}") from None
            times = msg.t_ns if isinstance(msg.t_ns, list) and msg.t_ns else [log_time]
            if len(counts) >= 64 and topic not in counts:
                raise Corrupt(f"{SENSORS}: more than 64 channels")
            counts[topic] = counts.get(topic, 0) + len(times)
            lo_hi = span.setdefault(topic, [min(times), max(times)])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], min(times)), max(lo_hi[1], max(times))
            kinds = ("item_added", "item_removed")
            if topic == "/weight/events" and msg.kind in kinds and len(events) < 10_000:
                events.append({"kind": msg.kind, "delta_g": round(msg.delta_g or 0.0, 1)})
            if topic == "/camera/barcodes" and len(barcodes) < 1000:
                # the index holds what identifies an item: the GTIN, else a short text
                code = msg.gtin or (msg.text if msg.text and len(msg.text) <= 64 else None)
                if code and not any(c.isspace() for c in code):
                    barcodes.add(code)
    except SensorLogError as exc:
        raise Corrupt(f"{SENSORS}: {exc}") from None
    channels = {}
    for topic, n in counts.items():
        seconds = (span[topic][1] - span[topic][0]) / 1e9
        channels[topic] = {
            "samples": n,
            "rate_hz": round((n - 1) / seconds, 2) if seconds > 0 else None,
        }
    return {"channels": channels, "weight_events": events, "barcodes": sorted(barcodes)}


def decode(path: Path, encoding: str, max_bytes: int) -> Path:
    """The file as the device had it: ``zstd`` uploads are decompressed beside the upload,
    streamed, and abandoned (nothing left behind) the moment they pass ``max_bytes``. Corrupt
    when the encoding is unknown, the data does not decode, or it decodes to too much."""
    if encoding != "zstd":
        raise Corrupt(f"unknown encoding {encoding[:32]!r}")
    import zstandard

    out = path.with_name(path.name + ".decoded")
    written = 0
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(path, "rb") as fin, open(fd, "wb") as fout:
            reader = zstandard.ZstdDecompressor().stream_reader(fin)
            while block := reader.read(min(1 << 20, max_bytes + 1 - written)):
                written += len(block)
                if written > max_bytes:
                    raise Corrupt(f"decompresses to more than {max_bytes} bytes")
                fout.write(block)
    except zstandard.ZstdError as exc:
        out.unlink(missing_ok=True)
        raise Corrupt(f"not valid zstd data: {exc}") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


MAX_INGEST_ATTEMPTS = 3


class Ingest:
    """Ingest of completed uploads into the blob store and the index, within ``limits``."""

    def __init__(
        self,
        db: SinkDB,
        blobs: BlobStore,
        index: Index,
        uploads_dir: Path,
        limits: Limits | None = None,
        *,
        retry_base_s: float = 5.0,
        staging: S3Staging | None = None,
    ) -> None:
        self.db = db
        self.staging = staging  # uploads in a bucket: fetched here to be verified and stored
        self.retry_base_s = retry_base_s
        self.metrics: Any = None  # cloud_sink.observe.SinkMetrics, set by the app
        self.blobs = blobs
        self.index = index
        self.uploads_dir = uploads_dir
        self.limits = limits or Limits()
        self.removed_bytes = 0  # upload data returned to the disk once its bundle was stored
        self.instance = ""  # this sink instance's name, on the claims it makes
        self.lease_s = 300.0  # a claim of a worker that died is retried after this long
        self._lock = threading.Lock()
        self._interrupted: set[int] = set()  # items claimed when the database went away

    # -- the queue ------------------------------------------------------------------------------
    def run_pending(self, *, max_items: int | None = None) -> int:
        """Ingest what the queue holds (claiming each item); returns how many were done."""
        for seq in sorted(self._interrupted):  # claims cut short by the database: free now
            self.db.release_ingest(seq, "the database was out of reach; queued again")
            self._interrupted.discard(seq)
        done = 0
        while max_items is None or done < max_items:
            item = self.db.claim_ingest(self.lease_s, self.instance)
            if item is None:
                break
            try:
                self.process(item)
            except Unavailable:
                # Not the bundle's fault and not an attempt to count against it: the claim is
                # let go as soon as the database answers again (not when its lease ends).
                self._interrupted.add(item.seq)
                raise
            done += 1
        return done

    def process(self, item: IngestItem) -> None:
        """One queued upload. A failure nobody planned for (a full disk, a blob store that does
        not answer, a bug) is retried with a growing delay up to ``MAX_INGEST_ATTEMPTS``; then
        the bundle is indexed ``corrupt`` with the reason: nothing stays in limbo."""
        upload = self.db.get_upload(item.upload_id)
        if upload is None:
            self.db.finish_ingest(item.seq, "the upload is not in the database", failed=True)
            return
        start = time.perf_counter()
        try:
            result = self.on_complete(upload, self.uploads_dir / upload.id)
        except Unavailable:  # the database or the bucket: wait for it, count no attempt
            raise
        except Exception as exc:
            why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"[:300]
            log.exception("ingest of upload %s failed (attempt %d)", upload.id, item.attempts)
            if item.attempts < MAX_INGEST_ATTEMPTS:
                self._outcome("", "error")
                self.db.retry_ingest(item.seq, self.retry_base_s * 2**item.attempts, why)
                return
            bundle = upload.metadata.get("bundle_id", "")
            if BUNDLE_ID.match(bundle):
                self.index.add_corrupt(
                    bundle, upload.device, None, f"ingest failed {item.attempts} times: {why}"
                )
            self._outcome("corrupt", "gave_up")
            self.db.finish_ingest(item.seq, why, failed=True)
            return
        outcome = result or "waiting"
        if outcome.startswith("not a bundle file"):
            self._outcome("", "not_a_bundle")
        else:
            self._outcome(outcome, "corrupt" if outcome == "corrupt" else None)
        # One line per ingested upload: what it was, what became of it, how long it took.
        log.info(
            "ingest %s: %s",
            upload.id,
            outcome,
            extra={
                "fields": {
                    "device_id": upload.device,
                    "bundle_id": upload.metadata.get("bundle_id", "")[:64],
                    "filename": upload.metadata.get("filename", "")[:32],
                    "result": outcome,
                    "ms": round((time.perf_counter() - start) * 1000, 1),
                }
            },
        )
        self.db.finish_ingest(item.seq, result or "waiting for the bundle's other files")

    def _outcome(self, result: str, failure: str | None) -> None:
        if self.metrics is not None:
            self.metrics.ingest_outcome(result, failure)

    # -- one upload -------------------------------------------------------------------------------
    def on_complete(self, upload: Upload, path: Path) -> str | None:
        bundle_id = upload.metadata.get("bundle_id", "")
        filename = upload.metadata.get("filename", "")
        if not BUNDLE_ID.match(bundle_id) or filename not in FILES:
            log.warning(
                "upload %s from %s names no bundle file (bundle_id=%r filename=%r): "
                "kept until the sweep, not ingested",
                upload.id,
                upload.device,
                bundle_id[:80],
                filename[:80],
            )
            return "not a bundle file: kept until the sweep, not ingested"
        row = self.index.get(bundle_id, upload.device)
        if row is not None and row["status"] == "ok":
            log.info("bundle %s: %s arrived again after it was stored", bundle_id, filename)
            self._remove_upload(upload.id)
            return None  # idempotent: already ingested
        replaced = self.db.put_bundle_file(
            upload.device,
            bundle_id,
            filename,
            upload.id,
            str(path),
            upload.metadata.get("encoding", ""),
        )
        if replaced is not None:
            log.info(
                "bundle %s: %s arrived again; the newer replaces the older", bundle_id, filename
            )
            self._remove_upload(replaced)
        return self.try_assemble(upload.device, bundle_id)

    def try_assemble(self, device: str, bundle_id: str) -> str | None:
        """Index the bundle if it is complete; returns its status, or None while waiting. A
        bundle indexed corrupt is assembled again when a file of it arrives anew."""
        with self._lock, self.db.bundle_lock(device, bundle_id):
            row = self.index.get(bundle_id, device)
            if row is not None and row["status"] == "ok":
                return None  # idempotent: already ingested (here, or by another instance)
            files = self.db.bundle_files(device, bundle_id)
            if MANIFEST not in files:
                return None
            if self.staging is not None:  # in the bucket: a local copy to read, on this instance
                files[MANIFEST] = self._fetched(files[MANIFEST])
            temps: list[Path] = []
            manifest: Manifest | None = None
            try:
                manifest = self._manifest(files[MANIFEST], temps)
                if manifest.bundle_id != bundle_id:
                    raise Corrupt(f"manifest names bundle {manifest.bundle_id}")
                if manifest.device_id != device:
                    raise Corrupt(
                        f"manifest names device {manifest.device_id}, the uploader is {device}"
                    )
                if any(name not in files for name in manifest.files):
                    return None  # waiting for the rest
                if self.staging is not None:
                    files = {name: self._fetched(f) for name, f in files.items()}
                paths = {MANIFEST: temps[-1] if temps else files[MANIFEST].path}
                for name, info in manifest.files.items():
                    paths[name] = self._verified(name, info, files[name], temps)
                return self._store(device, bundle_id, manifest, paths, files)
            except Corrupt as exc:
                log.warning("bundle %s from %s is corrupt: %s", bundle_id, device, exc)
                self.index.add_corrupt(bundle_id, device, manifest, str(exc)[:500])
                return "corrupt"
            finally:
                for t in temps:
                    t.unlink(missing_ok=True)

    def _fetched(self, f: BundleFile) -> BundleFile:
        assert self.staging is not None
        path = self.staging.fetch(f.upload_id, self.uploads_dir / f.upload_id)
        return BundleFile(f.upload_id, path, f.encoding)

    def _decoded(self, name: str, f: BundleFile, limit: int, temps: list[Path]) -> Path:
        """The file as the device had it, decoded within ``limit`` and the expansion ratio."""
        if not f.encoding:
            return f.path
        if name == CLIP:
            raise Corrupt(f"{CLIP}: clips are never accepted compressed")
        try:
            size = f.path.stat().st_size
        except OSError as exc:
            raise Corrupt(f"{name}: the upload's data is gone ({exc.strerror})") from None
        bound = min(limit, max(1024, int(size * self.limits.zstd_expansion_max)))
        try:
            out = decode(f.path, f.encoding, bound)
        except Corrupt as exc:
            raise Corrupt(f"{name}: {exc}") from None
        temps.append(out)
        return out

    def _manifest(self, f: BundleFile, temps: list[Path]) -> Manifest:
        path = self._decoded(MANIFEST, f, self.limits.manifest_bytes, temps)
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.limits.manifest_bytes + 1)
        except OSError as exc:
            raise Corrupt(f"{MANIFEST}: cannot be read ({exc.strerror})") from None
        if len(data) > self.limits.manifest_bytes:
            raise Corrupt(f"{MANIFEST}: larger than {self.limits.manifest_bytes} bytes")
        try:
            return Manifest.from_json(data)
        except ManifestError as exc:
            raise Corrupt(str(exc)) from None

    def _verified_on_arrival(self, f: BundleFile, info: FileInfo) -> bool:
        """The sink checked this file's sha256 as it arrived (one checksummed request for the
        whole file) and it is the manifest's, at the manifest's size: no need to read it again."""
        up = self.db.get_upload(f.upload_id)
        if up is None or up.sha256 is None or up.sha256 != info.sha256:
            return False
        try:
            return f.path.stat().st_size == info.bytes
        except OSError:
            return False

    def _verified(self, name: str, info: FileInfo, f: BundleFile, temps: list[Path]) -> Path:
        """The file decoded (never past what the manifest states for it) and checked against
        the manifest's size and sha256."""
        kind_limit = self.limits.sensors_bytes if name == SENSORS else self.limits.max_upload_bytes
        if info.bytes > kind_limit:
            raise Corrupt(f"{name}: the manifest states {info.bytes} bytes (limit {kind_limit})")
        if not f.encoding and self._verified_on_arrival(f, info):
            return f.path
        path = self._decoded(name, f, info.bytes, temps)
        try:
            got = sha256_file(path)
        except OSError as exc:
            raise Corrupt(f"{name}: cannot be read ({exc.strerror})") from None
        if (got.sha256, got.bytes) != (info.sha256, info.bytes):
            raise Corrupt(f"{name}: sha256/size differ from the manifest")
        return path

    def _store(
        self,
        device: str,
        bundle_id: str,
        manifest: Manifest,
        paths: dict[str, Path],
        files: dict[str, BundleFile],
    ) -> str:
        clip: dict[str, Any] = {}
        thumbs: list[bytes] = []
        if CLIP in paths:
            try:
                clip, thumbs = scan_clip(paths[CLIP])
            except ValueError as exc:
                raise Corrupt(f"{CLIP}: {exc}") from None
        sensors = summarise_sensors(paths[SENSORS], self.limits) if SENSORS in paths else {}
        prefix = f"bundles/{device}/{bundle_id}"
        for name, path in paths.items():
            self.blobs.put_file(f"{prefix}/{name}", path)
        if CLIP in paths:  # a seekable copy for review in the browser (cloud_sink.media)
            review = paths[CLIP].with_name(f"{paths[CLIP].name}.review.mp4")
            try:
                remux_faststart(paths[CLIP], review)
                self.blobs.put_file(f"{prefix}/{REVIEW_CLIP}", review)
                clip["review_clip"] = True
            except Exception as exc:  # review plays the original then; the bundle is fine
                log.warning("bundle %s: no seekable review copy: %s", bundle_id, exc)
            finally:
                review.unlink(missing_ok=True)
        for i, jpg in enumerate(thumbs):
            tmp = paths[CLIP].with_name(f"{paths[CLIP].name}.thumb{i}.jpg")
            tmp.write_bytes(jpg)
            try:
                self.blobs.put_file(f"{prefix}/keyframes/{i:03d}.jpg", tmp)
            finally:
                tmp.unlink(missing_ok=True)
        clip["keyframes"] = len(thumbs)
        self.index.add(manifest, device, "ok", "", clip, sensors)
        for f in files.values():  # in the store now: the upload area gives the space back
            self._remove_upload(f.upload_id)
        log.info("bundle %s from %s ingested", bundle_id, device)
        return "ok"

    def _remove_upload(self, upload_id: str) -> None:
        path = self.uploads_dir / upload_id
        with contextlib.suppress(OSError):
            self.removed_bytes += path.stat().st_size
        path.unlink(missing_ok=True)
        if self.staging is not None:
            self.staging.remove(upload_id)
        self.db.mark_removed(upload_id)


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
        released = await asyncio.to_thread(self.ingest.db.release_claims, self.ingest.instance)
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
            try:
                done = await asyncio.to_thread(self.ingest.run_pending, max_items=1)
            except Unavailable as exc:  # the queue waits in the database: try again
                log.warning("ingest: the %s is out of reach, retrying: %s", exc.what, exc)
                done = 0
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_s)
