"""The real uploader against the real sink on 127.0.0.1, through the faults the issue names:
the sink down, 5xx, 409, vanished uploads (404/410), checksum failures (460), a revoked token,
files changed or missing on disk, connections cut every few hundred KB, a restart mid-upload, the
pause hook and the schedule; and against a tus server that is not ours (tuspyserver)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from benchmarks.bundles import seal_bundle
from benchmarks.faultnet import CuttingProxy, Fault, FaultInjector, ServerThread
from capsight_edge.journal.journal import Journal
from capsight_edge.localsink import free_port
from capsight_edge.profile.schema import UploadWindow
from capsight_edge.uploader.service import UploaderThread
from capsight_edge.uploader.shaping import Backoff, UploadSchedule
from capsight_edge.uploader.status import ENDPOINT_KEY, RATE_KEY
from capsight_edge.uploader.uploader import (
    MAX_CHUNK,
    MIN_CHUNK,
    STATUS_KEY,
    UNCAPPED_CHUNK,
    Uploader,
)
from cloud_sink.tus import make_app
from tests.conftest import wait_until

FAST = Backoff(base_s=0.05, max_s=0.4)


class SinkUnderTest:
    """The real sink app behind a fault injector, served by uvicorn on 127.0.0.1."""

    def __init__(self, data: Path, port: int = 0, **app_options: object) -> None:
        self.data = data
        self.app = make_app(data, **app_options)
        self.faults = FaultInjector(self.app)
        self.db, self.index = self.app.state.db, self.app.state.index
        self.token = self.db.add_device("cart-a")
        self.server = ServerThread(self.faults, port)
        self.url = self.server.url

    def start(self) -> SinkUnderTest:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def stored(self, bundle_id: str, name: str) -> bytes:
        return (
            self.data / "blobs" / "store" / "bundles" / "cart-a" / bundle_id / name
        ).read_bytes()

    def status(self, bundle_id: str) -> str | None:
        """The bundle's status in the index, once the background ingest has had it."""
        assert wait_until(lambda: self.db.ingest_counts()["pending"] == 0, timeout_s=30)
        row = self.index.get(bundle_id, "cart-a")
        return None if row is None else str(row["status"])


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SinkUnderTest]:
    s = SinkUnderTest(tmp_path / "sink").start()
    yield s
    s.stop()


@pytest.fixture
def cart(tmp_path: Path) -> Iterator[tuple[Journal, Path]]:
    data = tmp_path / "cart"
    journal = Journal(data / "journal.db")
    yield journal, data
    journal.close()


def uploader(
    journal: Journal, data: Path, url: str, token: str, rate_bps: int = 0, **kw: object
) -> Uploader:
    """Uncapped unless ``rate_bps`` is given."""
    opts: dict[str, object] = {"uncapped": not rate_bps, "heartbeat_s": 0, "backoff": FAST}
    if rate_bps:
        opts["schedule"] = UploadSchedule(rate_bps)
    opts.update(kw)
    return Uploader(journal, data, sink_url=url, token=token, **opts)  # type: ignore[arg-type]


def assert_identical(sink: SinkUnderTest, data: Path, bundle_id: str) -> None:
    assert sink.status(bundle_id) == "ok"
    folder = data / "bundles" / bundle_id
    for f in folder.iterdir():
        assert sink.stored(bundle_id, f.name) == f.read_bytes(), f.name


