"""The upload driver: the journal's queue, sent to a tus endpoint over one httpx client.

The uploader is three things around one loop:

- :class:`~.scheduler.UploadScheduler` decides (queue order, concurrency, backoff, a sink that
  is down, a refused token, pauses, the schedule's rate windows) with no I/O;
- :class:`~.bundle.BundleUpload` sends one bundle (plan, verify, its files with the tus state
  machine), keeping the journal up to date after every chunk;
- this driver runs them: it owns the httpx client (through :class:`~.sinkside.SinkClient`,
  where every transport error is mapped), paces every body through one shared
  :class:`~.shaping.TokenBucket`, sends heartbeats, terminates abandoned uploads, and publishes
  one :class:`~.status.UploaderStatus` in the journal for ``run``, ``queue``, ``status`` and
  the demo.

Everything the sink confirms is committed to the journal (URL and offset per file) before the
next chunk is read, so a restart resumes from HEAD on the stored URL and re-sends at most the
chunk that was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from capsight_edge.errors import UploadError
from capsight_edge.journal.journal import BundleRow, Journal, utc_now
from capsight_edge.uploader import sinkside
from capsight_edge.uploader.bundle import BundleOutcome, BundleUpload, UploadContext
from capsight_edge.uploader.progress import BundleProgress, UploadStats
from capsight_edge.uploader.scheduler import UploadScheduler
from capsight_edge.uploader.shaping import Backoff, TokenBucket, UploadSchedule
from capsight_edge.uploader.sinkside import SinkClient
from capsight_edge.uploader.status import (
    PAUSE_KEY,
    PUBLISH_IDLE_S,
    STATUS_KEY,
    StatusPublisher,
    UploaderStatus,
)
from capsight_edge.uploader.tus import ServerCaps

log = logging.getLogger("capsight.uploader")
MIN_CHUNK, MAX_CHUNK = 256 << 10, 8 << 20
CHUNK_SECONDS = 4.0  # a chunk is about this long on the wire
UNCAPPED_CHUNK = 64 << 20  # fewer round trips and fsyncs when nothing paces us; streamed
TAIL_SHARE = 0.25  # a file's last bytes under this share of a chunk go with the chunk before


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once per process (loading it takes tens of ms: paid by
    every run of the uploader, even against an http:// sink, before this was shared)."""
    return ssl.create_default_context()


#: The longest TCP waits between retransmissions on the uploader's connections. A store's
#: access point that drops out for a few seconds otherwise costs seconds more once it is back:
#: TCP doubles its wait after every lost retransmission (0.2, 0.4, ... 3.2 s), so the first
#: one after the outage may come several seconds late. Capped, the upload goes on within a
#: second of the link's return. Linux 6.15 and newer (``TCP_RTO_MAX_MS``, 44); elsewhere the
#: kernel's own backoff applies.
RTO_MAX_MS = 1000
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)


@functools.cache
def socket_options() -> tuple[tuple[int, int, int], ...]:
    """The uploader's socket options: the retransmission cap where the kernel has it."""
    if not sys.platform.startswith("linux"):
        return ()
    option = (socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)
    try:
        with socket.socket() as probe:
            probe.setsockopt(*option)
    except OSError:
        return ()
    return (option,)


TIDY_EVERY_S = 60.0

__all__ = ["PAUSE_KEY", "PUBLISH_IDLE_S", "STATUS_KEY", "Uploader"]


