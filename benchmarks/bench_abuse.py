"""sink_abuse: honest carts upload while a hostile one throws everything at the sink.

Two runs of the same honest work on fresh sinks, one after the other in this run: ``N`` devices
uploading real bundles with the cart's own uploader, all at once; in the second, a hostile device
sends, over and over while they upload, a zstd bomb (2 GiB in 65 KB) as a sensor log, an MCAP
whose one chunk decodes to 256 MiB, a manifest nested 100,000 deep, oversized heartbeats, a
creation flood, bodies that stall, and request heads sent a byte at a time. What must hold:
every honest bundle arrives and verifies, the sink's peak memory stays within a stated bound of
the honest run's, its upload area stays small, and the honest uploads take at most twice as long.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.abuse import (
    OCTETS,
    TUS,
    manifest_of,
    mcap_bomb,
    nested_json,
    sink_rss_peak_kb,
    upload_bundle_file,
    zstd_bomb,
)
from benchmarks.bundles import make_bundle, seal_bundle
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, sha256_file
from capsight_edge.journal.journal import Journal
from capsight_edge.localsink import LocalSink
from capsight_edge.uploader.shaping import Backoff, UploadSchedule
from capsight_edge.uploader.uploader import Uploader

MEMORY_BOUND_MB = 100.0
UPLOAD_AREA_BOUND_MB = 64.0
CART_BPS = 8_000_000  # each honest cart's cap: a store's network, not loopback


def _honest(sink: LocalSink, tokens: dict[str, str], work: Path, per_device: int) -> float:
    """Every device's bundles with the cart's uploader, all devices at once; seconds taken."""
    carts = []
    for name in tokens:
        data = work / name
        journal = Journal(data / "journal.db")
        for i in range(per_device):
            seal_bundle(journal, data, f"{name}-b{i}", device=name, noise_frames=16)
        carts.append((journal, data, name))

    async def all_of_them() -> list[Any]:
        ups = [
            Uploader(
                j,
                d,
                sink_url=sink.url,
                token=tokens[n],
                schedule=UploadSchedule(CART_BPS),
                heartbeat_s=0,
                backoff=Backoff(0.2, 2.0),
            )
            for j, d, n in carts
        ]
        return await asyncio.gather(*(u.run(until_idle=True, max_attempts=20) for u in ups))

    start = time.perf_counter()
    asyncio.run(all_of_them())
    spent = time.perf_counter() - start
    for j, _, _ in carts:
        j.close()
    return spent


class Hostile(threading.Thread):
    """Sends every abuse in turn until stopped; counts what it sent."""

    def __init__(self, sink: LocalSink, token: str, work: Path) -> None:
        super().__init__(daemon=True)
        self.sink, self.token, self.work = sink, token, work
        self.stop = threading.Event()
        self.sent = 0
        self.errors = 0

    def run(self) -> None:
        folder = make_bundle(self.work / "hostile", "h-0", "hostile")
        zb = zstd_bomb(2 << 30)
        mb = mcap_bomb(256 << 20, claimed=64 * 1024)
        (self.work / "mb.mcap").write_bytes(mb)
        mb_info = sha256_file(self.work / "mb.mcap")
        url, tok = self.sink.url, self.token
        port = int(url.rsplit(":", 1)[1])
        n = 0
        while not self.stop.is_set():
            n += 1
            bid = f"h-{n}"
            try:
                upload_bundle_file(url, tok, bid, CLIP, (folder / CLIP).read_bytes())
                upload_bundle_file(url, tok, bid, SENSORS, zb, "zstd")
                upload_bundle_file(url, tok, bid, MANIFEST, manifest_of(folder, bundle_id=bid))
                upload_bundle_file(url, tok, f"m-{n}", CLIP, (folder / CLIP).read_bytes())
                upload_bundle_file(url, tok, f"m-{n}", SENSORS, mb)
                upload_bundle_file(
                    url,
                    tok,
                    f"m-{n}",
                    MANIFEST,
                    manifest_of(
                        folder,
                        bundle_id=f"m-{n}",
                        files__sensors_mcap__bytes=mb_info.bytes,
                        files__sensors_mcap__sha256=mb_info.sha256,
                    ),
                )
                upload_bundle_file(url, tok, f"n-{n}", MANIFEST, nested_json(100_000))
                httpx.post(
                    url + "/api/heartbeat",
                    content=json.dumps({"model_version": "x" * 5_000_000}).encode(),
                    headers={"Authorization": f"Bearer {tok}"},
                )
                for _ in range(50):  # a creation flood: the quota answers 429
                    httpx.post(
                        url + "/files/",
                        headers={**TUS, "Authorization": f"Bearer {tok}", "Upload-Length": "9"},
                    )
                self._stall_and_crawl(port, url, tok)
                self.sent += 1
            except (httpx.HTTPError, OSError):
                self.errors += 1

    def _stall_and_crawl(self, port: int, url: str, tok: str) -> None:
        r = httpx.post(
            url + "/files/", headers={**TUS, "Authorization": f"Bearer {tok}", "Upload-Length": "9"}
        )
        socks = []
        if r.status_code == 201:
            path = "/files/" + r.headers["Location"].rsplit("/", 1)[1]
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                (
                    f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                    f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTETS}\r\n"
                    "Content-Length: 9\r\n\r\n"
                ).encode()
            )
            socks.append(s)
        crawl = socket.create_connection(("127.0.0.1", port))
        crawl.sendall(b"GET /healthz HTTP/1.1\r\n")
        socks.append(crawl)
        self.stop.wait(0.5)
        for s in socks:
            s.close()


def _phase(ctx: BenchContext, devices: int, per_device: int, attack: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="capsight-abuse-"))
    sink = LocalSink(work / "sink")
    tokens = {f"honest-{i}": sink.add_device(f"honest-{i}") for i in range(devices)}
    hostile_token = sink.add_device("hostile")
    sink.start()
    hostile = Hostile(sink, hostile_token, work) if attack else None
    try:
        # The sink's resting peak, once its decoders are loaded: one honest bundle through it.
        _honest(sink, {"warm": sink.add_device("warm")}, work / "warm", 1)
        sink.wait_ingested()
        rest_kb = sink_rss_peak_kb(sink.pid)
        if hostile is not None:
            hostile.start()
            time.sleep(1.0)
        spent = _honest(sink, tokens, work / "carts", per_device)
        if hostile is not None:
            hostile.stop.set()
            hostile.join(30)
        sink.wait_ingested(300)
        admin = sink.add_device("bench-admin", admin=True)
        rows = httpx.get(
            sink.url + "/api/bundles",
            params={"status": "ok", "limit": "1000"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["bundles"]
        honest_ok = sum(1 for r in rows if str(r["device_id"]).startswith("honest-"))
        area = sink.data / "blobs" / "uploads"
        area_mb = sum(p.stat().st_size for p in area.iterdir()) / 2**20
        return {
            "seconds": spent,
            "honest_ok": honest_ok,
            "peak_mb": sink_rss_peak_kb(sink.pid) / 1024,
            "grown_mb": (sink_rss_peak_kb(sink.pid) - rest_kb) / 1024,
            "area_mb": area_mb,
            "attacks": hostile.sent if hostile else 0,
        }
    finally:
        if hostile is not None:
            hostile.stop.set()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


@benchmark("sink_abuse")
def bench_sink_abuse(ctx: BenchContext) -> BenchResult:
    devices, per_device = (3, 1) if ctx.quick else (20, 3)
    res = BenchResult(
        "sink_abuse",
        f"{devices} honest devices upload {per_device} real bundle{'s' * (per_device > 1)} "
        "each with the cart's "
        f"uploader at {CART_BPS / 1e6:g} Mbit/s each, without and then with a hostile device "
        "sending bombs, floods, stalled bodies and crawling request heads (fresh sinks, this run)",
    )
    calm = _phase(ctx, devices, per_device, attack=False)
    siege = _phase(ctx, devices, per_device, attack=True)
    total = devices * per_device
    res.metrics += [
        Metric(
            "honest bundles verified at the sink, under attack",
            siege["honest_ok"],
            "bundles",
            total,
            "bundles sent",
            "all",
            siege["honest_ok"] == total,
        ),
        Metric(
            "sink peak memory grown over its resting peak, under attack",
            siege["grown_mb"],
            "MB",
            calm["grown_mb"],
            "the same honest work without the attack",
            f"<= {MEMORY_BOUND_MB:g} MB",
            siege["grown_mb"] <= MEMORY_BOUND_MB,
        ),
        Metric(
            "upload area after the work, under attack",
            siege["area_mb"],
            "MB",
            calm["area_mb"],
            "without the attack",
            f"<= {UPLOAD_AREA_BOUND_MB:g} MB",
            siege["area_mb"] <= UPLOAD_AREA_BOUND_MB,
        ),
        Metric(
            "time for the honest uploads, under attack",
            siege["seconds"],
            "s",
            calm["seconds"],
            "without the attack",
            "<= 2x",
            siege["seconds"] <= 2 * calm["seconds"],
        ),
        Metric("rounds of abuse sent", siege["attacks"], "rounds"),
        Metric("honest bundles verified without the attack", calm["honest_ok"], "bundles"),
    ]
    res.notes.append(
        "each round of abuse: a zstd bomb sensor log (2 GiB in 65 KB), an MCAP chunk bomb "
        "(256 MiB in 8 KB), a manifest nested 100,000 deep, a 5 MB heartbeat, 50 creations at "
        "once, a PATCH whose body never comes, a request head that never ends"
    )
    return res
