"""Uploader benchmarks, side by side in one run, against our sink on 127.0.0.1:

- rate: the achieved rate on the wire (bytes counted by a pass-through proxy) over one window at
  caps of 1, 8 and 40 Mbit/s, two uploads in flight sharing the cap;
- interruptions: the connection reset every 2 MB; every file must arrive byte-identical and each
  interruption may cost at most one chunk;
- throughput: uncapped, our uploader against tuspy on the same files and server, in pairs of
  trials taken back to back; the targets on the median of the pairs' ratios.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_sink import _sink
from benchmarks.bundles import seal_bundle
from benchmarks.crash_harness import make_bundle
from benchmarks.faultnet import CuttingProxy
from benchmarks.plots import save_plot
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, sha256_file
from capsight_edge.journal.journal import Journal
from capsight_edge.localsink import LocalSink
from capsight_edge.uploader.service import UploaderThread
from capsight_edge.uploader.shaping import UploadSchedule
from capsight_edge.uploader.status import ENDPOINT_KEY, RATE_KEY
from capsight_edge.uploader.uploader import Uploader
from cloud_sink.db import SinkDB

MB = 1_000_000


def payload_bundles(journal: Journal, data: Path, prefix: str, n: int, clip_bytes: int) -> int:
    """``n`` sealed bundles whose clip is ``clip_bytes`` of random bytes (fast to make; the sink
    marks them corrupt as videos after checking their sha256, which is all these runs need).
    Returns the bytes on disk."""
    total = 0
    for i in range(n):
        bundle_id = f"{prefix}-{i:03d}"
        m = make_bundle(data, bundle_id, priority=5, size=clip_bytes, device="bench")
        journal.add_recording(bundle_id, priority=5, rule=m.trigger.rule)
        journal.mark_sealed(bundle_id, {k: asdict(v) for k, v in m.files.items()})
        total += sum(p.stat().st_size for p in (data / "bundles" / bundle_id).iterdir())
    return total


def _rate_window(
    url: str, port: int, token: str, rate_bps: int, window_s: float, settle_s: float = 3.0
) -> tuple[float, list[tuple[float, float]]]:
    """The achieved rate over the window, and (seconds into the window, bit/s over the last
    half second) every half second through it."""
    work = Path(tempfile.mkdtemp(prefix="capsight-rate-"))
    journal = Journal(work / "journal.db")
    need = int(rate_bps / 8 * (window_s + 4) * 1.3)
    payload_bundles(journal, work, f"rate{rate_bps}", 8, max(256 * 1024, need // 8))
    proxy = CuttingProxy(port).start()
    up = Uploader(
        journal,
        work,
        sink_url=f"http://127.0.0.1:{proxy.port}",
        token=token,
        schedule=UploadSchedule(rate_bps),
        concurrency=2,
        heartbeat_s=0,
    )
    runner = UploaderThread(up).start()
    try:
        time.sleep(settle_s)  # past the first chunk's creation: measure the steady state
        b0, t0 = proxy.upstream_bytes, time.monotonic()
        series: list[tuple[float, float]] = []
        last_b, last_t = b0, t0
        while (now := time.monotonic()) < t0 + window_s:
            time.sleep(min(0.5, t0 + window_s - now))
            b, t = proxy.upstream_bytes, time.monotonic()
            series.append((t - t0, (b - last_b) * 8 / max(1e-6, t - last_t)))
            last_b, last_t = b, t
        b1, t1 = proxy.upstream_bytes, time.monotonic()
    finally:
        runner.stop()
        proxy.stop()
        journal.close()
        shutil.rmtree(work, ignore_errors=True)
    return (b1 - b0) * 8 / (t1 - t0), series


def _interrupted(
    sink: LocalSink, token: str, quick: bool, *, device: str = "bench", cut_every: int = 2 * MB
) -> dict[str, float]:
    """Real bundles through a proxy that resets both sockets every ``cut_every`` client bytes
    (0: never). ``client_bytes`` is everything the uploader sent, headers, re-sent chunks and
    whole-file restarts included."""
    port, data_dir = sink.port, sink.data
    work = Path(tempfile.mkdtemp(prefix="capsight-cut-"))
    journal = Journal(work / "journal.db")
    n = 2 if quick else 6
    for i in range(n):  # real bundles: libx264 clips of noise, about 4 MB each
        seal_bundle(journal, work, f"cut-{i}", device=device, noise_frames=100)
    total = sum(f.stat().st_size for f in (work / "bundles").rglob("*") if f.is_file())
    chunk = 1 << 20
    proxy = CuttingProxy(port, cut_every=cut_every).start()
    up = Uploader(
        journal,
        work,
        sink_url=f"http://127.0.0.1:{proxy.port}",
        token=token,
        uncapped=True,
        chunk_bytes=chunk,
        heartbeat_s=0,
    )
    try:
        stats = asyncio.run(up.run(until_idle=True))
    finally:
        proxy.stop()
    sink.wait_ingested()  # the sink files bundles in the background
    identical = checked = 0
    for i in range(n):
        for f in (work / "bundles" / f"cut-{i}").iterdir():
            stored = data_dir / "blobs" / "store" / "bundles" / device / f"cut-{i}" / f.name
            checked += 1
            if stored.exists() and sha256_file(stored) == sha256_file(f):
                identical += 1
    journal.close()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "bytes": total,
        "client_bytes": proxy.client_bytes,
        "cuts": proxy.cuts,
        "restarts": stats.restarts,
        "files": checked,
        "identical": identical,
        "uploaded": stats.bundles_uploaded,
        "bundles": n,
        "chunk": chunk,
    }


def _resent(cut: dict[str, float], clean: dict[str, float]) -> float:
    """Bytes sent again because of the interruptions: what the uploader sent through the
    cutting proxy, less the files and the protocol's own overhead per byte measured on an
    uninterrupted pass of the same kind of bundles."""
    overhead = (clean["client_bytes"] - clean["bytes"]) / clean["bytes"]
    return cut["client_bytes"] - cut["bytes"] * (1 + overhead)


def fsync_probe(folder: Path, n: int = 20) -> tuple[float, float]:
    """The disk's cost of durability where the trials' journals live: ``n`` appends of 4 KiB to
    one file, each followed by an fsync; (median, slowest) in ms. Our uploader commits its
    journal and its compressed copies durably as it goes, tuspy keeps nothing: a disk whose
    fsync is slow (after much writing, or an SD card) costs ours time that it does not cost
    tuspy, and this says how slow it was in this run."""
    path = Path(tempfile.mkdtemp(dir=folder, prefix="fsync-")) / "probe"
    times = []
    with open(path, "wb") as fh:
        for _ in range(n):
            fh.write(os.urandom(4096))
            fh.flush()
            start = time.perf_counter()
            os.fsync(fh.fileno())
            times.append(1000 * (time.perf_counter() - start))
    shutil.rmtree(path.parent, ignore_errors=True)
    return statistics.median(times), max(times)


@dataclass
class Trial:
    """One throughput trial: the bytes sent, when it began (``time.time()``, the clock the
    sink stamps its ingests with) and how long the uploads took on the wire."""

    total: int
    started: float
    wire_s: float

    @property
    def wire(self) -> float:
        """MiB/s until the last upload was acknowledged."""
        return self.total / self.wire_s / 2**20

    def ingested(self, sink: LocalSink) -> float:
        """MiB/s until the sink had verified and indexed the last of it: the same work on
        the sink whether a checksum came with the bytes (verified as they arrive) or not
        (hashed at ingest, after the wire figure's clock stopped)."""
        if not sink.wait_ingested():
            raise RuntimeError("the sink did not finish ingesting the trial's uploads")
        db = SinkDB(sink.data / "sink.db")
        try:
            last = db.last_ingest_ts()
        finally:
            db.close()
        if last is None or last <= self.started:
            raise RuntimeError("the sink recorded no ingest for the trial")
        return self.total / (last - self.started) / 2**20


def _ours_once(
    url: str,
    token: str,
    prefix: str,
    n: int,
    size: int,
    concurrency: int,
    kept: dict[str, str] | None = None,
) -> tuple[Trial, dict[str, str]]:
    """Our uploader's trial and what its journal kept for the next start: the link rate it
    measured and the tus endpoint it found. ``kept``: a cart that has uploaded before starts
    from what its journal kept then (None: a first start, which sizes its first chunk blind
    and asks where the endpoint is)."""
    work = Path(tempfile.mkdtemp(prefix="capsight-thr-"))
    journal = Journal(work / "journal.db")
    total = payload_bundles(journal, work, prefix, n, size)
    for key, value in (kept or {}).items():
        journal.kv_set(key, value)
    up = Uploader(
        journal,
        work,
        sink_url=url,
        token=token,
        uncapped=True,
        concurrency=concurrency,
        heartbeat_s=0,
    )
    os.sync()  # no trial pays for the write-back of the payload or of the trial before it
    started, start = time.time(), time.perf_counter()
    stats = asyncio.run(up.run(until_idle=True))
    spent = time.perf_counter() - start
    assert stats.bundles_uploaded == n, up.status()
    kept = {k: v for k in (RATE_KEY, ENDPOINT_KEY) if (v := journal.kv_get(k))}
    journal.close()
    shutil.rmtree(work, ignore_errors=True)
    return Trial(total, started, spent), kept


def _tuspy_once(
    url: str, token: str, prefix: str, n: int, size: int, checksum: bool, concurrency: int = 1
) -> Trial:
    """tuspy uploading the same bundles, ``concurrency`` bundles at a time (threads, as
    tuspy has no concurrency of its own), each bundle's files one after another as ours."""
    from concurrent.futures import ThreadPoolExecutor

    from tusclient import client as tus

    work = Path(tempfile.mkdtemp(prefix="capsight-tuspy-"))
    journal = Journal(work / "journal.db")
    total = payload_bundles(journal, work, prefix, n, size)

    def send(folder: Path) -> None:
        c = tus.TusClient(url + "/files/", headers={"Authorization": f"Bearer {token}"})
        for name in (CLIP, SENSORS, MANIFEST):
            c.uploader(
                file_path=str(folder / name),
                metadata={"bundle_id": folder.name, "filename": name},
                upload_checksum=checksum,
            ).upload()

    folders = sorted(p for p in (work / "bundles").iterdir() if p.name != ".partial")
    os.sync()  # no trial pays for the write-back of the payload or of the trial before it
    started, start = time.time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, folders))
    spent = time.perf_counter() - start
    journal.close()
    shutil.rmtree(work, ignore_errors=True)
    return Trial(total, started, spent)