class Uploader:
    """Uploads a journal's sealed bundles to a tus endpoint.

    ``uncapped=True``: no rate cap. ``schedule``: the default rate and the windows (a flush,
    ``capsight upload now``, passes one without windows). ``client`` may be any
    ``httpx.AsyncClient`` (an ``ASGITransport`` one in tests); by default one is built with
    ``timeout_s`` on connect, every read and every write. ``now``: the local wall clock the
    schedule's windows are read against.
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
        self.base = sink_url.rstrip("/")  # what the profile says: a base URL or the endpoint
        self.tus_path = tus_path
        self.token_file = token_file
        self.token = token or self._read_token()
        self.backoff = backoff or Backoff()
        self.scheduler = UploadScheduler(
            concurrency=concurrency, schedule=schedule, uncapped=uncapped, backoff=self.backoff
        )
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self._client = client
        self.model_version = model_version or (lambda: journal.kv_get("model_version") or "")
        self.now = now
        self.stats = UploadStats()
        self.progress: dict[str, BundleProgress] = {}
        self.caps: ServerCaps | None = None
        self.state = "starting"
        self.last_error = ""
        self.last_upload_utc = ""
        self._publisher = StatusPublisher(journal)
        self._bucket: TokenBucket | None = None
        self._sink: SinkClient | None = None
        self._ctx: UploadContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[BundleOutcome]] = {}
        self._tidy_due = False
        self._stop_requested = False
        self._busy_since = 0.0
        self.ticks = 0  # turns of the run loop, for tests that wait on it

    # -- settings that live in the scheduler ----------------------------------------------------
    @property
    def schedule(self) -> UploadSchedule:
        return self.scheduler.schedule

    @schedule.setter
    def schedule(self, value: UploadSchedule) -> None:
        self.scheduler.schedule = value

    @property
    def uncapped(self) -> bool:
        return self.scheduler.uncapped

    @property
    def concurrency(self) -> int:
        return self.scheduler.concurrency

    # -- control from any thread ----------------------------------------------------------------
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

    def resume(self) -> None:
        self._call(lambda: self._apply_pause(None))

    def _apply_pause(self, reason: str | None) -> None:
        self.scheduler.pause(reason)
        if reason is not None:
            self._cancel_all()
        if self._wake:
            self._wake.set()

    def stop(self) -> None:
        """Finish: requests in flight are cancelled (their bundles resume next time)."""
        self._stop_requested = True

        def do() -> None:
            if self._stop:
                self._stop.set()
            if self._wake:
                self._wake.set()

        self._call(do)

    def _cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    def _read_token(self) -> str:
        if not self.token_file:
            return ""
        try:
            return Path(os.path.expanduser(self.token_file)).read_text().strip()
        except OSError as exc:
            raise UploadError(f"{self.token_file}: cannot read the token: {exc}") from exc

    # -- rate and status ---------------------------------------------------------------------------
    def current_rate_bps(self) -> int | None:
        """None: uncapped; 0: no uploads now."""
        return self.scheduler.rate_bps(self.now())

    def _chunk_size(self, left: int, ahead: bool = False) -> int:
        """The next request's body when ``left`` bytes of the file remain to send.

        About 4 s of the rate: the cap's, or uncapped the rate the sink confirmed lately
        (a checksummed request cut by the network is applied whole or not at all, so a chunk
        is what one interruption can cost). Uncapped, before anything was measured:
        ``MAX_CHUNK``; at most ``UNCAPPED_CHUNK``. A tail shorter than a quarter of that goes
        with the chunk before it (:data:`TAIL_SHARE`): on a store's Wi-Fi a request costs a
        round trip and the sink's fsyncs whatever its size, and a last chunk of a few dozen
        packets ran at a seventh of the link's rate. A size the integrator fixed
        (``chunk_bytes``) is kept to the byte: it may be a proxy's limit.

        ``ahead``: the size to hash the next chunk ahead with while this one is sent. Before
        anything was measured, the first answer decides it: guessed at ``UNCAPPED_CHUNK`` (on
        a fast link the rest of the file goes in one request, and it was hashed while the
        first chunk was on the wire; a wrong guess costs one hash, not a byte)."""
        if self.chunk_bytes:
            return self.chunk_bytes
        rate = self._bucket.bytes_per_s if self._bucket else None
        if not rate:
            measured = self.stats.measured_bytes_per_s
            if not measured:
                size = UNCAPPED_CHUNK if ahead else MAX_CHUNK
            else:
                size = int(min(UNCAPPED_CHUNK, max(MIN_CHUNK, measured * CHUNK_SECONDS)))
        else:
            size = int(min(MAX_CHUNK, max(MIN_CHUNK, rate * CHUNK_SECONDS)))
        return left if size < left < size * (1 + TAIL_SHARE) else size

    def status(self) -> dict[str, Any]:
        return self._status().as_dict()

    def _status(self) -> UploaderStatus:
        rate = self._bucket.rate_bps if self._bucket else self.current_rate_bps()
        return UploaderStatus(
            utc=utc_now(),
            state=self.state,
            sink=self.base,
            rate_cap_bps=rate,
            last_error=self.last_error,
            last_upload_utc=self.last_upload_utc,
            in_flight=[p.as_dict() for p in self.progress.values()],
            stats=self.stats.as_dict(),
        )

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, *, until_idle: bool = False, max_attempts: int = 4) -> UploadStats:
        """Upload until :meth:`stop`; with ``until_idle``, return once the queue is empty or
        nothing more can go (every bundle left failed ``max_attempts`` times in this run, or the
        token is refused, or the schedule allows nothing)."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        sched = self.scheduler
        sched.attempts.clear()
        self._bucket = TokenBucket(self.current_rate_bps())
        owned = self._client is None
        client = self._client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            transport=httpx.AsyncHTTPTransport(
                verify=tls_context(),
                limits=httpx.Limits(max_connections=sched.concurrency + 2),
                socket_options=socket_options(),
            ),
        )
        self._sink = SinkClient(client, self.base, self.token, self.tus_path)
        self._ctx = UploadContext(
            self.journal,
            self.data_dir,
            self._sink,
            self.stats,
            self._paced,
            self._chunk_size,
            self.backoff,
            caps=self.caps,
            progress=self.progress,
        )
        self._ctx.recall_rate()
        heartbeat: asyncio.Task[None] | None = None
        next_tidy = next_publish = next_heartbeat = 0.0
        try:
            while not self._stop.is_set():
                now, wall = time.monotonic(), self.now()
                self._bucket.set_rate(sched.rate_bps(wall))
                sched.follow_pause_key(self.journal.kv_get(PAUSE_KEY))
                if now >= next_tidy or self._tidy_due:
                    next_tidy, self._tidy_due = now + TIDY_EVERY_S, False
                    await self._tidy()
                if self.heartbeat_s and now >= next_heartbeat and not heartbeat:
                    next_heartbeat = now + self.heartbeat_s
                    heartbeat = asyncio.create_task(self._heartbeat())
                if heartbeat is not None and heartbeat.done():
                    heartbeat = None
                self._maybe_retry_token(now)
                queue = (
                    self.journal.upload_queue()
                    if sched.wants_queue(now, wall, counting=until_idle)
                    else []
                )
                plan = sched.plan(queue, now, wall, max_attempts=max_attempts if until_idle else 0)
                if plan.cancel:
                    self._cancel_all()
                for row in plan.start:
                    self._start(row)
                self.state = sched.state(now, wall)
                if now >= next_publish:
                    next_publish = now + 1.0
                    self._publisher.publish(self._status())
                if (
                    until_idle
                    and not self._tasks
                    and (
                        not plan.waiting
                        or sched.token_refused_at is not None
                        or bool(sched.misconfigured_reason)
                        or plan.rate_bps == 0
                    )
                ):
                    break
                self.ticks += 1
                self._wake.clear()
                waits: list[Any] = [*self._tasks.values(), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waits, timeout=1.0, return_when="FIRST_COMPLETED")
                waits[-1].cancel()
                self._reap()
        finally:
            self._cancel_all()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                self._reap()
            if heartbeat is not None:
                heartbeat.cancel()
            if self.heartbeat_s and sched.token_refused_at is None:
                with contextlib.suppress(Exception):  # the last word to the fleet view
                    await asyncio.wait_for(self._heartbeat(), 5.0)
            self.state = sched.state(time.monotonic(), self.now())
            if self.state in ("idle", "uploading"):  # otherwise the reason it stopped stays
                self.state = "stopped"
            self._publisher.publish(self._status(), force=True)
            self.caps = self._ctx.caps
            if owned:
                await client.aclose()
            self._loop = None
            self._stop_requested = False
        return self.stats

    def _start(self, row: BundleRow) -> None:
        assert self._ctx is not None
        if not self._tasks:
            self._busy_since = time.monotonic()
            if self._bucket is not None:
                self._bucket.drain()  # what built up while idle is no licence to burst
        self.scheduler.started(row.id)
        self._tasks[row.id] = asyncio.create_task(BundleUpload(row, self._ctx).run())

    def _reap(self) -> None:
        """Take the results of finished bundle uploads to the scheduler."""
        for bundle_id, task in list(self._tasks.items()):
            if not task.done():
                continue
            del self._tasks[bundle_id]
            self.progress.pop(bundle_id, None)
            self.scheduler.ended(bundle_id)
            if not self._tasks:
                self.stats.busy_s += time.monotonic() - self._busy_since
            if task.cancelled():
                continue  # paused or stopping: it resumes next time
            exc = task.exception()
            if exc is not None:
                self._unexpected(bundle_id, exc)
            else:
                self._finished(bundle_id, task.result())

    def _finished(self, bundle_id: str, outcome: BundleOutcome) -> None:
        now = time.monotonic()
        if outcome.kind == "uploaded":
            self.scheduler.uploaded(bundle_id)
            self.last_upload_utc = utc_now()
            return
        if outcome.kind == "token_refused":
            self.last_error = outcome.detail
            self.scheduler.token_refused(now)
            log.error("%s", outcome.detail)
            return
        if outcome.kind == "misconfigured":
            self.last_error = outcome.detail
            self.scheduler.misconfigured(now, outcome.detail)
            if self._ctx is not None:
                self._ctx.caps = None  # find the endpoint again next time
            log.error("%s", outcome.detail)
            return
        self.last_error = f"{bundle_id}: {outcome.detail}"
        if outcome.kind == "quarantined":
            self._tidy_due = True
            if self._wake:
                self._wake.set()
            return
        n = self.scheduler.retry_later(
            bundle_id, now, after_s=outcome.after_s, sink_down=outcome.sink_down
        )
        log.warning("bundle %s: %s (attempt %d; retrying later)", bundle_id, outcome.detail, n)

    def _unexpected(self, bundle_id: str, exc: BaseException) -> None:
        """A failure nobody planned for (a journal error, a bug): logged with its traceback,
        and the bundle waits its backoff instead of being retried in a tight loop."""
        log.error("bundle %s: unexpected failure", bundle_id, exc_info=exc)
        self.last_error = f"{bundle_id}: {exc!r}"
        self.scheduler.retry_later(bundle_id, time.monotonic())

    def _maybe_retry_token(self, now: float) -> None:
        if self.scheduler.token_refused_at is None:
            return
        try:
            fresh = self._read_token()
        except UploadError:
            fresh = self.token
        if self.scheduler.token_may_retry(now, changed=fresh != self.token):
            self.token = fresh
            if self._sink is not None:
                self._sink.token = fresh

    # -- pacing -------------------------------------------------------------------------------
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

    # -- around the uploads ---------------------------------------------------------------------
    async def _tidy(self) -> None:
        assert self._sink is not None
        await self._sink.terminate_abandoned(self.journal)
        sinkside.drop_stale_wire(self.journal, self.data_dir)

    async def _heartbeat(self) -> None:
        assert self._sink is not None
        body = sinkside.heartbeat_body(
            self.journal, self.data_dir, self.last_upload_utc, self.model_version()
        )
        if await self._sink.heartbeat(body):
            self.stats.heartbeats += 1
        else:
            self.stats.heartbeat_failures += 1
