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
from collections.abc import Callable, Iterator
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


def _sink(data: Path, sweep: str = "", **where: Any) -> tuple[LocalSink, str]:
    """Our sink for a benchmark, with one device token. One benchmark device makes hundreds of
    uploads a minute (ours and the baseline's, on the same sink): the per-device creation and
    in-progress quotas, which exist against hostile carts, are lifted for it. ``sweep``: lines
    of the profile's ``[sweep]`` section; ``where``: :class:`LocalSink`'s ``host`` and
    ``wrap``."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / "bench-sink.toml"  # inside: it goes with the data folder
    config.write_text(
        "[quotas]\ncreates_per_minute = 1000000\nuploads_in_progress = 100000\n"
        f"bytes_in_progress = {1 << 40}\n" + (f"[sweep]\n{sweep}\n" if sweep else "")
    )
    sink = LocalSink(data, "--max-size", str(4 * 2**30), "--config", str(config), **where)
    token = sink.add_device("bench")
    return sink.start(), token


def _upload_once(url: str, auth: dict[str, str], total: int, uploads: Path) -> float:
    """One upload of ``total`` bytes in one PATCH, timed from its first byte to the sink's
    answer (the bytes fsynced). Then it is terminated, and this waits until the sink's sweep has
    removed its file from ``uploads``: each trial starts on the same disk."""
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
    httpx.delete(loc, headers=auth)
    data = uploads / loc.rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    while data.exists():  # no bundle: the sweep removes it after keep_corrupt_hours (0 here)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sink's sweep left {data} on the disk for 60 s")
        time.sleep(0.05)
    return spent


def _disk_once(folder: Path, total: int) -> tuple[float, bool]:
    """The disk's own bound: the same bytes into the sink's upload folder, in writes of the
    sink's size (``WRITE_BLOCK``), one fsync at the end; then removed. Returns the seconds and
    whether the writes bypassed the page cache.

    The writes bypass the page cache (``O_DIRECT``) where the file system allows it: a burst of
    buffered writes first waits for a GiB of page cache, and on a VM that hands free memory back
    to its host that wait measured the memory's state, not the disk (in a full run at 26f8fee
    it put this "bound" below the sink in every trial). Where ``O_DIRECT`` is refused (tmpfs),
    it writes through the page cache, and says so."""
    import mmap

    from cloud_sink.tus import WRITE_BLOCK

    block = mmap.mmap(-1, WRITE_BLOCK)  # page-aligned, as O_DIRECT needs
    block.write(os.urandom(WRITE_BLOCK))
    path = folder / ".disk-bound.bin"

    def write(extra: int) -> float:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | extra, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(total // WRITE_BLOCK):
                if os.write(fd, block) != WRITE_BLOCK:
                    raise OSError("a short write")
            os.fsync(fd)
            return time.perf_counter() - start
        finally:
            os.close(fd)
            path.unlink()

    try:
        try:
            spent, direct = write(getattr(os, "O_DIRECT", 0)), hasattr(os, "O_DIRECT")
        except OSError:  # refused at the open or at the first write (EINVAL)
            spent, direct = write(0), False
    finally:
        block.close()
    return spent, direct


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
    trials = 1 if ctx.quick else 5
    data = Path(tempfile.mkdtemp(prefix="capsight-sink-"))
    # A finished upload that is no bundle is kept for keep_corrupt_hours: none here, so each
    # trial's upload leaves the disk as the next begins.
    sink, token = _sink(data, sweep="interval_s = 0.1\nkeep_corrupt_hours = 0")
    url = sink.url
    uploads = data / "blobs" / "uploads"
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
    sink_s, base_s, raw_s = [], [], []
    disk_runs: list[tuple[float, bool]] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30, alive=lambda: ceiling.poll() is None)
        for trial in range(trials):  # interleaved, so all see the same machine
            # The two that write take turns going first, each after a sync, on the same disk
            # (each one's file is gone before the other starts).
            writers: list[Callable[[], None]] = [
                lambda: sink_s.append(_upload_once(url, auth, total, uploads)),
                lambda: disk_runs.append(_disk_once(uploads, total)),
            ]
            for write in writers if trial % 2 == 0 else writers[::-1]:
                os.sync()
                write()
            base_s.append(_ceiling_once(port, total))
            raw_s.append(_ceiling_once(raw.port, total))
        rss = _peak_rss_mb(sink.pid)
    finally:
        sink.stop()
        raw.close()
        ceiling.terminate()
        ceiling.wait(10)
    disk_s = [t for t, _ in disk_runs]
    direct = all(d for _, d in disk_runs)
    mb = total / 2**20
    ours, base, rawr, disk = (mb / statistics.median(x) for x in (sink_s, base_s, raw_s, disk_s))
    res = BenchResult(
        "sink_upload",
        f"one {mb:.0f} MiB upload in one PATCH over loopback, "
        f"stored with fsync; median of {trials} interleaved trials (the sink and the disk's own "
        "write take turns going first, on the same folder, each trial's file removed before the "
        "next write)",
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
            "write + fsync of the same bytes, in the sink's write size and folder, no network, "
            + ("past the page cache (O_DIRECT)" if direct else "through the page cache"),
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
    if not direct:
        res.notes.append(
            "this file system refuses O_DIRECT: the disk's bound went through the page cache, "
            "so it also measures how fast the page cache takes a GiB"
        )
    if ours > disk:
        res.notes.append(
            "the sink beat the disk's bound in this run: the bound measured something other than "
            "the disk here, and the comparison says nothing"
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


def proc_cpu_s(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of a live process; ``reaped``: with its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_s(data: Path) -> float:
    """The PostgreSQL server's CPU seconds: its postmaster (with its reaped backends) and every
    live backend."""
    try:
        master = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = proc_cpu_s(master, reaped=True)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == master:
                total += proc_cpu_s(int(proc.name))
    return total


@benchmark("sink_scaleout")
def bench_sink_scaleout(ctx: BenchContext) -> BenchResult:
    """The same devices and files through the embedded sink (SQLite), one instance on
    PostgreSQL, and two instances sharing that PostgreSQL and one data folder, each request of
    a device going to the next instance (round robin). This machine's figures vary by half
    from one trial to the next (other tenants): the three set-ups run in turn, several
    rounds, and each is reported by its median round."""
    import resource
    import statistics

    from cloud_sink.localpg import LocalPostgres, pg_bin

    devices, size = (20, 1 * 2**20) if ctx.quick else (100, 5 * 2**20)
    res = BenchResult(
        "sink_scaleout",
        f"{devices} devices each uploading one {size / 2**20:.0f} MiB file at once in 1 MiB "
        "sha256-checksummed chunks: the embedded sink (SQLite), one instance on PostgreSQL, two "
        "instances on the same PostgreSQL and data folder (every request to the next instance)",
    )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        res.notes.append("skipped: psycopg is not installed (pip install capsight[sink])")
        return res
    if pg_bin() is None:
        res.notes.append("skipped: no PostgreSQL server programs (initdb) on this machine")
        return res
    payloads = [os.urandom(size) for _ in range(4)]
    digests = [  # the client's own hashing is not what is measured: done once, up front
        [
            base64.b64encode(hashlib.sha256(p[o : o + CHUNK]).digest()).decode()
            for o in range(0, size, CHUNK)
        ]
        for p in payloads
    ]
    root = Path(tempfile.mkdtemp(prefix="capsight-scaleout-"))
    config = root / "sink.toml"
    config.write_text(
        "[quotas]\ncreates_per_minute = 1000000\nuploads_in_progress = 100000\n"
        f"bytes_in_progress = {1 << 40}\n"
    )
    rounds = 1 if ctx.quick else 3
    trials: dict[str, list[dict[str, float]]] = {}

    def run(label: str, sinks: list[LocalSink], token: str, pg: LocalPostgres | None) -> None:
        urls = [s.url for s in sinks]
        data = sinks[0].data

        def one(i: int) -> bool:
            body, sums = payloads[i % 4], digests[i % 4]
            h = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
            meta = f"filename {base64.b64encode(f'dev{i}.bin'.encode()).decode()}"
            n = i  # this device's next request goes to instance n % len(urls)
            with httpx.Client(timeout=120) as c:
                r = c.post(
                    urls[n % len(urls)] + "/files/",
                    headers={**h, "Upload-Length": str(size), "Upload-Metadata": meta},
                )
                path = r.headers["Location"].split("/files/", 1)[1]
                off = 0
                while off < size:
                    n += 1
                    r = c.patch(
                        urls[n % len(urls)] + "/files/" + path,
                        headers={
                            **h,
                            "Upload-Offset": str(off),
                            "Content-Type": "application/offset+octet-stream",
                            "Upload-Checksum": f"sha256 {sums[off // CHUNK]}",
                        },
                        content=body[off : off + CHUNK],
                    )
                    if r.status_code != 204:
                        return False
                    off = int(r.headers["Upload-Offset"])
            return (data / "blobs" / "uploads" / path).read_bytes() == body

        cpu0 = [proc_cpu_s(s.pid) for s in sinks]
        pg0 = _postgres_cpu_s(pg.data) if pg else 0.0
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(devices, 32)) as pool:
            ok = list(pool.map(one, range(devices)))
        wall = time.perf_counter() - start
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        trials.setdefault(label, []).append(
            {
                "mib_s": devices * size / 2**20 / wall,
                "ok": sum(ok),
                "sink_cpu_s": sum(proc_cpu_s(s.pid) - c for s, c in zip(sinks, cpu0, strict=True)),
                "db_cpu_s": (_postgres_cpu_s(pg.data) - pg0) if pg else 0.0,
                "client_cpu_s": (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime),
                "wall_s": wall,
            }
        )

    def sink(data: Path, db: str = "", instance: str = "") -> LocalSink:
        extra = ("--instance", instance) if instance else ()
        return LocalSink(data, "--config", str(config), *extra, db=db)

    started: list[LocalSink] = []
    try:
        with LocalPostgres() as pg:
            setups: list[tuple[str, list[LocalSink], str, LocalPostgres | None]] = []
            lite = sink(root / "embedded")
            setups.append(("embedded (SQLite)", [lite], lite.add_device("bench"), None))
            for n in (1, 2):
                url = pg.database()
                sinks = [sink(root / f"pg{n}", url, f"i{k}") for k in range(n)]
                label = f"{n} instance{'s' if n > 1 else ''} (PostgreSQL)"
                setups.append((label, sinks, sinks[0].add_device("bench"), pg))
            for _, sinks, _, _ in setups:
                for s in sinks:
                    started.append(s.start())
            for _ in range(rounds):  # in turn: a slow spell of the machine hits all three
                for label, sinks, token, server in setups:
                    run(label, sinks, token, server)
    finally:
        for s in started:
            s.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    figures = {
        label: sorted(ts, key=lambda f: f["mib_s"])[len(ts) // 2] for label, ts in trials.items()
    }
    lite_f, one_f, two_f = (figures[k] for k in figures)
    labels = list(figures)
    res.metrics += [
        Metric(
            "uploads complete and byte-identical, all three set-ups",
            sum(f["ok"] for f in figures.values()),
            "uploads",
            target=str(3 * devices),
            met=all(f["ok"] == devices for f in figures.values()),
        ),
        Metric(
            "throughput, one instance on PostgreSQL",
            one_f["mib_s"],
            "MiB/s",
            baseline=lite_f["mib_s"],
            baseline_name=labels[0],
        ),
        Metric(
            "throughput, two instances on PostgreSQL",
            two_f["mib_s"],
            "MiB/s",
            baseline=one_f["mib_s"],
            baseline_name=labels[1],
            target=">= 1.6x one instance",
            met=two_f["mib_s"] >= 1.6 * one_f["mib_s"],
        ),
    ]
    cores = os.cpu_count() or 1
    if rounds > 1:
        spread = "; ".join(
            f"{label}: " + ", ".join(f"{t['mib_s']:.0f}" for t in trials[label]) for label in trials
        )
        res.notes.append(f"MiB/s of each round, median reported: {spread}")
        ratios = [
            b["mib_s"] / a["mib_s"]
            for a, b in zip(trials[labels[1]], trials[labels[2]], strict=True)
        ]
        res.notes.append(
            "two instances against one, round by round: "
            + ", ".join(f"{r:.2f}x" for r in ratios)
            + f" (median {statistics.median(ratios):.2f}x)"
        )
    for label, f in figures.items():
        busy = f["sink_cpu_s"] + f["db_cpu_s"] + f["client_cpu_s"]
        res.notes.append(
            f"{label}: {f['mib_s']:.0f} MiB/s in {f['wall_s']:.1f} s; CPU seconds: sink "
            f"{f['sink_cpu_s']:.1f}, PostgreSQL {f['db_cpu_s']:.1f}, the client's "
            f"{f['client_cpu_s']:.1f}; {busy / (cores * f['wall_s']):.0%} of {cores} cores busy"
        )
    res.notes.append(
        "the client (this process's threads, chunk digests computed up front) runs on the same "
        "machine as the sinks and the database: where the cores are busy, that, not the number "
        "of instances, bounds the figure"
    )

    def draw(ax: Any) -> None:
        ax.bar(range(3), [f["mib_s"] for f in figures.values()])
        ax.set_xticks(range(3), [k.replace(" (", "\n(") for k in figures], fontsize=8)
        ax.set_ylabel("aggregate MiB/s")
        ax.set_title(
            f"sink_scaleout: {devices} devices at once, 1 MiB checksummed chunks", fontsize=9
        )

    res.plots.append(save_plot(ctx, "sink_scaleout", draw))
    return res


def _moto(port: int) -> subprocess.Popen[bytes] | None:
    """moto's S3 server on 127.0.0.1 (None where moto[server] is not installed)."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        return None
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_http(f"http://127.0.0.1:{port}", 30, alive=lambda: proc.poll() is None):
        proc.kill()
        return None
    return proc