def test_bundles_go_in_priority_order_compressed_where_it_pays_and_verified(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    for i, prio in enumerate((1, 3, 3, 5)):
        seal_bundle(journal, data, f"b{i}", priority=prio, created_ns=1000 + i)
    up = uploader(journal, data, sink.url, sink.token, concurrency=1, heartbeat_s=30)
    stats = asyncio.run(up.run(until_idle=True))
    assert stats.bundles_uploaded == 4 and stats.retries == 0
    order = [
        r[0]
        for r in journal._db.execute(
            "SELECT bundle_id FROM transitions WHERE to_state = 'uploaded' ORDER BY seq"
        )
    ]
    assert order == ["b3", "b1", "b2", "b0"]  # priority first, then oldest
    for i in range(4):
        assert_identical(sink, data, f"b{i}")
        assert journal.get(f"b{i}").state == "uploaded"  # type: ignore[union-attr]
    assert stats.wire_saved_bytes > 0  # the manifests went compressed
    creations = [m for m, path, st in sink.faults.seen if m == "POST" and path == "/files/"]
    assert len(creations) == 12
    assert not (data / "wire").exists() or not any((data / "wire").iterdir())
    fleet = sink.db._exec("SELECT body FROM heartbeats WHERE device = 'cart-a'").fetchone()
    assert json.loads(fleet[0])["queue_depth"] == 0  # the last heartbeat saw the queue drained
    status = json.loads(journal.kv_get(STATUS_KEY) or "{}")
    assert status["stats"]["bundles_uploaded"] == 4 and status["state"] == "stopped"


def test_server_errors_conflicts_and_checksum_failures_are_survived(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "big", noise_frames=40)  # about 1.6 MB of clip
    sink.faults.add(Fault("PATCH", 503, times=2, headers={"Retry-After": "0"}))
    sink.faults.add(Fault("PATCH", 409))
    sink.faults.add(Fault("PATCH", corrupt=True, times=2))  # the real sink answers 460
    sink.faults.add(Fault("HEAD", 500))
    up = uploader(journal, data, sink.url, sink.token, chunk_bytes=256 * 1024)
    stats = asyncio.run(up.run(until_idle=True))
    assert stats.bundles_uploaded == 1
    assert stats.checksum_resends == 2 and stats.retries >= 3
    statuses = [st for m, _, st in sink.faults.seen]
    assert statuses.count(460) == 2 and statuses.count(409) == 1 and statuses.count(503) == 2
    assert_identical(sink, data, "big")


def test_a_vanished_upload_starts_over(sink: SinkUnderTest, cart: tuple[Journal, Path]) -> None:
    journal, data = cart
    seal_bundle(journal, data, "v", noise_frames=20)
    sink.faults.add(Fault("PATCH", 410))
    sink.faults.add(Fault("PATCH", 404))
    stats = asyncio.run(
        uploader(journal, data, sink.url, sink.token, chunk_bytes=128 * 1024).run(until_idle=True)
    )
    assert stats.restarts == 2 and stats.bundles_uploaded == 1
    assert_identical(sink, data, "v")


def test_the_sink_down_for_a_while_holds_uploads_back_then_they_complete(
    tmp_path: Path, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "d1")
    seal_bundle(journal, data, "d2")
    port = free_port()
    later = SinkUnderTest(tmp_path / "sink", port)
    up = uploader(journal, data, later.url, later.token, backoff=Backoff(0.05, 0.3))
    runner = UploaderThread(up).start()
    try:
        assert wait_until(lambda: up.state.startswith("waiting: sink unreachable"), 20)
        assert journal.get("d1").state == "sealed"  # type: ignore[union-attr]
        later.start()
        assert wait_until(lambda: up.stats.bundles_uploaded == 2, 60), up.status()
    finally:
        runner.stop()
        later.stop()
    assert runner.error is None
    assert_identical(later, data, "d1")
    assert_identical(later, data, "d2")


def test_a_revoked_token_stops_uploads_and_says_so(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "r1")
    sink.db.revoke("cart-a")
    up = uploader(journal, data, sink.url, sink.token)
    stats = asyncio.run(up.run(until_idle=True))
    assert stats.bundles_uploaded == 0
    assert "refuses this device's token" in up.state
    assert "refuses this device's token" in json.loads(journal.kv_get(STATUS_KEY) or "{}")["state"]
    assert journal.get("r1").state == "sealed"  # type: ignore[union-attr]  # not lost, not quarantined


def test_changed_or_missing_files_are_quarantined_never_sent(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    changed = seal_bundle(journal, data, "changed")
    missing = seal_bundle(journal, data, "missing")
    seal_bundle(journal, data, "fine")
    clip = changed / "clip.mp4"
    clip.write_bytes(clip.read_bytes()[:-1] + b"\x00")
    (missing / "sensors.mcap").unlink()
    stats = asyncio.run(uploader(journal, data, sink.url, sink.token).run(until_idle=True))
    assert stats.bundles_uploaded == 1 and stats.bundles_quarantined == 2
    for bad, why in (("changed", "sha256"), ("missing", "sensors.mcap")):
        row = journal.get(bad)
        assert row is not None and row.state == "quarantined" and why in row.reason
        assert sink.status(bad) is None  # nothing of it was ingested
    assert_identical(sink, data, "fine")


def test_connections_cut_every_300kb_resend_at_most_one_chunk_each(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    folder = seal_bundle(journal, data, "cut", noise_frames=60)  # about 2.4 MB
    total = sum(f.stat().st_size for f in folder.iterdir())
    proxy = CuttingProxy(sink.server.port, cut_every=300_000).start()
    chunk = 128 * 1024
    try:
        up = uploader(
            journal, data, f"http://127.0.0.1:{proxy.port}", sink.token, chunk_bytes=chunk
        )
        stats = asyncio.run(up.run(until_idle=True))
    finally:
        proxy.stop()
    assert stats.bundles_uploaded == 1 and proxy.cuts >= 5
    assert_identical(sink, data, "cut")
    resent = stats.bytes_sent - (total - stats.wire_saved_bytes)
    assert resent == stats.lost_bytes and 0 < stats.lost_bytes_max <= chunk
    assert resent <= proxy.cuts * chunk, (resent, proxy.cuts)


def test_a_restart_mid_upload_resumes_from_the_journal(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    folder = seal_bundle(journal, data, "resume", noise_frames=40)
    clip_bytes = (folder / "clip.mp4").stat().st_size
    chunk = 128 * 1024
    # 0.5 MB/s: slow enough to stop half-way
    first = uploader(journal, data, sink.url, sink.token, 4_000_000, chunk_bytes=chunk)
    runner = UploaderThread(first).start()
    assert wait_until(lambda: (journal.get("resume").upload_offset or 0) > 3 * chunk, 30)  # type: ignore[union-attr]
    runner.stop()
    row = journal.get("resume")
    assert row is not None and row.state == "uploading" and row.upload_url
    held = row.upload_offset
    assert 0 < held < clip_bytes
    second = uploader(journal, data, sink.url, sink.token, chunk_bytes=chunk)
    stats = asyncio.run(second.run(until_idle=True))
    assert stats.bundles_uploaded == 1
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert stats.bytes_sent <= total - held  # nothing the sink held was sent again
    assert [m for m, _, _ in sink.faults.seen].count("HEAD") >= 1
    assert_identical(sink, data, "resume")


def test_a_restarted_uploader_sizes_its_chunks_from_the_rate_it_measured_before(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    """The link rate the sink confirmed is kept in the journal: after a restart, chunks are
    about 4 s of it from the first request, not the blind ``MAX_CHUNK``."""
    journal, data = cart
    seal_bundle(journal, data, "measure", noise_frames=30)  # a clip of about 3 MB
    first = uploader(journal, data, sink.url, sink.token)
    assert asyncio.run(first.run(until_idle=True)).bundles_uploaded == 1
    kept = float(journal.kv_get(RATE_KEY) or 0)
    assert kept == pytest.approx(first.stats.measured_bytes_per_s, rel=0.01) and kept > 0
    second = uploader(journal, data, sink.url, sink.token)
    assert second._chunk_size(1 << 30) == MAX_CHUNK  # nothing measured in this process yet
    asyncio.run(second.run(until_idle=True))  # nothing to send: it only recalls the rate
    assert second.stats.measured_bytes_per_s == kept
    expected = int(min(UNCAPPED_CHUNK, max(MIN_CHUNK, kept * 4.0)))
    assert second._chunk_size(1 << 30) == expected != MAX_CHUNK


def test_the_pause_hook_stops_sending_at_once_and_resume_finishes(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "p", noise_frames=40)
    up = uploader(journal, data, sink.url, sink.token, 2_000_000, chunk_bytes=64 * 1024)
    runner = UploaderThread(up).start()
    try:
        assert wait_until(lambda: up.stats.bytes_sent > 100_000, 30)
        up.pause("cart not docked")
        assert wait_until(lambda: up.state == "paused: cart not docked" and not up.progress, 10)
        sent = up.stats.bytes_sent
        ticks = up.ticks
        assert wait_until(lambda: up.ticks >= ticks + 2, 10)
        assert up.stats.bytes_sent == sent  # nothing went while paused
        assert json.loads(journal.kv_get(STATUS_KEY) or "{}")["state"] == "paused: cart not docked"
        up.resume()
        assert wait_until(lambda: up.stats.bundles_uploaded == 1, 60)
    finally:
        runner.stop()
    assert_identical(sink, data, "p")


def test_a_window_that_is_off_sends_nothing_and_a_flush_ignores_windows(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "w")
    off = UploadSchedule(0, (UploadWindow("00:00", "24:00", 0),))
    up = uploader(journal, data, sink.url, sink.token, schedule=off, uncapped=False)
    stats = asyncio.run(up.run(until_idle=True))
    assert stats.bytes_sent == 0 and up.state.startswith("off")
    flush = uploader(journal, data, sink.url, sink.token, schedule=off, uncapped=True)
    assert asyncio.run(flush.run(until_idle=True)).bundles_uploaded == 1
    assert_identical(sink, data, "w")


def test_abandoned_uploads_are_terminated_on_the_sink(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "gone", noise_frames=20)
    first = uploader(journal, data, sink.url, sink.token, 1_000_000, chunk_bytes=64 * 1024)
    runner = UploaderThread(first).start()
    assert wait_until(lambda: (journal.get("gone").upload_offset or 0) > 0, 30)  # type: ignore[union-attr]
    runner.stop()
    url = next(p.url for p in journal.upload_plan("gone") if p.url)
    journal.quarantine("gone", "a technician pulled it")
    asyncio.run(uploader(journal, data, sink.url, sink.token).run(until_idle=True))
    head = httpx.head(
        url, headers={"Authorization": f"Bearer {sink.token}", "Tus-Resumable": "1.0.0"}
    )
    assert head.status_code == 404  # terminated
    assert journal.upload_plan("gone") == []


def test_uploads_to_a_tus_server_that_is_not_ours(
    tmp_path: Path, cart: tuple[Journal, Path]
) -> None:
    from fastapi import FastAPI
    from tuspyserver import create_tus_router

    journal, data = cart
    folder = seal_bundle(journal, data, "other", noise_frames=20)
    store = tmp_path / "tuspy"
    app = FastAPI()
    app.include_router(  # at a path that is not ours: the URL names the endpoint itself
        create_tus_router(prefix="uploads/v1", files_dir=str(store))
    )
    server = ServerThread(app).start()
    try:
        up = uploader(journal, data, server.url + "/uploads/v1/", "", chunk_bytes=256 * 1024)
        stats = asyncio.run(up.run(until_idle=True))
    finally:
        server.stop()
    assert stats.bundles_uploaded == 1, up.status()
    received: dict[str, bytes] = {}  # what the server stored, by the file names we sent
    for info_path in store.glob("*.info"):
        info = json.loads(info_path.read_text())
        body = info_path.with_suffix("").read_bytes()
        assert info["offset"] == info["size"] == len(body)
        if info["metadata"].get("encoding") == "zstd":
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 24)
        received[info["metadata"]["filename"]] = body
    for f in folder.iterdir():
        assert received[f.name] == f.read_bytes(), f.name


def test_status_shows_progress_while_uploading(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "slow", noise_frames=20)
    up = uploader(journal, data, sink.url, sink.token, 1_000_000, chunk_bytes=64 * 1024)
    runner = UploaderThread(up).start()
    try:

        def shows_progress() -> bool:
            status = json.loads(journal.kv_get(STATUS_KEY) or "{}")
            flight = status.get("in_flight") or [{}]
            return bool(flight[0].get("bytes_confirmed")) and bool(flight[0].get("eta_s"))

        assert wait_until(shows_progress, 30)
        flight = json.loads(journal.kv_get(STATUS_KEY) or "{}")["in_flight"][0]
        assert flight["bundle_id"] == "slow"
        assert 0 < flight["bytes_confirmed"] <= flight["bytes_sent"] < flight["bytes_total"]
        assert 0 < flight["rate_bps"] < 2_000_000 and status_rate_is_capped(journal)
    finally:
        runner.stop()


def status_rate_is_capped(journal: Journal) -> bool:
    return json.loads(journal.kv_get(STATUS_KEY) or "{}")["rate_cap_bps"] == 1_000_000


def test_a_file_larger_than_the_sink_accepts_is_quarantined_not_retried_forever(
    tmp_path: Path, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "huge", noise_frames=20)  # a clip of about 0.8 MB
    small = SinkUnderTest(tmp_path / "sink", max_size=100_000).start()
    try:
        up = uploader(journal, data, small.url, small.token)
        stats = asyncio.run(up.run(until_idle=True))
    finally:
        small.stop()
    row = journal.get("huge")
    assert row is not None and row.state == "quarantined" and "Tus-Max-Size" in row.reason
    assert stats.bytes_sent == 0 and stats.bundles_quarantined == 1


def test_a_sink_that_keeps_answering_409_is_given_a_rest_not_a_busy_loop(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "c409", noise_frames=10)
    endless = sink.faults.add(Fault("PATCH", 409, times=10_000))
    up = uploader(journal, data, sink.url, sink.token, chunk_bytes=64 * 1024)
    stats = asyncio.run(up.run(until_idle=True, max_attempts=2))
    row = journal.get("c409")
    assert row is not None and row.state == "sealed" and "409" in row.last_error
    assert stats.bundles_uploaded == 0 and endless.hits <= 2 * 5  # 5 tries per attempt
    endless.times = 0
    assert asyncio.run(up.run(until_idle=True)).bundles_uploaded == 1
    assert_identical(sink, data, "c409")


def test_an_upload_whose_bytes_changed_is_terminated_and_started_anew(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    journal, data = cart
    seal_bundle(journal, data, "re")
    auth = {"Authorization": f"Bearer {sink.token}", "Tus-Resumable": "1.0.0"}
    old = httpx.post(sink.url + "/files/", headers={**auth, "Upload-Length": "123"})
    old_url = old.headers["Location"]
    # What an earlier attempt left: the clip planned with other bytes, its upload begun.
    journal.start_upload("re")
    journal.plan_upload("re", [("clip.mp4", "zstd", 123)])
    journal.file_progress("re", "clip.mp4", url=old_url, offset=0)
    journal.upload_failed("re", "interrupted", permanent=False)
    stats = asyncio.run(uploader(journal, data, sink.url, sink.token).run(until_idle=True))
    assert stats.bundles_uploaded == 1
    assert httpx.head(old_url, headers=auth).status_code == 404  # terminated, not left to expire
    assert_identical(sink, data, "re")


def test_the_sinks_quotas_slow_the_cart_down_but_everything_arrives(
    tmp_path: Path, cart: tuple[Journal, Path]
) -> None:
    """One upload in progress per device and few creations a minute: the sink answers 429
    with Retry-After, and the cart's uploader waits as told instead of failing bundles."""
    from cloud_sink.config import Quotas, SinkConfig

    config = SinkConfig(quotas=Quotas(uploads_in_progress=1, creates_per_minute=400))
    tight = SinkUnderTest(tmp_path / "tight", config=config)  # type: ignore[arg-type]
    # Small bundles on a fast machine may each arrive whole before the other starts: the first
    # creation's body waits until another creation has been answered, so that two uploads are
    # in progress at once whatever the timing.
    hold = HoldFirstCreation(tight.faults.app)
    tight.faults.app = hold
    tight.start()
    try:
        journal, data = cart
        for i in range(3):
            seal_bundle(journal, data, f"q{i}", noise_frames=5)
        up = uploader(journal, data, tight.url, tight.token, concurrency=2, chunk_bytes=64 * 1024)
        stats = asyncio.run(up.run(until_idle=True, max_attempts=10))
        refused = [s for m, p, s in tight.faults.seen if s == 429]
        assert hold.held and refused, "the quota never came into play"
        assert stats.bundles_uploaded == 3
        for i in range(3):
            assert_identical(tight, data, f"q{i}")
    finally:
        tight.stop()


class HoldFirstCreation:
    """In front of the sink: the first POST's body is passed on only once another POST has been
    answered (at most 30 s)."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.posts = 0
        self.answered: asyncio.Event | None = None
        self.held = False  # the first body went on after another POST was answered

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        if self.answered is None:
            self.answered = asyncio.Event()
        answered = self.answered
        self.posts += 1
        if self.posts == 1:

            async def held() -> object:
                if not answered.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answered.wait(), 30)
                self.held = self.held or answered.is_set()
                return await receive()  # type: ignore[operator]

            await self.app(scope, held, send)  # type: ignore[operator]
            return

        async def telling(message: dict) -> None:  # type: ignore[type-arg]
            await send(message)  # type: ignore[operator]
            if message["type"] == "http.response.start":
                answered.set()

        await self.app(scope, receive, telling)  # type: ignore[operator]


class Redirecting:
    """In front of the sink: ``/old/...`` answers 307 to ``/...`` for every method but OPTIONS
    (so discovery finds the old path to be a tus endpoint, and creations are redirected);
    ``/loop/...`` redirects to itself."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        from starlette.responses import Response

        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/loop/"):
            await Response(status_code=308, headers={"Location": path})(scope, receive, send)  # type: ignore[arg-type]
            return
        if scope["type"] == "http" and path.startswith("/old/"):
            if scope["method"] == "OPTIONS":
                scope = {**scope, "path": path[4:], "raw_path": path[4:].encode()}
            else:
                where = path[4:]
                await Response(status_code=307, headers={"Location": where})(scope, receive, send)  # type: ignore[arg-type]
                return
        await self.app(scope, receive, send)  # type: ignore[operator]


@pytest.mark.parametrize("suffix", ["", "/", "/files", "/files/", "/old/files/"])
def test_the_sink_url_may_be_its_base_or_its_endpoint_and_redirects_are_followed(
    tmp_path: Path, cart: tuple[Journal, Path], suffix: str
) -> None:
    s = SinkUnderTest(tmp_path / "sink")
    s.server.app = Redirecting(s.faults)
    s.start()
    try:
        journal, data = cart
        seal_bundle(journal, data, "u1")
        up = uploader(journal, data, s.url + suffix, s.token)
        stats = asyncio.run(up.run(until_idle=True))
        assert stats.bundles_uploaded == 1, up.status()
        assert_identical(s, data, "u1")
        posts = [p for m, p, st in s.faults.seen if m == "POST"]
        assert posts and all(p == "/files/" for p in posts)  # never /files/files/
    finally:
        s.stop()


def test_the_endpoint_is_asked_once_and_a_restart_asks_where_it_was_found(
    sink: SinkUnderTest, cart: tuple[Journal, Path]
) -> None:
    """Three bundles at once ask the sink's base URL what it is once between them (the base,
    then the endpoint under it); a restarted uploader asks the endpoint its journal kept, and
    one the sink no longer answers at is asked, then forgotten for the URL's candidates."""
    journal, data = cart

    def options() -> list[str]:
        return [p for m, p, _ in sink.faults.seen if m == "OPTIONS"]

    for i in range(3):
        seal_bundle(journal, data, f"e{i}", noise_frames=5)
    stats = asyncio.run(uploader(journal, data, sink.url, sink.token, concurrency=3).run(
        until_idle=True
    ))  # fmt: skip
    assert stats.bundles_uploaded == 3
    assert options() == ["/", "/files/"]
    kept = json.loads(journal.kv_get(ENDPOINT_KEY) or "{}")
    assert kept == {"sink_url": sink.url, "endpoint": sink.url + "/files/"}
    sink.faults.seen.clear()
    seal_bundle(journal, data, "e3", noise_frames=5)
    assert asyncio.run(uploader(journal, data, sink.url, sink.token).run(
        until_idle=True
    )).bundles_uploaded == 1  # fmt: skip
    assert options() == ["/files/"]
    # A kept endpoint that is no tus endpoint any more: asked first, then the URL's own.
    journal.kv_set(ENDPOINT_KEY, json.dumps({"sink_url": sink.url, "endpoint": sink.url + "/x/"}))
    sink.faults.seen.clear()
    seal_bundle(journal, data, "e4", noise_frames=5)
    up = uploader(journal, data, sink.url, sink.token)
    assert asyncio.run(up.run(until_idle=True)).bundles_uploaded == 1, up.status()
    assert options() == ["/x/", "/", "/files/"]
    assert json.loads(journal.kv_get(ENDPOINT_KEY) or "{}")["endpoint"] == sink.url + "/files/"


@pytest.mark.parametrize("suffix", ["/nope/", "/loop/files/"])
def test_a_sink_url_that_leads_nowhere_is_the_uploaders_state_not_the_bundles_fault(
    tmp_path: Path, cart: tuple[Journal, Path], suffix: str
) -> None:
    s = SinkUnderTest(tmp_path / "sink")
    s.server.app = Redirecting(s.faults)
    s.start()
    try:
        journal, data = cart
        seal_bundle(journal, data, "w1")
        up = uploader(journal, data, s.url + suffix, s.token)
        for _ in range(4):  # a flush that keeps hitting it, as a technician would
            asyncio.run(up.run(until_idle=True))
        row = journal.get("w1")
        assert row is not None and row.state == "sealed"  # never quarantined
        assert journal.kv_get("permanent:w1") in (None, "0")
        status = json.loads(journal.kv_get(STATUS_KEY) or "{}")
        assert status["state"].startswith("stopped: the sink URL is misconfigured")
        assert "no tus endpoint" in status["last_error"]
    finally:
        s.stop()
