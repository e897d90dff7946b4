"""The upload driver: the journal's queue, sent with the tus state machine over one httpx client.

Order: higher priority first, oldest first within a priority (the journal's queue order), at most
``concurrency`` bundles at once, every byte through one shared :class:`TokenBucket`. A bundle's
files go one after another, the manifest last. Everything the sink confirms is committed to the
journal (URL and offset per file) before the next chunk is read, so a restart resumes from HEAD on
the stored URL and re-sends at most the chunk that was in flight.

Failures, and what they do to the bundle:
- transport errors, timeouts, 5xx, 423, 429: retried in place (the first at once, then backoff
  with jitter); after a few in a row the bundle goes back to ``sealed`` and waits its backoff. A
  sink that refuses connections holds every upload back (one shared backoff, up to 2 minutes);
- 409: re-sync from HEAD; 404/410: the upload is gone, start that file over; 460: send the chunk
  again (the sink did not apply it);
- 401/403: nothing more is sent until the token file changes; ``status()`` says so;
- other 4xx: permanent; the journal quarantines the bundle after repeated permanent errors;
- a file missing on disk or no longer matching the manifest: quarantined at once (a corrupt file
  is never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from capsight_edge.bundle.manifest import MANIFEST, Manifest, ManifestError, sha256_file
from capsight_edge.errors import UploadError
from capsight_edge.journal.journal import BundleRow, Journal, utc_now
from capsight_edge.uploader import sinkside, wire
from capsight_edge.uploader.progress import BundleProgress, RetryLater, TokenRefused, UploadStats
from capsight_edge.uploader.reader import ChunkReader, LocalFileProblem
from capsight_edge.uploader.shaping import Backoff, TokenBucket, UploadSchedule
from capsight_edge.uploader.tus import (
    COMPLETE,
    PERMANENT,
    PROGRESS,
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
STATUS_KEY = "uploader"
PUBLISH_IDLE_S = 30.0
PAUSE_KEY = "upload_paused"  # set by `capsight upload pause` (or any process) to hold uploads
MIN_CHUNK, MAX_CHUNK = 256 << 10, 8 << 20
UNCAPPED_CHUNK = 64 << 20  # fewer round trips and fsyncs when nothing paces us; streamed
INLINE_RETRIES = 4  # failures in a row on one file before the bundle waits its backoff
SAME_FAILURE_LIMIT = 3  # restarts or checksum re-sends in a row before giving the bundle a rest


class Uploader:
    """Uploads a journal's sealed bundles to a tus endpoint.

    ``max_upload_bps=None`` in the schedule's place means uncapped. ``flush=True`` (``capsight
    upload now``) ignores the windows and uses ``schedule.default_bps`` (or uncapped when 0).
    ``client`` may be any ``httpx.AsyncClient`` (an ``ASGITransport`` one in tests); by default one
    is built with ``timeout_s`` on connect, every read and every write.
    """

    def __init__(
        self,
        journal: Journal,
        data_dir: str | os.PathLike[str],
        *,
        sink_url: str,
        token: str = "",
        token_file: str = "",
        schedule: UploadSchedule | None = None,
        uncapped: bool = False,
        concurrency: int = 2,
        chunk_bytes: int = 0,
        timeout_s: float = 30.0,
        heartbeat_s: float = 30.0,
        tus_path: str = "/files/",
        backoff: Backoff | None = None,
        client: httpx.AsyncClient | None = None,
        model_version: Callable[[], str] | None = None,
        now: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.journal = journal
        self.data_dir = Path(os.path.expanduser(data_dir))
        self.base = sink_url.rstrip("/")
        self.endpoint = self.base + tus_path
        self.token_file = token_file
        self.token = token or self._read_token()
        self.schedule = schedule or UploadSchedule(0)
        self.uncapped = uncapped
        self.concurrency = max(1, concurrency)
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self._client = client
        self.model_version = model_version or (lambda: journal.kv_get("model_version") or "")
        self.now = now
        self.caps: ServerCaps | None = None
        self.stats = UploadStats()
        self.progress: dict[str, BundleProgress] = {}
        self.state = "starting"
        self.last_error = ""
        self.last_upload_utc = ""
        self._paused: str | None = None
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._sink_down_until = 0.0
        self._sink_failures = 0
        self._token_refused_at = 0.0
        self._bucket: TokenBucket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tidy_due = False
        self._stop_requested = False
        self._paused_by_key = False
        self._in_flight = 0
        self._published: dict[str, Any] = {}
        self._published_at = 0.0
        self._busy_since = 0.0
        self.ticks = 0  # turns of the run loop, for tests that wait on it

    # -- control from any thread ------------------------------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def pause(self, reason: str = "paused by the integrator") -> None:
        """Stop sending at once (requests in flight are cancelled; what the sink confirmed is
        kept) until :meth:`resume`. Safe to call from any thread."""

        self._call(lambda: self._apply_pause(reason))

    def _apply_pause(self, reason: str | None) -> None:
        self._paused = reason
        if reason is not None:
            for task in self._tasks.values():
                task.cancel()
        if self._wake:
            self._wake.set()

    def resume(self) -> None:
        self._call(lambda: self._apply_pause(None))

    def stop(self) -> None:
        """Finish: requests in flight are cancelled (their bundles resume next time)."""
        self._stop_requested = True

        def do() -> None:
            if self._stop:
                self._stop.set()
            if self._wake:
                self._wake.set()

        self._call(do)

    def _follow_pause_key(self) -> None:
        """Another process (the CLI, an integrator's daemon) pauses through the journal."""
        held = self.journal.kv_get(PAUSE_KEY)
        if held and self._paused != held:
            self._apply_pause(held)
        elif not held and self._paused is not None and self._paused_by_key:
            self._apply_pause(None)
        self._paused_by_key = bool(held)

    def _read_token(self) -> str:
        if not self.token_file:
            return ""
        try:
            return Path(os.path.expanduser(self.token_file)).read_text().strip()
        except OSError as exc:
            raise UploadError(f"{self.token_file}: cannot read the token: {exc}") from exc

    # -- rate --------------------------------------------------------------------------------
    def current_rate_bps(self) -> int | None:
        """None: uncapped; 0: no uploads now."""
        if self.uncapped:
            return None
        return self.schedule.rate_at(self.now())

    def _chunk_size(self) -> int:
        if self.chunk_bytes:
            return self.chunk_bytes
        rate = self._bucket.bytes_per_s if self._bucket else None
        if not rate:
            return UNCAPPED_CHUNK
        return int(min(MAX_CHUNK, max(MIN_CHUNK, rate * 4)))  # about 4 s of the rate

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        rate = self._bucket.rate_bps if self._bucket else self.current_rate_bps()
        return {
            "utc": utc_now(),
            "state": self.state,
            "sink": self.base,
            "rate_cap_bps": rate,
            "last_error": self.last_error,
            "last_upload_utc": self.last_upload_utc,
            "in_flight": [p.as_dict() for p in self.progress.values()],
            "stats": self.stats.as_dict(),
        }

    def _publish(self, force: bool = False) -> None:
        """Write the status to the journal: every second while something changes, every
        ``PUBLISH_IDLE_S`` otherwise (each write is an fsync; flash storage wears)."""
        status = self.status()
        same = {k: v for k, v in status.items() if k != "utc"} == self._published
        now = time.monotonic()
        if force or not same or now - self._published_at >= PUBLISH_IDLE_S:
            self.journal.kv_set(STATUS_KEY, json.dumps(status))
            self._published = {k: v for k, v in status.items() if k != "utc"}
            self._published_at = now

    def _set_state(self) -> None:
        now = time.monotonic()
        rate = self.current_rate_bps()
        if self._token_refused_at:
            self.state = "stopped: the sink refuses this device's token (check --token-file)"
        elif self._paused:
            self.state = f"paused: {self._paused}"
        elif rate == 0:
            self.state = "off: the upload schedule allows nothing now"
        elif self._sink_down_until > now:
            self.state = (
                f"waiting: sink unreachable, next try in {self._sink_down_until - now:.0f} s"
            )
        else:
            self.state = "uploading" if self._tasks else "idle"

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, *, until_idle: bool = False, max_attempts: int = 4) -> UploadStats:
        """Upload until :meth:`stop`; with ``until_idle``, return once the queue is empty or
        nothing more can go (every bundle left failed ``max_attempts`` times in this run, or the
        token is refused)."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self._bucket = TokenBucket(self.current_rate_bps())
        owned = self._client is None
        client = self._client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency + 2),
        )
        attempts: dict[str, int] = {}
        heartbeat: asyncio.Task[None] | None = None
        next_tidy = next_publish = next_heartbeat = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                rate = self.current_rate_bps()
                self._bucket.set_rate(rate)
                self._follow_pause_key()
                if (self._paused or rate == 0) and self._tasks:
                    for task in self._tasks.values():
                        task.cancel()
                if now >= next_tidy or self._tidy_due:
                    next_tidy, self._tidy_due = now + 60, False
                    await self._tidy(client)
                if self.heartbeat_s and now >= next_heartbeat and not heartbeat:
                    next_heartbeat = now + self.heartbeat_s
                    heartbeat = asyncio.create_task(self._heartbeat(client))
                if heartbeat is not None and heartbeat.done():
                    heartbeat = None
                self._maybe_retry_token()
                self._set_state()
                waiting = self._start_uploads(client, attempts, max_attempts if until_idle else 0)
                if now >= next_publish:
                    next_publish = now + 1.0
                    self._publish()
                if (
                    until_idle
                    and not self._tasks
                    and (not waiting or self._token_refused_at or rate == 0)
                ):
                    break
                self.ticks += 1
                self._wake.clear()
                waits: list[Any] = [*self._tasks.values(), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waits, timeout=1.0, return_when="FIRST_COMPLETED")
                waits[-1].cancel()
                for bundle_id, task in list(self._tasks.items()):
                    if task.done():
                        del self._tasks[bundle_id]
                        self.progress.pop(bundle_id, None)
                        if not task.cancelled() and task.exception() is not None:
                            self._unexpected(bundle_id, task.exception())
        finally:
            for task in self._tasks.values():
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            self.progress.clear()
            if heartbeat is not None:
                heartbeat.cancel()
            if self.heartbeat_s and not self._token_refused_at:
                with contextlib.suppress(Exception):  # the last word to the fleet view
                    await asyncio.wait_for(self._heartbeat(client), 5.0)
            self._set_state()
            if self.state in ("idle", "uploading"):  # otherwise the reason it stopped stays
                self.state = "stopped"
            self._publish(force=True)
            if owned:
                await client.aclose()
            self._loop = None
            self._stop_requested = False
        return self.stats

    def _start_uploads(
        self, client: httpx.AsyncClient, attempts: dict[str, int], max_attempts: int
    ) -> int:
        """Start what may go now; returns how many bundles still wait (in flight excluded).
        ``max_attempts`` is 0 outside ``until_idle``, where nobody needs that count: then the
        queue is not even read while nothing could start (the loop turns every second)."""
        now = time.monotonic()
        blocked = (
            self._paused
            or self._token_refused_at
            or self.current_rate_bps() == 0
            or self._sink_down_until > now
        )
        if not max_attempts and (blocked or len(self._tasks) >= self.concurrency):
            return 0
        queue = [
            r
            for r in self.journal.upload_queue()
            if r.id not in self._tasks
            and (not max_attempts or attempts.get(r.id, 0) < max_attempts)
        ]
        for row in queue:
            if blocked or len(self._tasks) >= self.concurrency:
                break
            if self._not_before.get(row.id, 0.0) > now:
                continue
            attempts[row.id] = attempts.get(row.id, 0) + 1
            self._tasks[row.id] = asyncio.create_task(self._bundle(client, row))
        return len(queue) - sum(1 for r in queue if r.id in self._tasks)

    def _maybe_retry_token(self) -> None:
        if not self._token_refused_at:
            return
        waited = time.monotonic() - self._token_refused_at
        try:
            fresh = self._read_token()
        except UploadError:
            fresh = self.token
        if fresh != self.token or waited > 300:
            self.token = fresh
            self._token_refused_at = 0.0

    # -- one bundle --------------------------------------------------------------------------
    async def _bundle(self, client: httpx.AsyncClient, row: BundleRow) -> None:
        if self._in_flight == 0:
            self._busy_since = time.monotonic()
        self._in_flight += 1
        try:
            await self._bundle_inner(client, row)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.stats.busy_s += time.monotonic() - self._busy_since

    async def _bundle_inner(self, client: httpx.AsyncClient, row: BundleRow) -> None:
        bundle_id = row.id
        try:
            self.journal.start_upload(bundle_id)
            if self.caps is None:
                self.caps = await self._discover(client)
            before = {p.name: p for p in self.journal.upload_plan(bundle_id)}
            files = await asyncio.to_thread(self._plan, row)
            await self._terminate_replaced(client, before, files)
            plan = {p.name: p for p in self.journal.upload_plan(bundle_id)}
            progress = BundleProgress(bundle_id, row.priority, sum(f.bytes for f in files))
            self.progress[bundle_id] = progress
            done_before = sum(plan[f.name].offset for f in files)
            progress.update(done_before)
            for f in files:
                if plan[f.name].done:
                    continue
                await self._file(client, bundle_id, f, plan[f.name].url, progress)
            self.journal.mark_uploaded(bundle_id)
            self.journal.forget_upload_plan(bundle_id)
            wire.remove(self.data_dir, bundle_id)
            self.stats.bundles_uploaded += 1
            self.stats.wire_saved_bytes += sum(f.raw_bytes - f.bytes for f in files if f.encoding)
            self.last_upload_utc = utc_now()
            self._failures.pop(bundle_id, None)
            self._not_before.pop(bundle_id, None)
            self._sink_failures = 0
            log.info("bundle %s uploaded", bundle_id)
        except asyncio.CancelledError:
            raise  # paused or stopping: the bundle stays "uploading" with its offsets
        except LocalFileProblem as exc:
            self._give_up(bundle_id, f"local files: {exc}", quarantine_after=1)
        except UploadError as exc:
            self._give_up(bundle_id, str(exc), quarantine_after=3)
        except TokenRefused as exc:
            self.last_error = str(exc)
            self._token_refused_at = time.monotonic()
            self.journal.upload_failed(bundle_id, str(exc), permanent=False)
            log.error("%s", exc)
        except RetryLater as exc:
            self._retry_later(bundle_id, exc)

    async def _terminate_replaced(
        self, client: httpx.AsyncClient, before: dict[str, Any], files: list[wire.WireFile]
    ) -> None:
        """A file whose bytes on the wire changed since its upload began (its compressed copy
        was made anew) starts a new upload; the old one is terminated, not left to expire."""
        for f in files:
            old = before.get(f.name)
            if old is None or not old.url or old.done:
                continue
            if (old.encoding, old.wire_bytes) == (f.encoding, f.bytes):
                continue
            await sinkside.terminate(client, self.endpoint, self.token, old.url, old.wire_bytes)

    def _unexpected(self, bundle_id: str, exc: BaseException | None) -> None:
        """A failure nobody planned for (a journal error, a bug): logged with its traceback,
        and the bundle waits its backoff instead of being retried in a tight loop."""
        log.error("bundle %s: unexpected failure", bundle_id, exc_info=exc)
        self.last_error = f"{bundle_id}: {exc!r}"
        n = self._failures.get(bundle_id, 0) + 1
        self._failures[bundle_id] = n
        self._not_before[bundle_id] = time.monotonic() + self.backoff.delay(n - 1)

    def _give_up(self, bundle_id: str, error: str, *, quarantine_after: int) -> None:
        self.last_error = f"{bundle_id}: {error}"
        state = self.journal.upload_failed(
            bundle_id, error, permanent=True, quarantine_after=quarantine_after
        )
        if state == "quarantined":
            self.stats.bundles_quarantined += 1
            self._tidy_due = True
            log.error("bundle %s quarantined: %s", bundle_id, error)
            if self._wake:
                self._wake.set()
        else:
            self._retry_later(bundle_id, RetryLater(error))

    def _retry_later(self, bundle_id: str, exc: RetryLater) -> None:
        self.last_error = f"{bundle_id}: {exc}"
        row = self.journal.get(bundle_id)
        if row is not None and row.state == "uploading":
            self.journal.upload_failed(bundle_id, str(exc), permanent=False)
        n = self._failures.get(bundle_id, 0) + 1
        self._failures[bundle_id] = n
        now = time.monotonic()
        self._not_before[bundle_id] = now + max(exc.after_s or 0.0, self.backoff.delay(n - 1))
        if exc.sink_down:
            self._sink_failures += 1
            self._sink_down_until = max(
                self._sink_down_until, now + self.backoff.delay(self._sink_failures - 1)
            )
        log.warning("bundle %s: %s (attempt %d; retrying later)", bundle_id, exc, n)

    def _plan(self, row: BundleRow) -> list[wire.WireFile]:
        """The files to send, checked against the manifest first (runs in a thread)."""
        folder = self.data_dir / "bundles" / row.id
        try:
            manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
        except (OSError, ManifestError) as exc:
            raise LocalFileProblem(f"{MANIFEST}: {exc}") from exc
        if manifest.bundle_id != row.id:
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
                f = wire.prepare(self.data_dir, row.id, name, info.sha256 if info else "")
                if f.encoding and info is not None and sha256_file(path).sha256 != info.sha256:
                    raise LocalFileProblem(f"{name} no longer matches its sha256 in the manifest")
                files.append(f)
            except OSError as exc:
                raise LocalFileProblem(f"{name}: {exc.strerror or exc}") from exc
        self.journal.plan_upload(row.id, [(f.name, f.encoding, f.bytes) for f in files])
        return files

    # -- one file ----------------------------------------------------------------------------
    async def _file(
        self,
        client: httpx.AsyncClient,
        bundle_id: str,
        f: wire.WireFile,
        url: str,
        progress: BundleProgress,
    ) -> None:
        metadata = {"bundle_id": bundle_id, "filename": f.name}
        if f.encoding:
            metadata["encoding"] = f.encoding
        plan = {p.name: p for p in self.journal.upload_plan(bundle_id)}
        assert self.caps is not None
        try:
            up = TusUpload(
                self.endpoint,
                f.bytes,
                metadata,
                token=self.token,
                url=url,
                offset=plan[f.name].offset if url else 0,
                caps=self.caps,
            )
        except ValueError as exc:  # larger than the sink accepts: retrying cannot help
            raise UploadError(f"{f.name}: {exc}", permanent=True) from exc
        others = sum(p.offset for n, p in plan.items() if n != f.name)
        reader = ChunkReader(
            f.path,
            f.bytes,
            checksum=self.caps.sha256,
            known_sha256="" if f.encoding else f.raw_sha256,
        )
        try:
            await self._file_loop(client, bundle_id, f, up, reader, others, progress)
        finally:
            await reader.close()
        self.stats.files_uploaded += 1

    async def _file_loop(
        self,
        client: httpx.AsyncClient,
        bundle_id: str,
        f: wire.WireFile,
        up: TusUpload,
        reader: ChunkReader,
        others: int,
        progress: BundleProgress,
    ) -> None:
        fails = 0
        while not up.done:
            up.chunk_bytes = self._chunk_size()
            up.token = self.token
            req = up.next_request()
            assert req is not None
            before_url, before_offset = up.url, up.offset
            sent = [0]  # body bytes of this request that went out
            try:
                outcome = await self._exchange(client, up, req, reader, sent)
            except httpx.ConnectError as exc:
                raise RetryLater(f"sink unreachable: {exc}", sink_down=True) from exc
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self.stats.interruptions += 1
                outcome = up.interrupted(f"{req.method} interrupted: {exc!r}")
            if not outcome.ok:
                self.stats.lost_bytes += sent[0]
                self.stats.lost_bytes_max = max(self.stats.lost_bytes_max, sent[0])
            # Every byte is at the sink; it is only "done" if it is what the manifest says.
            if (
                up.done
                and not f.encoding
                and f.raw_sha256
                and (await reader.sha256() != f.raw_sha256)
            ):
                raise LocalFileProblem(
                    f"{f.name} no longer matches its sha256 in the manifest (changed on disk)"
                )
            if up.url != before_url or up.offset != before_offset or up.done:
                self.journal.file_progress(
                    bundle_id, f.name, url=up.url, offset=up.offset, done=up.done
                )
                base = before_offset if up.url == before_url else 0
                self.stats.bytes_confirmed += max(0, up.offset - base)
                progress.update(others + up.offset)
            if outcome.kind in (PROGRESS, COMPLETE):
                if up.done or up.offset > before_offset:
                    fails = 0  # only bytes stored count as getting somewhere
                continue
            fails = await self._after_failure(up, outcome, fails, f.name)

    async def _after_failure(self, up: TusUpload, outcome: Outcome, fails: int, name: str) -> int:
        """Decide what a failed exchange leads to; returns the new count of failures in a row."""
        detail = f"{name}: {outcome.detail}"
        if outcome.kind == UNAUTHORIZED:
            raise TokenRefused(detail)
        if outcome.kind == PERMANENT:
            raise UploadError(detail, permanent=True)
        if outcome.kind == RESTART:
            self.stats.restarts += 1
            if up.restarts > SAME_FAILURE_LIMIT:
                raise RetryLater(detail)
            return fails
        if outcome.kind == RESEND:
            self.stats.checksum_resends += 1
            if up.resends > SAME_FAILURE_LIMIT:
                raise RetryLater(detail)
            return fails
        if outcome.kind == RESYNC:  # HEAD comes next; a server that keeps answering 409 rests
            if fails + 1 > INLINE_RETRIES:
                raise RetryLater(detail)
            return fails + 1
        self.stats.retries += 1
        fails += 1
        if fails > INLINE_RETRIES:
            raise RetryLater(detail, after_s=outcome.retry_after_s)
        if fails > 1 or outcome.retry_after_s:
            await asyncio.sleep(max(outcome.retry_after_s or 0.0, self.backoff.delay(fails - 2)))
        return fails

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        up: TusUpload,
        req: TusRequest,
        reader: ChunkReader,
        sent: list[int],
    ) -> Outcome:
        headers = dict(req.headers)
        content: AsyncIterator[bytes] | None = None
        if req.body is not None:
            offset, length = req.body
            path = reader.path
            try:
                st = path.stat()
            except OSError as exc:
                raise LocalFileProblem(f"{path.name}: {exc.strerror or exc}") from exc
            if st.st_size != up.length:
                raise LocalFileProblem(f"{path.name} changed size during its upload")
            headers["Content-Length"] = str(length)
            if req.checksum:
                digest = await reader.checksum_of(offset, length, self._chunk_size())
                headers["Upload-Checksum"] = f"sha256 {digest}"
            content = self._paced(reader.blocks(offset, length), sent)
        elif req.method in ("POST", "PATCH"):
            headers["Content-Length"] = "0"
        resp = await client.request(req.method, req.url, headers=headers, content=content)
        outcome = up.receive(req.method, resp.status_code, resp.headers)
        if req.body is not None and req.checksum and reader.whole_file(*req.body):
            if outcome.kind == COMPLETE:
                reader.sink_verified()
            elif outcome.kind == RESEND and await reader.sha256_from_disk() != reader.known_sha256:
                raise LocalFileProblem(
                    f"{reader.path.name} no longer matches its sha256 in the manifest"
                )
        return outcome

    async def _paced(self, blocks: AsyncIterator[bytes], sent: list[int]) -> AsyncIterator[bytes]:
        """The body, through the shared bucket, in pieces of about 50 ms of the rate."""
        bucket = self._bucket
        assert bucket is not None
        async for data in blocks:
            if bucket.rate_bps is None:
                await bucket.take(len(data))
                self.stats.bytes_sent += len(data)
                sent[0] += len(data)
                yield data
                continue
            view = memoryview(data)
            while view:
                piece = view[: bucket.piece_bytes()]
                await bucket.take(len(piece))
                self.stats.bytes_sent += len(piece)
                sent[0] += len(piece)
                yield bytes(piece)
                view = view[len(piece) :]

    # -- around the uploads --------------------------------------------------------------------
    async def _discover(self, client: httpx.AsyncClient) -> ServerCaps:
        return await sinkside.discover(client, self.endpoint, self.token)

    async def _tidy(self, client: httpx.AsyncClient) -> None:
        await sinkside.terminate_abandoned(client, self.journal, self.endpoint, self.token)
        sinkside.drop_stale_wire(self.journal, self.data_dir)

    async def _heartbeat(self, client: httpx.AsyncClient) -> None:
        body = sinkside.heartbeat_body(
            self.journal, self.data_dir, self.last_upload_utc, self.model_version()
        )
        if await sinkside.heartbeat(client, self.base, self.token, body):
            self.stats.heartbeats += 1
        else:
            self.stats.heartbeat_failures += 1