def _patch_all(
    url: str, token: str, size: int, chunk: int, block: Callable[[int, int], bytes]
) -> tuple[str, str]:
    """One upload of ``size`` bytes in checksummed PATCHes of ``chunk`` (``block(offset, n)``
    gives the bytes); returns its id and the sha256 of what was sent."""
    h = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    whole = hashlib.sha256()
    meta = f"filename {base64.b64encode(b'big.bin').decode()}"
    with httpx.Client(timeout=600) as c:
        r = c.post(
            url + "/files/", headers={**h, "Upload-Length": str(size), "Upload-Metadata": meta}
        )
        path = r.headers["Location"].split("/files/", 1)[1]
        off = 0
        while off < size:
            body = block(off, min(chunk, size - off))
            whole.update(body)
            r = c.patch(
                url + "/files/" + path,
                headers={
                    **h,
                    "Upload-Offset": str(off),
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Checksum": "sha256 "
                    + base64.b64encode(hashlib.sha256(body).digest()).decode(),
                },
                content=body,
            )
            if r.status_code != 204:
                raise RuntimeError(f"PATCH at {off}: {r.status_code} {r.text[:200]}")
            off = int(r.headers["Upload-Offset"])
    return path, whole.hexdigest()


@benchmark("sink_staging")
def bench_sink_staging(ctx: BenchContext) -> BenchResult:
    """Where uploads in progress live when several instances serve one URL: a shared folder
    (``--staging folder``) or S3 multipart uploads (``--staging s3``, moto's S3 server on
    127.0.0.1 behind a proxy that counts the bytes sent to it). The same devices and 1 MiB
    checksummed chunks through one instance on PostgreSQL each way; then one large upload
    each way, the sink's peak RSS for each."""
    import boto3

    from cloud_sink.localpg import LocalPostgres, pg_bin

    devices, size = (6, 2 * 2**20) if ctx.quick else (20, 10 * 2**20)
    big, big_chunk = (64 * 2**20, 16 * 2**20) if ctx.quick else (2**30, 16 * 2**20)
    res = BenchResult(
        "sink_staging",
        f"uploads in progress in a folder vs in S3 (moto on 127.0.0.1): {devices} devices each "
        f"uploading {size / 2**20:.0f} MiB at once in 1 MiB sha256-checksummed chunks, one "
        f"instance on PostgreSQL; then one {big / 2**20:.0f} MiB upload in "
        f"{big_chunk / 2**20:.0f} MiB checksummed chunks, the sink's peak RSS",
    )
    if pg_bin() is None:
        res.notes.append("skipped: no PostgreSQL server programs (initdb) on this machine")
        return res
    moto_port = free_port()
    moto = _moto(moto_port)
    if moto is None:
        res.notes.append("skipped: moto's S3 server (pip install 'moto[server]') is not here")
        return res
    from capsight_edge.localsink import TcpProxy

    proxy = TcpProxy([("127.0.0.1", moto_port)])
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    os.environ.update({**env, "AWS_DEFAULT_REGION": "us-east-1"})
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
    pool = os.urandom(64 * 2**20)

    def block(off: int, n: int) -> bytes:
        start = off % len(pool)
        out = pool[start : start + n]
        return out if len(out) == n else out + pool[: n - len(out)]

    root = Path(tempfile.mkdtemp(prefix="capsight-staging-"))
    config = root / "sink.toml"
    config.write_text(
        "[quotas]\ncreates_per_minute = 1000000\nuploads_in_progress = 100000\n"
        f"bytes_in_progress = {1 << 40}\n"
    )
    figures: dict[str, dict[str, float]] = {}
    try:
        with LocalPostgres() as pg:
            for way in ("folder", "s3"):
                bucket = f"bench-{way}"
                s3.create_bucket(Bucket=bucket)
                extra = ("--s3-bucket", bucket, "--s3-endpoint", proxy.url, "--staging", way)
                sink = LocalSink(
                    root / way,
                    "--config",
                    str(config),
                    "--max-size",
                    str(4 * 2**30),
                    "--ingest-workers",
                    "0",
                    *extra,
                    db=pg.database(),
                )
                token = sink.add_device("bench")
                sink.start()
                try:
                    sent0, cpu0, moto0 = proxy.bytes_up, proc_cpu_s(sink.pid), proc_cpu_s(moto.pid)
                    start = time.perf_counter()
                    url = sink.url

                    def one(i: int, url: str = url, token: str = token) -> tuple[str, str]:
                        return _patch_all(url, token, size, CHUNK, lambda o, n: block(o + i, n))

                    with concurrent.futures.ThreadPoolExecutor(max_workers=devices) as ex:
                        done = list(ex.map(one, range(devices)))
                    wall = time.perf_counter() - start
                    f = figures[way] = {
                        "mib_s": devices * size / 2**20 / wall,
                        "sink_cpu_s": proc_cpu_s(sink.pid) - cpu0,
                        "s3_cpu_s": proc_cpu_s(moto.pid) - moto0,
                        "to_bucket": (proxy.bytes_up - sent0) / (devices * size),
                        "ok": float(len(done)),
                    }
                    # the large upload: the sink's peak RSS over it (a fresh process)
                    sink.stop()
                    sink.start()
                    rss0 = _peak_rss_mb(sink.pid)
                    start = time.perf_counter()
                    path, digest = _patch_all(sink.url, token, big, big_chunk, block)
                    f["big_s"] = time.perf_counter() - start
                    f["rss_mb"] = _peak_rss_mb(sink.pid)
                    f["rss_idle_mb"] = rss0
                    if way == "s3":
                        body = s3.get_object(Bucket=bucket, Key=f"uploads/{path}")["Body"]
                        got = hashlib.sha256()
                        for piece in body.iter_chunks(8 * 2**20):
                            got.update(piece)
                    else:
                        got = hashlib.sha256()
                        with open(root / way / "blobs" / "uploads" / path, "rb") as fh:
                            while piece := fh.read(8 * 2**20):
                                got.update(piece)
                    f["big_identical"] = float(got.hexdigest() == digest)
                finally:
                    sink.stop()
    finally:
        proxy.close()
        moto.terminate()
        moto.wait(30)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    folder, staged = figures["folder"], figures["s3"]
    res.metrics += [
        Metric(
            "throughput with uploads in progress in S3",
            staged["mib_s"],
            "MiB/s",
            baseline=folder["mib_s"],
            baseline_name="a folder on local disk",
        ),
        Metric(
            "sink CPU seconds for the same uploads, S3 staging",
            staged["sink_cpu_s"],
            "s",
            baseline=folder["sink_cpu_s"],
            baseline_name="a folder on local disk",
        ),
        Metric(
            "bytes sent to the bucket per byte uploaded, S3 staging (1 MiB chunks)",
            staged["to_bucket"],
            "x",
        ),
        Metric(
            f"sink peak RSS over a {big / 2**20:.0f} MiB upload staged in S3",
            staged["rss_mb"],
            "MB",
            baseline=folder["rss_mb"],
            baseline_name="the same upload into a folder",
            target="< 150 MB",
            met=staged["rss_mb"] < 150,
        ),
        Metric(
            "large upload byte-identical, both ways",
            folder["big_identical"] + staged["big_identical"],
            "uploads",
            target="2",
            met=folder["big_identical"] + staged["big_identical"] == 2,
        ),
    ]
    for way, f in figures.items():
        res.notes.append(
            f"{way}: {f['mib_s']:.0f} MiB/s; sink CPU {f['sink_cpu_s']:.1f} s, S3 server CPU "
            f"{f['s3_cpu_s']:.1f} s; {f['to_bucket']:.2f} bytes to the bucket per byte "
            f"(bundles are not ingested here: --ingest-workers 0); large upload "
            f"{big / 2**20 / f['big_s']:.0f} MiB/s, peak RSS {f['rss_mb']:.0f} MB "
            f"({f['rss_idle_mb']:.0f} MB at start)"
        )
    res.notes.append(
        "moto keeps the bucket in its own memory on this machine: a real S3 is slower per "
        "request and takes none of these cores"
    )

    def draw(ax: Any) -> None:
        ax.bar(range(2), [folder["mib_s"], staged["mib_s"]])
        ax.set_xticks(range(2), ["folder", "S3 multipart\n(moto)"], fontsize=8)
        ax.set_ylabel("aggregate MiB/s")
        ax.set_title(f"sink_staging: {devices} devices, 1 MiB checksummed chunks", fontsize=9)

    res.plots.append(save_plot(ctx, "sink_staging", draw))
    return res
