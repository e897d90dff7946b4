"""Giving disk space back: the sweep that removes what no bundle will ever need.

At start and then every ``[sweep] interval_s``:
- incomplete uploads past their expiry (they answer 410 from then on) lose their data files;
- uploads terminated by their device lose theirs;
- completed uploads whose bundle was not stored (corrupt, or not a bundle file) are kept
  ``keep_corrupt_hours`` for an operator to look at, then removed; those of a bundle still
  waiting for its other files are kept as long as an incomplete upload would be, seven times
  over (a cart that went offline mid-bundle comes back).

A stored bundle's uploads leave at once (ingest removes them). With uploads staged in a bucket,
removing one also gives the bucket's space back (its parts, tail and joined object), and this
instance's local copies of uploads that another instance stored, and spool files a crash left,
go too. The figures (what was removed,
how many bytes came back, what the upload area holds now) are in ``GET /api/storage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud_sink.config import Sweep
from cloud_sink.db import SinkDB, utc_now
from cloud_sink.index import Index
from cloud_sink.staging import S3Staging
from cloud_sink.tus import UPLOAD_ID

log = logging.getLogger("capsight.sink.sweep")
WAITING_FACTOR = 7


@dataclass
class SweepFigures:
    sweeps: int = 0
    last_sweep_utc: str = ""
    expired_removed: int = 0
    terminated_removed: int = 0
    completed_removed: int = 0
    bytes_returned: int = 0


class Sweeper:
    def __init__(
        self,
        db: SinkDB,
        index: Index,
        uploads_dir: Path,
        settings: Sweep,
        *,
        staging: S3Staging | None = None,
    ) -> None:
        self.db, self.index, self.dir, self.settings = db, index, uploads_dir, settings
        self.staging = staging
        self.figures = SweepFigures()
        self._task: asyncio.Task[None] | None = None

    def _remove(self, upload_id: str) -> None:
        for path in (
            self.dir / upload_id,
            self.dir / f"{upload_id}.pending",
            self.dir / f"{upload_id}.decoded",
        ):
            with contextlib.suppress(OSError):
                self.figures.bytes_returned += path.stat().st_size
                path.unlink()
        if self.staging is not None:
            self.figures.bytes_returned += self.staging.remove(upload_id)
        self.db.mark_removed(upload_id)

    def _local_leftovers(self, now: float) -> None:
        """Staged in a bucket, this folder only caches: copies fetched to ingest whose upload
        is gone now (another instance stored its bundle), and spool or fetch files older than
        an hour (a crash left them; live ones are written to as their bytes arrive)."""
        for p in list(self.dir.iterdir()) if self.dir.is_dir() else []:
            with contextlib.suppress(OSError):
                if p.name.startswith("."):
                    stale = p.stat().st_mtime < now - 3600
                elif UPLOAD_ID.match(p.name):  # not an ingest's temporary file (``*.decoded``)
                    up = self.db.get_upload(p.name)
                    stale = up is None or up.removed_utc is not None
                else:
                    continue
                if stale:
                    size = p.stat().st_size
                    p.unlink()
                    self.figures.bytes_returned += size

    def sweep(self, now: float | None = None) -> SweepFigures:
        now = time.time() if now is None else now
        for upload_id in self.db.expired(now):
            self._remove(upload_id)
            self.figures.expired_removed += 1
        for upload_id in self.db.terminated_with_data():
            self._remove(upload_id)
            self.figures.terminated_removed += 1
        keep_s = self.settings.keep_corrupt_hours * 3600
        waiting_s = self.settings.expire_hours * 3600 * WAITING_FACTOR
        for up in self.db.completed_before(now - keep_s):
            bundle = self.db.bundle_of(up.id)
            row = self.index.get(bundle[1], bundle[0]) if bundle else None
            if row is None and bundle is not None:  # its bundle still waits for files
                completed = self.db.completed_ts(up.id)
                if completed is not None and completed > now - waiting_s:
                    continue
            self._remove(up.id)
            self.figures.completed_removed += 1
        if self.staging is not None:
            self._local_leftovers(now)
        self.figures.sweeps += 1
        self.figures.last_sweep_utc = utc_now()
        return self.figures

    def usage(self) -> dict[str, Any]:
        files = [p for p in self.dir.iterdir() if p.is_file()] if self.dir.is_dir() else []
        return {
            **asdict(self.figures),
            "upload_area_files": len(files),
            "upload_area_bytes": sum(p.stat().st_size for p in files),
        }

    async def start(self) -> None:
        await asyncio.to_thread(self.sweep)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                figures = await asyncio.to_thread(self.sweep)
            except Exception:  # a sweep bug must not stop the sink: log and go on
                log.exception("the sweep failed")
                continue
            log.info("sweep: %s", figures)
