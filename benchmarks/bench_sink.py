"""Sink benchmarks: one big upload (memory, and throughput beside baselines measured in the same
run: a read-and-discard handler on the sink's own server stack, and two upper bounds, a raw
socket receiving into a discarded buffer and the disk's write + fsync), and many devices
uploading bundles at once."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.plots import save_plot
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark
from capsight_edge.localsink import LocalSink, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


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


def _sink(data: Path, **where: Any) -> tuple[LocalSink, str]:
    """Our sink for a benchmark, with one device token. One benchmark device makes hundreds of
    uploads a minute (ours and the baseline's, on the same sink): the per-device creation and
    in-progress quotas, which exist against hostile carts, are lifted for it. ``where``:
    :class:`LocalSink`'s ``host`` and ``wrap``."""
    config = data.parent / f"{data.name}-sink.toml"
    config.write_text(
        "[quotas]\ncreates_per_minute = 1000000\nuploads_in_progress = 100000\n"
        f"bytes_in_progress = {1 << 40}\n"
    )
    sink = LocalSink(data, "--max-size", str(4 * 2**30), "--config", str(config), **where)
    token = sink.add_device("bench")
    return sink.start(), token


def _upload_once(url: str, auth: dict[str, str], total: int) -> float:
    r = httpx.post(url + "/files/", headers={**auth, "Upload-Length": str(total)})
    loc = r.headers["Location"]
    start = time.perf_counter()
    r = httpx.patch(
        loc,
        headers={
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(total),
        },
        content=_body(total),
        timeout=600,
    )
    spent = time.perf_counter() - start
    assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == total
    httpx.delete(loc, headers=auth)  # free the disk for the next trial
    return spent


def _ceiling_once(port: int, total: int) -> float:
    start = time.perf_counter()
    httpx.patch(
        f"http://127.0.0.1:{port}/x",
        headers={"Content-Length": str(total)},
        content=_body(total),
        timeout=600,
    )
    return time.perf_counter() - start


class RawReceiver:
    """The upper bound of receiving over loopback: a plain socket that reads one request's
    headers, then ``recv_into`` a reused 1 MiB buffer until Content-Length bytes arrived, and
    answers 204. No HTTP framework, no parsing of the body, nothing kept."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    got = conn.recv(65536)
                    if not got:
                        break
                    head += got
                header, _, rest = head.partition(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                left = length - len(rest)
                while left > 0:
                    n = conn.recv_into(view, min(left, CHUNK))
                    if not n:
                        break
                    left -= n
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@benchmark("sink_upload")
def bench_sink_upload(ctx: BenchContext) -> BenchResult:
    import statistics

    total = (64 if ctx.quick else 1024) * 2**20
    trials = 1 if ctx.quick else 3
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    sink, token = _sink(data)
    url = sink.url
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    port = free_port()
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
    raw = RawReceiver()
    sink_s, base_s, raw_s, disk_s = [], [], [], []
    block = os.urandom(CHUNK)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30)
        for _ in range(trials):  # interleaved, so all see the same machine
            sink_s.append(_upload_once(url, auth, total))
            base_s.append(_ceiling_once(port, total))
            raw_s.append(_ceiling_once(raw.port, total))
            start = time.perf_counter()  # the disk's own ceiling: write + fsync, no network
            with open(data / "disk-ceiling.bin", "wb") as fh:
                for _ in range(total // CHUNK):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            disk_s.append(time.perf_counter() - start)
            (data / "disk-ceiling.bin").unlink()
        rss = _peak_rss_mb(sink.pid)
    finally:
        sink.stop()
        raw.close()
        ceiling.terminate()
        ceiling.wait(10)
    mb = total / 2**20
    ours, base, rawr, disk = (mb / statistics.median(x) for x in (sink_s, base_s, raw_s, disk_s))
    res = BenchResult(
        "sink_upload",
        f"one {mb:.0f} MiB upload in one PATCH over loopback, "
        f"stored with fsync; median of {trials} interleaved trials",
    )
    res.metrics += [
        Metric(
            "throughput",
            ours,
            "MiB/s",
            base,
            "read-and-discard ASGI handler on uvicorn (the sink's own server stack)",
            ">= 0.7x",
            ours >= 0.7 * base,
        ),
        Metric(
            "throughput vs the loopback upper bound",
            ours,
            "MiB/s",
            rawr,
            "raw socket recv_into a discarded buffer, same client",
        ),
        Metric(
            "throughput vs the disk's upper bound",
            ours,
            "MiB/s",
            disk,
            "write + fsync of the same bytes, no network",
        ),
        Metric(
            "throughput vs receiving then storing, one after the other",
            ours,
            "MiB/s",
            1 / (1 / rawr + 1 / disk),
            "raw receive + disk write, serial",
        ),
        Metric("sink peak RSS", rss, "MiB", target="< 150", met=rss < 150),
    ]
    res.notes.append(
        "trials (s): sink "
        + ", ".join(f"{x:.2f}" for x in sink_s)
        + "; read-and-discard ASGI "
        + ", ".join(f"{x:.2f}" for x in base_s)
        + "; raw socket "
        + ", ".join(f"{x:.2f}" for x in raw_s)
        + "; disk "
        + ", ".join(f"{x:.2f}" for x in disk_s)
    )
    return res


@benchmark("sink_fleet")
def bench_sink_fleet(ctx: BenchContext) -> BenchResult:
    devices, size = (20, 1 * 2**20) if ctx.quick else (100, 5 * 2**20)
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    sink, token = _sink(data)
    url = sink.url
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
    sweep: list[tuple[int, float]] = []  # (devices at once, MiB/s), the same work at each
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(devices, 32)) as pool:
            ok = list(pool.map(one, range(devices)))
        spent = time.perf_counter() - start
        files = 16 if ctx.quick else 32
        for k, at_once in enumerate((1, 2, 4, 8, 16, 32)):
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=at_once) as pool:
                first = devices + k * files
                ok_sweep = list(pool.map(one, range(first, first + files)))
            assert all(ok_sweep), f"{at_once} at once: an upload was not byte-identical"
            sweep.append((at_once, files * size / 2**20 / (time.perf_counter() - t0)))
    finally:
        sink.stop()
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
    res.notes.append(
        "throughput against devices uploading at once, the same files at each count: "
        + ", ".join(f"{k}: {v:.0f} MiB/s" for k, v in sweep)
    )

    def draw(ax: Any) -> None:
        ax.plot([k for k, _ in sweep], [v for _, v in sweep], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices uploading at once (threads of one client process)")
        ax.set_ylabel("aggregate MiB/s")
        ax.set_ylim(bottom=0)
        ax.set_title(
            f"sink_fleet: {size / 2**20:g} MiB files, 1 MiB checksummed chunks", fontsize=9
        )

    res.plots.append(save_plot(ctx, "sink_fleet_concurrency", draw))
    return res


@benchmark("sink_kill_resume")
def bench_sink_kill_resume(ctx: BenchContext) -> BenchResult:
    import threading

    total = (32 if ctx.quick else 256) * 2**20
    rounds = 2 if ctx.quick else 5
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    sink, token = _sink(data)
    url = sink.url
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    source = os.urandom(total)
    loc = httpx.post(url + "/files/", headers={**auth, "Upload-Length": str(total)}).headers[
        "Location"
    ]
    kills, identical_prefix = 0, True

    def slow(offset: int) -> Iterator[bytes]:
        for i in range(offset, total, CHUNK):
            time.sleep(0.01)
            yield source[i : i + CHUNK]

    try:
        for _ in range(rounds):
            offset = int(httpx.head(loc, headers=auth).headers["Upload-Offset"])
            t = threading.Thread(target=lambda o=offset: _quiet_patch(loc, auth, o, slow(o)))
            t.start()
            time.sleep(0.4)
            sink.kill()  # SIGKILL, mid-body
            kills += 1
            t.join(30)
            stored = (data / "blobs" / "uploads" / loc.rsplit("/", 1)[1]).read_bytes()
            identical_prefix &= stored == source[: len(stored)]
            sink.start()  # the same port
        offset = int(httpx.head(loc, headers=auth).headers["Upload-Offset"])
        httpx.patch(
            loc,
            headers={
                **auth,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            content=source[offset:],
            timeout=120,
        )
        final = (data / "blobs" / "uploads" / loc.rsplit("/", 1)[1]).read_bytes()
    finally:
        sink.stop()
    same = final == source
    res = BenchResult(
        "sink_kill_resume",
        f"a {total / 2**20:.0f} MiB upload, the sink "
        f"SIGKILLed mid-body {rounds} times, restarted, resumed from HEAD",
    )
    res.metrics += [
        Metric("kills", kills, "kills"),
        Metric(
            "stored bytes always a prefix of the source",
            int(identical_prefix),
            "yes=1",
            target="1",
            met=identical_prefix,
        ),
        Metric("final file byte-identical", int(same), "yes=1", target="1", met=same),
    ]
    return res


def _quiet_patch(loc: str, auth: dict[str, str], offset: int, body: Iterator[bytes]) -> None:
    # The sink is killed under this request: that is the point.
    with contextlib.suppress(httpx.HTTPError):
        httpx.patch(
            loc,
            headers={
                **auth,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            content=body,
            timeout=60,
        )
