"""One bundle's upload: its plan checked against the manifest, then its files one after another
(the manifest last), each with the tus state machine.

:class:`BundleUpload` keeps the journal up to date as it goes (URL and confirmed offset of each
file after every chunk, so a restart resumes from HEAD and re-sends at most the chunk in flight)
and ends with a :class:`BundleOutcome` the scheduler acts on:

- ``uploaded``: every file is at the sink and matched the manifest;
- ``retry_later``: transport errors, 5xx, 423, 429 (after a few in a row), repeated 409s,
  vanished uploads or checksum failures: the bundle goes back to ``sealed`` and waits its
  backoff; ``sink_down`` when the sink refused the connection;
- ``quarantined`` / ``retry_later`` after a permanent error (a 4xx that retrying cannot fix; the
  journal quarantines the bundle after repeated ones), at once when a file is missing on disk
  or no longer matches the manifest (a corrupt file is never sent);
- ``token_refused``: 401/403: nothing more goes until the token changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capsight_edge.bundle.manifest import MANIFEST, Manifest, ManifestError, sha256_file
from capsight_edge.errors import UploadError
from capsight_edge.journal.journal import BundleRow, Journal
from capsight_edge.uploader import wire
from capsight_edge.uploader.progress import (
    BundleProgress,
    RetryLater,
    SinkMisconfigured,
    TokenRefused,
    UploadStats,
)
from capsight_edge.uploader.reader import ChunkReader, LocalFileProblem
from capsight_edge.uploader.shaping import Backoff
from capsight_edge.uploader.sinkside import Interrupted, SinkClient
from capsight_edge.uploader.status import ENDPOINT_KEY, RATE_KEY
from capsight_edge.uploader.tus import (
    COMPLETE,
    MISCONFIGURED,
    PERMANENT,
    PROGRESS,
    REDIRECTED,
    RESEND,
    RESTART,
    RESYNC,
    UNAUTHORIZED,
    Outcome,
    ServerCaps,
    TusRequest,
    TusUpload,
)

log = logging.getLogger("capsight.uploader")
INLINE_RETRIES = 4  # failures in a row on one file before the bundle waits its backoff
SAME_FAILURE_LIMIT = 3  # restarts or checksum re-sends in a row before giving the bundle a rest

Pacer = Callable[[AsyncIterator[bytes], list[int]], AsyncIterator[bytes]]


class ChunkSizer(Protocol):
    """The uploader's next request body with ``left`` bytes of the file to send; ``ahead``:
    the likely size of the request after this one."""

    def __call__(self, left: int, ahead: bool = False) -> int: ...


@dataclass(frozen=True)
class BundleOutcome:
    kind: str  # uploaded | retry_later | quarantined | token_refused | misconfigured
    detail: str = ""
    after_s: float | None = None
    sink_down: bool = False


@dataclass
class UploadContext:
    """What every bundle upload of one uploader shares: the journal, the sink, the counters,
    the pacing of bodies through the shared token bucket and the chunk size it allows."""

    journal: Journal
    data_dir: Path
    sink: SinkClient
    stats: UploadStats
    pace: Pacer
    chunk_size: ChunkSizer
    backoff: Backoff
    caps: ServerCaps | None = None
    progress: dict[str, BundleProgress] = field(default_factory=dict)
    remembered_rate: float = 0.0  # the rate last kept in the journal (RATE_KEY)
    _discovering: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def server_caps(self) -> ServerCaps:
        """What the sink's tus endpoint can do, asked once for every upload of the run (the
        first bundle asks; the others wait for its answer). The endpoint found is kept in the
        journal (:data:`ENDPOINT_KEY`), so a restarted cart asks there first."""
        async with self._discovering:
            if self.caps is None:
                kept = self.journal.kv_get(ENDPOINT_KEY) or ""
                self.caps = await self.sink.discover(kept)
                if kept != self.sink.remembered():
                    self.journal.kv_set(ENDPOINT_KEY, self.sink.remembered())
            return self.caps

    def recall_rate(self) -> None:
        """Start from the rate a previous run kept, if nothing was measured yet."""
        try:
            rate = float(self.journal.kv_get(RATE_KEY) or 0)
        except ValueError:
            rate = 0.0
        if rate > 0 and not self.stats.measured_bytes_per_s:
            self.stats.measured_bytes_per_s = self.remembered_rate = rate

    def remember_rate(self) -> None:
        """Keep the measured rate for the next run, when it moved by more than a tenth (one
        small journal write per bundle at most)."""
        rate = self.stats.measured_bytes_per_s
        if rate > 0 and abs(rate - self.remembered_rate) > 0.1 * self.remembered_rate:
            self.journal.kv_set(RATE_KEY, f"{rate:.0f}")
            self.remembered_rate = rate


class BundleUpload:
    def __init__(self, row: BundleRow, ctx: UploadContext) -> None:
        self.row = row
        self.ctx = ctx

    async def run(self) -> BundleOutcome:
        """Upload the bundle; cancelled (paused, stopping), it stays ``uploading`` with its
        offsets for next time."""
        journal, bundle_id = self.ctx.journal, self.row.id
        try:
            await self._send()
        except asyncio.CancelledError:
            raise
        except LocalFileProblem as exc:
            return self._give_up(f"local files: {exc}", quarantine_after=1)
        except UploadError as exc:
            return self._give_up(str(exc), quarantine_after=3)
        except TokenRefused as exc:
            journal.upload_failed(bundle_id, str(exc), permanent=False)
            return BundleOutcome("token_refused", str(exc))
        except SinkMisconfigured as exc:  # the URL's fault, not the bundle's: it just waits
            journal.upload_failed(bundle_id, str(exc), permanent=False)
            return BundleOutcome("misconfigured", str(exc))
        except RetryLater as exc:
            return self._retry_later(str(exc), exc.after_s, exc.sink_down)
        return BundleOutcome("uploaded")

    def _give_up(self, error: str, *, quarantine_after: int) -> BundleOutcome:
        state = self.ctx.journal.upload_failed(
            self.row.id, error, permanent=True, quarantine_after=quarantine_after
        )
        if state == "quarantined":
            self.ctx.stats.bundles_quarantined += 1
            log.error("bundle %s quarantined: %s", self.row.id, error)
            return BundleOutcome("quarantined", error)
        return BundleOutcome("retry_later", error)

    def _retry_later(self, error: str, after_s: float | None, sink_down: bool) -> BundleOutcome:
        row = self.ctx.journal.get(self.row.id)
        if row is not None and row.state == "uploading":
            self.ctx.journal.upload_failed(self.row.id, error, permanent=False)
        return BundleOutcome("retry_later", error, after_s, sink_down)

    # -- the bundle -----------------------------------------------------------------------------
    async def _send(self) -> None:
        ctx, bundle_id = self.ctx, self.row.id
        ctx.journal.start_upload(bundle_id)
        await ctx.server_caps()
        before = {p.name: p for p in ctx.journal.upload_plan(bundle_id)}
        files = await asyncio.to_thread(self._plan)
        await self._terminate_replaced(before, files)
        plan = {p.name: p for p in ctx.journal.upload_plan(bundle_id)}
        progress = BundleProgress(bundle_id, self.row.priority, sum(f.bytes for f in files))
        ctx.progress[bundle_id] = progress
        progress.update(sum(plan[f.name].offset for f in files))
        for f in files:
            if not plan[f.name].done:
                await self._file(f, plan[f.name].url, progress)
        ctx.journal.mark_uploaded(bundle_id)
        ctx.remember_rate()
        ctx.journal.forget_upload_plan(bundle_id)
        wire.remove(ctx.data_dir, bundle_id)
        ctx.stats.bundles_uploaded += 1
        ctx.stats.wire_saved_bytes += sum(f.raw_bytes - f.bytes for f in files if f.encoding)
        log.info("bundle %s uploaded", bundle_id)

    def _plan(self) -> list[wire.WireFile]:
        """The files to send, checked against the manifest first (runs in a thread)."""
        data_dir, bundle_id = self.ctx.data_dir, self.row.id
        folder = data_dir / "bundles" / bundle_id
        try:
            manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
        except (OSError, ManifestError) as exc:
            raise LocalFileProblem(f"{MANIFEST}: {exc}") from exc
        if manifest.bundle_id != bundle_id:
            raise LocalFileProblem(f"{MANIFEST} names bundle {manifest.bundle_id}")
        files: list[wire.WireFile] = []
        for name in sorted([*manifest.files, MANIFEST], key=lambda n: wire.ORDER.get(n, 5)):
            path = folder / name
            try:
                # Sizes now; contents as they are read for sending (ChunkReader), or here for
                # the small files that are compressed.
                info = manifest.files.get(name)
                if info is not None and path.stat().st_size != info.bytes:
                    raise LocalFileProblem(f"{name} no longer has the size in the manifest")
                f = wire.prepare(data_dir, bundle_id, name, info.sha256 if info else "")
                if f.encoding and info is not None and sha256_file(path).sha256 != info.sha256:
                    raise LocalFileProblem(f"{name} no longer matches its sha256 in the manifest")
                files.append(f)
            except OSError as exc:
                raise LocalFileProblem(f"{name}: {exc.strerror or exc}") from exc
        self.ctx.journal.plan_upload(bundle_id, [(f.name, f.encoding, f.bytes) for f in files])
        return files

    async def _terminate_replaced(self, before: dict[str, Any], files: list[wire.WireFile]) -> None:
        """A file whose bytes on the wire changed since its upload began (its compressed copy
        was made anew) starts a new upload; the old one is terminated, not left to expire."""
        for f in files:
            old = before.get(f.name)
            if old is None or not old.url or old.done:
                continue
            if (old.encoding, old.wire_bytes) == (f.encoding, f.bytes):
                continue
            await self.ctx.sink.terminate(old.url, old.wire_bytes)

    # -- one file -------------------------------------------------------------------------------
    async def _file(self, f: wire.WireFile, url: str, progress: BundleProgress) -> None:
        ctx, bundle_id = self.ctx, self.row.id
        metadata = {"bundle_id": bundle_id, "filename": f.name}
        if f.encoding:
            metadata["encoding"] = f.encoding
        plan = {p.name: p for p in ctx.journal.upload_plan(bundle_id)}
        assert ctx.caps is not None
        try:
            up = TusUpload(
                ctx.sink.endpoint,
                f.bytes,
                metadata,
                token=ctx.sink.token,
                url=url,
                offset=plan[f.name].offset if url else 0,
                caps=ctx.caps,
            )
        except ValueError as exc:  # larger than the sink accepts: retrying cannot help
            raise UploadError(f"{f.name}: {exc}", permanent=True) from exc
        others = sum(p.offset for n, p in plan.items() if n != f.name)
        reader = ChunkReader(
            f.path,
            f.bytes,
            checksum=ctx.caps.sha256,
            known_sha256="" if f.encoding else f.raw_sha256,
        )
        try:
            await self._file_loop(f, up, reader, others, progress)
        finally:
            await reader.close()
        ctx.stats.files_uploaded += 1

    async def _file_loop(
        self,
        f: wire.WireFile,
        up: TusUpload,
        reader: ChunkReader,
        others: int,
        progress: BundleProgress,
    ) -> None:
        ctx, stats = self.ctx, self.ctx.stats
        fails = 0
        while not up.done:
            up.chunk_bytes = ctx.chunk_size(up.length - up.offset)
            up.token = ctx.sink.token
            req = up.next_request()
            assert req is not None
            before_url, before_offset = up.url, up.offset
            sent = [0]  # body bytes of this request that went out
            progress.sending = sent
            began = time.monotonic()
            cut = False
            try:
                outcome = await self._exchange(up, req, reader, sent)
            except Interrupted as exc:
                stats.interruptions += 1
                outcome = up.interrupted(str(exc))
                cut = True
            if up.endpoint != ctx.sink.endpoint:  # the sink moved its endpoint (307/308)
                ctx.sink.endpoint = up.endpoint
            if not outcome.ok:
                stats.lost_bytes += sent[0]
                stats.lost_bytes_max = max(stats.lost_bytes_max, sent[0])
            if cut:  # the network, not the sink's answer: what got out says how fast it is
                stats.measured(sent[0], time.monotonic() - began, failed=True)
            # Every byte is at the sink; it is only "done" if it is what the manifest says.
            if (
                up.done
                and not f.encoding
                and f.raw_sha256
                and await reader.sha256() != f.raw_sha256
            ):
                raise LocalFileProblem(
                    f"{f.name} no longer matches its sha256 in the manifest (changed on disk)"
                )
            base = before_offset if up.url == before_url else 0  # a new upload starts at 0
            if up.url != before_url or up.offset != before_offset or up.done:
                ctx.journal.file_progress(
                    self.row.id, f.name, url=up.url, offset=up.offset, done=up.done
                )
                stats.bytes_confirmed += max(0, up.offset - base)
                progress.update(others + up.offset)
            if outcome.kind in (PROGRESS, COMPLETE):
                whole_chunk = req.body is not None and req.body[1] >= up.chunk_bytes
                stats.measured(up.offset - base, time.monotonic() - began, whole_chunk=whole_chunk)
                if up.done or up.offset > before_offset:
                    fails = 0  # only bytes stored count as getting somewhere
                continue
            fails = await self._after_failure(up, outcome, fails, f.name)

    async def _after_failure(self, up: TusUpload, outcome: Outcome, fails: int, name: str) -> int:
        """Decide what a failed exchange leads to; returns the new count of failures in a row."""
        stats = self.ctx.stats
        detail = f"{name}: {outcome.detail}"
        if outcome.kind == UNAUTHORIZED:
            raise TokenRefused(detail)
        if outcome.kind == MISCONFIGURED:
            raise SinkMisconfigured(detail)
        if outcome.kind == REDIRECTED:
            return fails
        if outcome.kind == PERMANENT:
            raise UploadError(detail, permanent=True)
        if outcome.kind == RESTART:
            stats.restarts += 1
            if up.restarts > SAME_FAILURE_LIMIT:
                raise RetryLater(detail)
            return fails
        if outcome.kind == RESEND:
            stats.checksum_resends += 1
            if up.resends > SAME_FAILURE_LIMIT:
                raise RetryLater(detail)
            return fails
        if outcome.kind == RESYNC:  # HEAD comes next; a server that keeps answering 409 rests
            if fails + 1 > INLINE_RETRIES:
                raise RetryLater(detail)
            return fails + 1
        stats.retries += 1
        fails += 1
        if fails > INLINE_RETRIES:
            raise RetryLater(detail, after_s=outcome.retry_after_s)
        if fails > 1 or outcome.retry_after_s:
            await asyncio.sleep(
                max(outcome.retry_after_s or 0.0, self.ctx.backoff.delay(fails - 2))
            )
        return fails

    async def _exchange(
        self, up: TusUpload, req: TusRequest, reader: ChunkReader, sent: list[int]
    ) -> Outcome:
        headers = dict(req.headers)
        content: AsyncIterator[bytes] | None = None
        if req.body is not None:
            offset, length = req.body
            try:
                st = reader.path.stat()
            except OSError as exc:
                raise LocalFileProblem(f"{reader.path.name}: {exc.strerror or exc}") from exc
            if st.st_size != up.length:
                raise LocalFileProblem(f"{reader.path.name} changed size during its upload")
            headers["Content-Length"] = str(length)
            if req.checksum:
                left = reader.length - offset - length
                ahead = self.ctx.chunk_size(left, ahead=True) if left > 0 else 0
                digest = await reader.checksum_of(offset, length, ahead)
                headers["Upload-Checksum"] = f"sha256 {digest}"
            content = self.ctx.pace(reader.blocks(offset, length), sent)
        elif req.method in ("POST", "PATCH"):
            headers["Content-Length"] = "0"
        resp = await self.ctx.sink.send(req.method, req.url, headers, content)
        outcome = up.receive(req.method, resp.status_code, resp.headers)
        if req.body is not None and req.checksum and reader.whole_file(*req.body):
            if outcome.kind == COMPLETE:
                reader.sink_verified()
            elif outcome.kind == RESEND and await reader.sha256_from_disk() != reader.known_sha256:
                raise LocalFileProblem(
                    f"{reader.path.name} no longer matches its sha256 in the manifest"
                )
        return outcome