@benchmark("upload")
def bench_upload(ctx: BenchContext) -> BenchResult:
    window, settle = (2.0, 1.5) if ctx.quick else (30.0, 3.0)
    data = Path(tempfile.mkdtemp(prefix="capsight-upsink-"))
    sink, token = _sink(data)
    url, port = sink.url, sink.port
    res = BenchResult(
        "upload",
        "the uploader against our sink on 127.0.0.1: rate caps, interruptions, uncapped "
        "throughput against tuspy",
    )
    try:
        over_time: dict[int, list[tuple[float, float]]] = {}
        for cap in (1_000_000, 8_000_000) if ctx.quick else (1_000_000, 8_000_000, 40_000_000):
            got, over_time[cap] = _rate_window(url, port, token, cap, window, settle)
            res.metrics.append(
                Metric(
                    f"achieved rate, cap {cap / 1e6:g} Mbit/s ({window:.0f} s window)",
                    got / 1e6,
                    "Mbit/s",
                    cap / 1e6,
                    "the cap",
                    "within +/-5%",
                    abs(got / cap - 1) <= 0.05,
                )
            )

        def draw(ax: Any) -> None:
            for cap, series in over_time.items():
                ax.plot(
                    [t for t, _ in series],
                    [r / cap for _, r in series],
                    marker=".",
                    label=f"cap {cap / 1e6:g} Mbit/s",
                )
            ax.axhspan(0.95, 1.05, color="grey", alpha=0.15)
            ax.set_xlabel("seconds into the window")
            ax.set_ylabel("rate on the wire / cap (each 0.5 s)")
            ax.set_title("upload: achieved rate over time at each cap (band: +/-5%)", fontsize=9)
            ax.legend(fontsize=8)

        res.plots.append(save_plot(ctx, "upload_rate_over_time", draw))
        cut = _interrupted(sink, token, ctx.quick)
        clean = _interrupted(sink, sink.add_device("bench-clean"), ctx.quick, device="bench-clean",
                             cut_every=0)  # fmt: skip
        resent = max(0.0, _resent(cut, clean))
        res.metrics += [
            Metric(
                "files byte-identical after a reset every 2 MB",
                cut["identical"],
                "files",
                cut["files"],
                "files sent",
                "all",
                cut["identical"] == cut["files"] and cut["uploaded"] == cut["bundles"],
            ),
            Metric(
                "re-sent per interruption (restarts included)",
                resent / max(1, cut["cuts"]) / 2**20,
                "MiB",
                cut["chunk"] / 2**20,
                "one chunk",
                "<= 1 chunk",
                resent / max(1, cut["cuts"]) <= cut["chunk"],
            ),
            Metric("whole-file restarts", cut["restarts"], "uploads"),
        ]
        res.notes.append(
            f"interruptions: {cut['cuts']} resets over {cut['bytes'] / MB:.1f} MB of real bundles "
            f"({cut['bundles']}), chunks of {cut['chunk'] / 2**20:g} MiB with sha256 each; "
            f"re-sent = every byte the uploader sent through the cutting proxy ("
            f"{cut['client_bytes'] / MB:.1f} MB) less the files and the protocol overhead of an "
            f"uninterrupted pass ({(clean['client_bytes'] / clean['bytes'] - 1):.2%} of the "
            f"bytes), divided by the resets"
        )
        n, size = (2, 8 * 2**20) if ctx.quick else (4, 32 * 2**20)
        trials = 1 if ctx.quick else 8
        # Each trial's figures: (on the wire, until ingested), MiB/s.
        runs: dict[str, list[tuple[float, float]]] = {}

        def keep(name: str, trial: Trial) -> None:
            # The sink ingests in the background: each trial is timed until its last ingest,
            # and the next starts on a sink with nothing left to ingest, so none pays for
            # the one before it.
            runs.setdefault(name, []).append((trial.wire, trial.ingested(sink)))

        # Each target compares a pair of trials taken back to back, ours and tuspy's, who goes
        # first alternating from pair to pair: the machine's speed drifts through a run (on
        # these VMs the same trial has run at a third of its speed from one minute to the
        # next, for both uploaders), and a pair sees one state of it. The targets are judged
        # on the median of the pairs' ratios; the medians of each series are given beside.
        # (ours, tuspy's, uploads at once, the count in words, how many at a time)
        pairs = (
            ("ours1", "theirs", 1, "one", "one upload at a time"),
            ("ours2", "theirs2", 2, "two", "two uploads at once"),
        )
        probes = [fsync_probe(Path(tempfile.gettempdir()))]
        for t in range(trials):
            # A first start (nothing measured), then carts in service: each starts from what
            # the first start's journal kept (the rate, the endpoint), as a restarted cart does.
            trial, kept = _ours_once(url, token, f"cold-{t}", n, size, 1)
            keep("cold", trial)
            for i, (mine, theirs, conc, _, _) in enumerate(pairs):
                order = [mine, theirs] if (t + i) % 2 else [theirs, mine]
                for side in order:
                    if side == mine:
                        keep(mine, _ours_once(url, token, f"{mine}-{t}", n, size, conc, kept)[0])
                    else:
                        keep(theirs, _tuspy_once(url, token, f"{theirs}-{t}", n, size, False, conc))
            for conc, name in ((1, "theirs_sum"), (2, "theirs_sum2")):
                keep(name, _tuspy_once(url, token, f"{name}-{t}", n, size, True, conc))
        probes.append(fsync_probe(Path(tempfile.gettempdir())))

        def median(name: str, which: int = 0) -> float:
            return statistics.median(r[which] for r in runs[name])

        def paired(mine: str, theirs: str, which: int = 0) -> list[float]:
            return [a[which] / b[which] for a, b in zip(runs[mine], runs[theirs], strict=True)]

        hows = ((0, "on the wire"), (1, "until ingested"))
        for mine, theirs, _, label, at_once in pairs:
            for which, how in hows:
                ratio = statistics.median(paired(mine, theirs, which))
                res.metrics.append(
                    Metric(
                        f"ours vs tuspy, {at_once}, {how}: median of the paired trials",
                        ratio,
                        "x",
                        1.0,
                        f"tuspy 1.1, {label} at a time, in the same pair (no checksum)",
                        ">= 1.0x",
                        ratio >= 1.0,
                    )
                )
        base, base2 = median("theirs"), median("theirs2")
        o1, o2 = median("ours1"), median("ours2")
        res.metrics += [
            Metric(
                "uncapped throughput, one upload at a time vs tuspy one at a time",
                o1,
                "MiB/s",
                base,
                "tuspy 1.1, 1 at a time (whole file per request, no checksum)",
            ),
            Metric(
                "uncapped throughput, two uploads at once vs tuspy two at once",
                o2,
                "MiB/s",
                base2,
                "tuspy 1.1, 2 threads (whole file per request, no checksum)",
            ),
            Metric(
                "uncapped throughput, one at a time, against tuspy with checksums",
                o1,
                "MiB/s",
                median("theirs_sum"),
                "tuspy 1.1, 1 at a time, upload_checksum=True (sha1 per request)",
            ),
            Metric(
                "uncapped throughput, two at once, against tuspy with checksums",
                o2,
                "MiB/s",
                median("theirs_sum2"),
                "tuspy 1.1, 2 threads, upload_checksum=True (sha1 per request)",
            ),
            Metric(
                "uncapped throughput of a first start (no rate measured yet) vs tuspy",
                median("cold"),
                "MiB/s",
                base,
                "tuspy 1.1, 1 at a time (whole file per request, no checksum)",
            ),
        ]
        for mine, theirs, _, label, _ in pairs:
            res.metrics.append(
                Metric(
                    f"until ingested, {label} at a time vs tuspy {label} at a time",
                    median(mine, 1),
                    "MiB/s",
                    median(theirs, 1),
                    f"tuspy 1.1, {label} at a time, no checksum: the sink hashes at ingest",
                )
            )
        res.notes.append(
            f"throughput: {n} bundles of {size >> 20} MiB per trial, {trials} trials of each "
            "series; each target compares ours with tuspy in pairs of trials taken back to "
            "back (who goes first alternating), judged on the median of the pairs' ratios, with "
            "each series' median MiB/s beside it; "
            "ours streams each file (up to 64 MiB per request uncapped) "
            "with a sha256 checksum the sink verifies before applying it (for a whole file, the "
            "manifest's digest: the end-to-end check); tuspy sends each file in one request, "
            "without checksums unless asked. Each trial's uploaders start on a fresh journal: "
            "the targets are for a cart in service, whose journal keeps the link rate it "
            "measured and the tus endpoint it found (seeded with what that trial's first start "
            "kept); the first start sends its first 8 MiB blind and is reported apart. "
            "'On the wire': until the last upload is acknowledged; 'until ingested': until "
            "the sink has verified and indexed the last file (its ingest queue's finish "
            "time), the same work on the sink for both: what tuspy sends unchecked the sink "
            "hashes at ingest, after the wire figure's clock has stopped"
        )
        res.notes.append(
            "paired ratios, ours / tuspy, in the order taken: "
            + "; ".join(
                f"{at_once} {how} [{', '.join(f'{r:.2f}' for r in paired(mine, theirs, which))}]"
                for which, how in hows
                for mine, theirs, _, _, at_once in pairs
            )
        )
        # Every trial's figure, in the order taken, so that a reader sees the spread the
        # medians come from (and whether the machine's speed drifts through the run).
        res.notes.append(
            "per trial, on the wire, MiB/s in the order taken: "
            + "; ".join(
                f"{label} [{', '.join(f'{wire:.0f}' for wire, _ in runs[name])}]"
                for name, label in (
                    ("theirs", "tuspy 1 at a time"),
                    ("ours1", "ours 1"),
                    ("theirs2", "tuspy 2 at once"),
                    ("ours2", "ours 2"),
                    ("cold", "ours' first starts"),
                )
            )
        )
        (b_med, b_max), (a_med, a_max) = probes
        res.notes.append(
            f"the disk's fsync (4 KiB appended, where the trials' journals live): median "
            f"{b_med:.2f} ms, slowest {b_max:.2f} ms of 20 before the trials; {a_med:.2f} ms, "
            f"{a_max:.2f} ms after them. Ours commits its journal and its compressed copies "
            "durably as it sends (several fsyncs a bundle), tuspy nothing: a slow fsync costs "
            "only ours"
        )
    finally:
        sink.stop()
        shutil.rmtree(data, ignore_errors=True)
    return res
