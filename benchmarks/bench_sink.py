"""Sink benchmarks: one big upload (memory and throughput against a loopback ceiling measured in
the same run), and many devices uploading bundles at once."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _body(total: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield block[:n]
        sent += n


def _sink(data: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_sink.cli",
            "device",
            "add",
            "bench",
            "--data",
            str(data),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    token = json.loads(res.stdout)["token"]
    port = _port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud_sink.cli",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--max-size",
            str(4 * 2**30),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/healthz")
    return proc, url, token


@benchmark("sink_upload")
def bench_sink_upload(ctx: BenchContext) -> BenchResult:
    total = (64 if ctx.quick else 1024) * 2**20
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    proc, url, token = _sink(data)
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    try:
        r = httpx.post(url + "/files/", headers={**auth, "Upload-Length": str(total)})
        loc = r.headers["Location"]
        start = time.perf_counter()
        r = httpx.patch(
            loc,
            headers={
                **auth,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=_body(total),
            timeout=600,
        )
        spent = time.perf_counter() - start
        assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == total
        rss = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    port = _port()
    ceiling = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.ceiling_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/")
        start = time.perf_counter()
        httpx.patch(f"http://127.0.0.1:{port}/x", content=_body(total), timeout=600)
        base = time.perf_counter() - start
    finally:
        ceiling.terminate()
        ceiling.wait(10)
    # The disk's own ceiling for the same bytes, written and fsync'd like the sink does.
    block = os.urandom(CHUNK)
    start = time.perf_counter()
    with open(data / "disk-ceiling.bin", "wb") as fh:
        for _ in range(total // CHUNK):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    disk = time.perf_counter() - start
    (data / "disk-ceiling.bin").unlink()
    mb = total / 2**20
    res = BenchResult(
        "sink_upload", f"one {mb:.0f} MiB upload in one PATCH over loopback, stored with fsync"
    )
    res.metrics += [
        Metric(
            "throughput",
            mb / spent,
            "MiB/s",
            mb / base,
            "read-and-discard ASGI handler",
            ">= 0.7x",
            (mb / spent) >= 0.7 * (mb / base),
        ),
        Metric(
            "throughput vs writing the same bytes straight to this disk",
            mb / spent,
            "MiB/s",
            mb / disk,
            "write + fsync, no network",
        ),
        Metric("sink peak RSS", rss, "MiB", target="< 150", met=rss < 150),
    ]
    return res


@benchmark("sink_fleet")
def bench_sink_fleet(ctx: BenchContext) -> BenchResult:
    devices, size = (20, 1 * 2**20) if ctx.quick else (100, 5 * 2**20)
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    proc, url, token = _sink(data)
    payloads = [os.urandom(size) for _ in range(4)]

    def one(i: int) -> bool:
        body = payloads[i % 4]
        meta = f"filename {base64.b64encode(f'dev{i}.bin'.encode()).decode()}"
        h = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
        with httpx.Client(timeout=120) as c:
            r = c.post(
                url + "/files/", headers={**h, "Upload-Length": str(size), "Upload-Metadata": meta}
            )
            loc = r.headers["Location"]
            off = 0
            while off < size:
                part = body[off : off + CHUNK]
                digest = base64.b64encode(hashlib.sha256(part).digest()).decode()
                r = c.patch(
                    loc,
                    headers={
                        **h,
                        "Upload-Offset": str(off),
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": f"sha256 {digest}",
                    },
                    content=part,
                )
                off = int(r.headers["Upload-Offset"])
        stored = data / "blobs" / "uploads" / loc.rsplit("/", 1)[1]
        return stored.read_bytes() == body

    start = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(devices, 32)) as pool:
            ok = list(pool.map(one, range(devices)))
    finally:
        proc.terminate()
        proc.wait(10)
    spent = time.perf_counter() - start
    res = BenchResult(
        "sink_fleet",
        f"{devices} simulated devices each uploading a "
        f"{size / 2**20:.0f} MiB bundle file at once, 1 MiB checksummed chunks",
    )
    res.metrics += [
        Metric(
            "uploads complete and byte-identical",
            sum(ok),
            "uploads",
            target=str(devices),
            met=all(ok),
        ),
        Metric("aggregate throughput", devices * size / 2**20 / spent, "MiB/s"),
    ]
    return res
