"""The uploader's pure parts with plain values: the tus state machine, the token bucket (virtual
time), the schedule of windows, backoff, what goes over the wire."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
from pathlib import Path

import pytest
import zstandard

from capsight_edge.profile.schema import UploadWindow
from capsight_edge.uploader import wire
from capsight_edge.uploader.shaping import Backoff, TokenBucket, UploadSchedule
from capsight_edge.uploader.tus import (
    COMPLETE,
    PERMANENT,
    PROGRESS,
    RESEND,
    RESTART,
    RESYNC,
    RETRY,
    TERMINATED,
    UNAUTHORIZED,
    ServerCaps,
    TusUpload,
)

OURS = ServerCaps.parse(
    {
        "Tus-Version": "1.0.0",
        "Tus-Extension": "creation,creation-with-upload,checksum,termination",
        "Tus-Checksum-Algorithm": "sha1,sha256,md5",
        "Tus-Max-Size": "1000000",
    }
)


def new(length: int = 10, **kw: object) -> TusUpload:
    return TusUpload("http://sink/files/", length, {"filename": "clip.mp4"}, chunk_bytes=4, **kw)  # type: ignore[arg-type]


def test_caps_are_read_from_options() -> None:
    assert OURS.sha256 and OURS.max_size == 1000000
    assert "creation-with-upload" in OURS.extensions
    bare = ServerCaps.parse({"Tus-Extension": "creation,termination"})
    assert not bare.sha256 and bare.max_size is None


def test_creation_with_upload_then_chunks_to_the_end() -> None:
    up = new(caps=OURS, token="t")
    req = up.next_request()
    assert req is not None and req.method == "POST" and req.body == (0, 4) and req.checksum
    assert req.headers["Upload-Length"] == "10" and req.headers["Authorization"] == "Bearer t"
    name, value = req.headers["Upload-Metadata"].split(" ")
    assert name == "filename" and base64.b64decode(value) == b"clip.mp4"
    out = up.receive("POST", 201, {"Location": "/files/abc", "Upload-Offset": "4"})
    assert out.kind == PROGRESS and up.url == "http://sink/files/abc" and up.offset == 4
    req = up.next_request()
    assert req is not None and (req.method, req.body, req.headers["Upload-Offset"]) == (
        "PATCH",
        (4, 4),
        "4",
    )
    assert up.receive("PATCH", 204, {"Upload-Offset": "8"}).kind == PROGRESS
    req = up.next_request()
    assert req is not None and req.body == (8, 2)  # the last chunk is what is left
    assert up.receive("PATCH", 204, {"Upload-Offset": "10"}).kind == COMPLETE
    assert up.done and up.next_request() is None


def test_a_server_without_creation_with_upload_or_checksum_gets_plain_requests() -> None:
    up = new(caps=ServerCaps.parse({"Tus-Extension": "creation"}))
    req = up.next_request()
    assert req is not None and req.body is None and not req.checksum
    assert up.receive("POST", 201, {"Location": "http://other/x"}).kind == PROGRESS
    req = up.next_request()
    assert req is not None and req.url == "http://other/x" and not req.checksum


def test_resume_starts_with_head_and_takes_the_servers_offset() -> None:
    up = new(url="http://sink/files/abc", offset=8)  # what the journal had
    req = up.next_request()
    assert req is not None and req.method == "HEAD"
    assert up.receive("HEAD", 200, {"Upload-Offset": "6", "Upload-Length": "10"}).kind == PROGRESS
    assert up.offset == 6  # the server's word, not the journal's


def test_conflicts_vanished_uploads_and_checksum_failures() -> None:
    up = new(url="http://sink/files/abc", state="patch", offset=4)
    assert up.receive("PATCH", 409, {}).kind == RESYNC
    assert up.next_request().method == "HEAD"  # type: ignore[union-attr]
    up.receive("HEAD", 200, {"Upload-Offset": "4"})
    assert up.receive("PATCH", 460, {}).kind == RESEND
    assert up.next_request().body == (4, 4)  # type: ignore[union-attr]  # the same chunk again
    for status in (404, 410):
        up = new(url="http://sink/files/abc", state="patch", offset=4)
        assert up.receive("PATCH", status, {}).kind == RESTART
        assert (up.url, up.offset, up.next_request().method) == ("", 0, "POST")  # type: ignore[union-attr]
    up = new(url="http://sink/files/abc")
    out = up.receive("HEAD", 200, {"Upload-Offset": "0", "Upload-Length": "99"})
    assert out.kind == RESTART  # the server holds some other upload under that URL


def test_failures_are_split_into_retryable_permanent_and_unauthorized() -> None:
    for status in (500, 502, 503, 423, 429, 408):
        up = new(url="http://sink/files/abc", state="patch")
        out = up.receive("PATCH", status, {"Retry-After": "7"})
        assert out.kind == RETRY and out.retry_after_s == 7.0 and up.state == "head"
    for status in (400, 413, 415, 412):
        assert new().receive("POST", status, {}).kind == PERMANENT
    for status in (401, 403):
        assert new().receive("POST", status, {}).kind == UNAUTHORIZED
    up = new(url="http://sink/files/abc", state="patch")
    assert up.interrupted("reset").kind == RETRY and up.next_request().method == "HEAD"  # type: ignore[union-attr]
    assert new().receive("POST", 201, {}).kind == PERMANENT  # no Location
    bad = new(url="http://sink/files/abc")
    assert bad.receive("HEAD", 200, {"Upload-Offset": "99"}).kind == RETRY  # past the length


def test_termination() -> None:
    up = new(url="http://sink/files/abc", offset=4)
    req = up.termination_request()
    assert req is not None and req.method == "DELETE"
    assert up.receive("DELETE", 204, {}).kind == TERMINATED and up.url == ""
    assert new().termination_request() is None
    assert new(url="http://x/y").receive("DELETE", 404, {}).kind == TERMINATED


def test_a_file_larger_than_the_server_allows_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="Tus-Max-Size"):
        new(length=2_000_000, caps=OURS)


class VirtualTime:
    def __init__(self) -> None:
        self.t = 100.0

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s


def test_token_bucket_starts_empty_and_holds_the_rate() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(8_000_000, clock=vt.clock, sleep=vt.sleep)  # 1 MB/s

    async def go() -> None:
        await bucket.take(16384)  # starts empty: even the first piece waits
        assert vt.t > 100.0
        start = vt.t
        for _ in range(300):
            await bucket.take(bucket.piece_bytes())
        sent = 300 * bucket.piece_bytes()
        assert sent / (vt.t - start) == pytest.approx(1_000_000, rel=0.001)

    asyncio.run(go())


def test_token_bucket_rate_changes_and_zero_holds_everything() -> None:
    async def go() -> None:
        bucket = TokenBucket(0)
        taker = asyncio.create_task(bucket.take(100))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not taker.done()  # rate 0: nothing goes
        bucket.set_rate(None)  # uncapped: it goes at once
        await asyncio.wait_for(taker, 5)
        assert bucket.taken == 100

    asyncio.run(go())


def test_token_bucket_is_shared_fairly_by_concurrent_uploads() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(800_000, clock=vt.clock, sleep=vt.sleep)
    got = [0, 0]

    async def sender(i: int) -> None:
        for _ in range(50):
            await bucket.take(16384)
            got[i] += 16384

    async def go() -> None:
        start = vt.t
        await asyncio.gather(sender(0), sender(1))
        assert sum(got) / (vt.t - start) == pytest.approx(100_000, rel=0.02)

    asyncio.run(go())
    assert got[0] == got[1]


def test_schedule_picks_the_first_matching_window() -> None:
    sched = UploadSchedule(
        2_000_000,
        (
            UploadWindow("08:00", "22:00", 500_000, ["mon", "tue", "wed", "thu", "fri"]),
            UploadWindow("08:00", "22:00", 0, ["sat", "sun"]),
            UploadWindow("22:00", "24:00", 40_000_000),
        ),
    )
    thursday = dt.datetime(2026, 11, 26)
    assert sched.rate_at(thursday.replace(hour=9)) == 500_000
    assert sched.rate_at(thursday.replace(hour=23, minute=59)) == 40_000_000
    assert sched.rate_at(thursday.replace(hour=3)) == 2_000_000  # no window: the default
    assert sched.rate_at(dt.datetime(2026, 11, 28, 12)) == 0  # Saturday: off
    assert sched.describe(dt.datetime(2026, 11, 28, 12)) == "off"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(base_s=1, max_s=60, rng=random.Random(1))
    delays = [b.delay(n) for n in range(10)]
    for n, d in enumerate(delays):
        cap = min(60, 2**n)
        assert cap / 2 <= d <= cap
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not in step


def test_wire_compresses_manifests_and_leaves_clips_alone(tmp_path: Path) -> None:
    folder = tmp_path / "bundles" / "b1"
    folder.mkdir(parents=True)
    manifest = json.dumps({"k": ["value"] * 200}).encode()
    (folder / "manifest.json").write_bytes(manifest)
    (folder / "clip.mp4").write_bytes(random.Random(0).randbytes(5000))
    (folder / "sensors.mcap").write_bytes(random.Random(1).randbytes(5000))  # incompressible
    m = wire.prepare(tmp_path, "b1", "manifest.json", "")
    assert m.encoding == "zstd" and m.bytes < len(manifest) // 5
    assert zstandard.ZstdDecompressor().decompress(m.path.read_bytes()) == manifest
    again = wire.prepare(tmp_path, "b1", "manifest.json", "")
    assert again.path.read_bytes() == m.path.read_bytes()  # a resume sends the same bytes
    clip = wire.prepare(tmp_path, "b1", "clip.mp4", "x")
    assert clip.encoding == "" and clip.path == folder / "clip.mp4"
    sensors = wire.prepare(tmp_path, "b1", "sensors.mcap", "x")
    assert sensors.encoding == "" and sensors.path == folder / "sensors.mcap"
    assert not (tmp_path / "wire" / "b1" / "sensors.mcap.zst").exists()
    wire.remove(tmp_path, "b1")
    assert not (tmp_path / "wire" / "b1").exists()


def test_chunk_reader_checksums_streams_and_hashes_the_whole_file_in_order(
    tmp_path: Path,
) -> None:
    import hashlib

    from capsight_edge.uploader.reader import ChunkReader, LocalFileProblem

    data = random.Random(3).randbytes(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    whole = hashlib.sha256(data).hexdigest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(hashlib.sha256(raw).digest()).decode()

    async def body(r: ChunkReader, offset: int, length: int) -> bytes:
        return b"".join([b async for b in r.blocks(offset, length)])

    async def go() -> None:
        r = ChunkReader(path, len(data), checksum=True)
        assert await r.checksum_of(0, 4000, 4000) == b64(data[:4000])
        assert await body(r, 0, 4000) == data[:4000]
        assert await r.checksum_of(4000, 4000, 4000) == b64(data[4000:8000])  # prefetched
        assert await r.checksum_of(4000, 4000, 4000) == b64(data[4000:8000])  # a re-send
        assert await r.sha256() == whole  # the rest is read from disk
        resumed = ChunkReader(path, len(data), checksum=True)
        await resumed.checksum_of(6000, 4000, 4000)  # resumed past a gap: the gap is hashed
        assert await resumed.sha256() == whole
        known = ChunkReader(path, len(data), checksum=True, known_sha256=whole)
        assert known.whole_file(0, len(data)) and not known.whole_file(0, 10)
        assert await known.checksum_of(0, len(data), 0) == b64(data)  # from the manifest
        known.sink_verified()
        assert await known.sha256() == whole
        path.write_bytes(data[:5000])
        short = ChunkReader(path, len(data), checksum=True)
        with pytest.raises(LocalFileProblem, match="shorter"):
            await short.checksum_of(4000, 4000, 0)
        with pytest.raises(LocalFileProblem, match="shorter"):
            await body(short, 4000, 4000)
        assert await short.sha256_from_disk() == hashlib.sha256(data[:5000]).hexdigest()

    asyncio.run(go())


def test_uncapped_chunks_are_about_four_seconds_of_the_measured_rate_and_take_short_tails_along(
    tmp_path: Path,
) -> None:
    """A checksummed chunk cut by the network is lost whole: uncapped, a chunk is sized to
    what the sink confirmed lately (requests under 1 MiB are round trips, not samples)."""
    from capsight_edge.journal.journal import Journal
    from capsight_edge.uploader.progress import UploadStats
    from capsight_edge.uploader.uploader import MAX_CHUNK, MIN_CHUNK, UNCAPPED_CHUNK, Uploader

    stats = UploadStats()
    stats.measured(200_000, 0.01)  # a small file: its time is the round trip
    assert stats.measured_bytes_per_s == 0
    stats.measured(4 << 20, 4.0)
    stats.measured(12 << 20, 4.0)  # smoothed: halfway between
    assert stats.measured_bytes_per_s == ((1 << 20) + (3 << 20)) / 2
    journal = Journal(tmp_path / "journal.db")
    try:
        up = Uploader(journal, tmp_path, sink_url="http://127.0.0.1:9", token="t", uncapped=True)
        big = 1 << 30  # what is left of the file: far more than a chunk
        assert up._chunk_size(big) == MAX_CHUNK  # nothing measured yet
        up.stats.measured(10 << 20, 8.0)  # a store's Wi-Fi: 1.25 MiB/s
        assert up._chunk_size(big) == 5 << 20
        # A tail under a quarter chunk goes with the chunk before it, never a request of its
        # own; from a quarter up it is a chunk of its own; a last chunk is not stretched.
        assert up._chunk_size((5 << 20) + (1 << 20)) == (5 << 20) + (1 << 20)
        assert up._chunk_size((5 << 20) + (5 << 18)) == 5 << 20
        assert up._chunk_size(3 << 20) == 5 << 20  # the request is what is left of it
        up.stats.measured_bytes_per_s = 500 * 2**20  # loopback
        assert up._chunk_size(big) == UNCAPPED_CHUNK
        assert up._chunk_size(70 << 20) == 70 << 20
        up.stats.measured_bytes_per_s = 1000.0  # a trickle
        assert up._chunk_size(big) == MIN_CHUNK
    finally:
        journal.close()
    journal = Journal(tmp_path / "fixed.db")
    try:  # a size the integrator fixed is kept to the byte (a proxy's limit, say)
        up = Uploader(
            journal, tmp_path, sink_url="http://127.0.0.1:9", token="t", chunk_bytes=1 << 20
        )
        assert up._chunk_size((1 << 20) + 10) == 1 << 20
    finally:
        journal.close()


def test_a_failed_request_can_only_lower_the_measured_rate() -> None:
    """A link that got slower (or a rate remembered from a faster one) must not keep chunks
    too large to ever get through: what a request cut by the network got out, over its time,
    lowers the rate; it never raises it, and a cut within a second is no sample. Once the link
    is back, whole chunks, however small, measure it again."""
    from capsight_edge.uploader.progress import UploadStats

    stats = UploadStats()
    stats.measured(64 << 20, 0.25)  # 256 MiB/s confirmed
    stats.measured(100 << 20, 0.1, failed=True)  # faster, but failed: ignored
    assert stats.measured_bytes_per_s == 256 * 2**20
    stats.measured(1 << 20, 0.5, failed=True)  # failed within a second: no sample
    assert stats.measured_bytes_per_s == 256 * 2**20
    stats.measured(3 << 20, 6.0, failed=True)  # half a MiB/s before the link dropped
    assert stats.measured_bytes_per_s == 0.5 * 2**20
    stats.measured(200_000, 2.0, failed=True)  # a stall: even under 1 MiB, it is the link
    assert stats.measured_bytes_per_s == 100_000
    # ... and it recovers: small chunks that the chunk size (not the file) sized are samples
    stats.measured(256 << 10, 0.1)  # a small file: a round trip, not the link
    assert stats.measured_bytes_per_s == 100_000
    for _ in range(12):
        stats.measured(256 << 10, 0.1, whole_chunk=True)
    assert stats.measured_bytes_per_s > 2.4 * 2**20  # the link: 2.5 MiB/s


def test_the_uploaders_connections_cap_tcps_retransmission_wait_where_the_kernel_can() -> None:
    """After an outage TCP waits up to seconds before trying again; the uploader's
    connections cap that wait at RTO_MAX_MS where the kernel has TCP_RTO_MAX_MS (Linux 6.15+),
    and carry no option at all where it has not (a socket refusing it would fail to connect)."""
    import socket

    from capsight_edge.uploader.uploader import RTO_MAX_MS, TCP_RTO_MAX_MS, socket_options

    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)
            kernel_has_it = s.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == RTO_MAX_MS
        except OSError:
            kernel_has_it = False
    if kernel_has_it:
        assert socket_options() == ((socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS),)
    else:
        assert socket_options() == ()
