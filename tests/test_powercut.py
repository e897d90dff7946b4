"""Power cuts, not only crashes: the cart and the sink on a filesystem that forgets every write
not yet made durable (tests/lazyfs.py), cut at random moments and booted again."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.powercut import RECOVERY_BOUND_S, powercut_loop, seal_cost
from capsight_edge.bundle.manifest import verify_bundle
from capsight_edge.collector import send_manual_trigger
from capsight_edge.journal.journal import Journal
from capsight_edge.localsink import LocalSink
from tests.conftest import SIM, start_run, wait_until
from tests.lazyfs import LazyMount, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"FUSE: {unavailable()}")

LIVE = ("sealed", "uploading", "uploaded")
DEVICE = "sim-cart-0001"  # the simulated profile's device id, which its manifests carry


def test_the_journal_and_sealing_lose_nothing_through_power_cuts(tmp_path: Path) -> None:
    totals = powercut_loop(tmp_path, cuts=4, seed=3)
    assert totals["cuts"] == 4 and totals["sealed"] > 0
    assert totals["lost"] == 0, totals["lost_detail"]
    assert totals["duplicated"] == 0 and totals["disagree"] == 0
    assert max(totals["recovery_s"]) < RECOVERY_BOUND_S


def test_sealing_costs_a_stated_number_of_syncs(tmp_path: Path) -> None:
    cost = seal_cost(tmp_path, bundles=5)
    # each file, the manifest, the folder, bundles/, the journal commit: the least; sealing
    # also syncs .partial/ after the rename and the journal commits the recording's start
    assert cost["minimum_per_bundle"] <= cost["per_bundle"] <= 2 * cost["minimum_per_bundle"]


class Lines:
    """A process's stdout, read in a thread: JSON records with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    self.q.put(json.loads(line))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, kind: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            rec = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            assert rec is not None, f"the run ended before a {kind} record"
            self.seen.append(rec)
            if rec["type"] == kind:
                return rec

    def rest(self) -> list[dict[str, Any]]:
        while (rec := self.q.get(timeout=30)) is not None:
            self.seen.append(rec)
        return self.seen


def power_cut(proc: subprocess.Popen[str], fs: LazyMount, data: Path) -> None:
    """Every process of the run stops at once, then every unsynced write is gone, and with the
    RAM the shared memory the run held (its record names the segments)."""
    try:
        segments = json.loads((data / "run.json").read_text()).get("segments", [])
    except (OSError, ValueError):
        segments = []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    fs.cut()
    for name in segments:
        (Path("/dev/shm") / str(name).lstrip("/")).unlink(missing_ok=True)


def test_capsight_run_through_power_cuts(tmp_path: Path) -> None:
    """`capsight run` (journal, sealing, recovery, uploader) on the cutting filesystem, the sink
    on the real disk: every bundle the run reported sealed survives every cut and verifies,
    upload offsets never run ahead of what the sink holds, nothing half-written reaches it."""
    sink = LocalSink(tmp_path / "sink").start()
    token = tmp_path / "token"
    token.write_text(sink.add_device(DEVICE))
    admin = {"Authorization": f"Bearer {sink.add_device('pc-admin', admin=True)}"}
    fs = LazyMount(tmp_path / "lazy")
    data = fs.start() / "data"
    rng = random.Random(11)
    reported: set[str] = set()
    args = ("--sink", sink.url, "--token-file", str(token))
    # uploads paced at 1 Mbit/s while the power cuts come, so they come mid-upload
    slow = tmp_path / "slow.toml"
    slow.write_text(
        SIM.read_text().replace("max_upload_bps = 8_000_000", "max_upload_bps = 1_000_000")
    )
    offsets_checked = 0
    try:
        for cycle in range(3):
            proc = start_run(data, "--seed", str(cycle), *args, profile=slow, new_session=True)
            out = Lines(proc)
            assert out.until("run_started", 60)["type"] == "run_started"
            send_manual_trigger(data, "power cut test")
            reported.add(out.until("bundle_sealed", 60)["bundle_id"])
            time.sleep(rng.uniform(0.0, 2.0))  # into the upload, or the next clip
            power_cut(proc, fs, data)
            reported |= {r["bundle_id"] for r in out.rest() if r["type"] == "bundle_sealed"}
            fs.start()
            journal = Journal(data / "journal.db", readonly=True)
            try:
                for row in journal.bundles(("uploading",)):
                    for f in journal.upload_plan(row.id):
                        if f.url and f.offset and not f.done:
                            r = httpx.head(
                                f.url,
                                headers={"Tus-Resumable": "1.0.0"} | _bearer(token),
                                timeout=30,
                            )
                            assert r.status_code == 200, (f.url, r.status_code)
                            held = int(r.headers["Upload-Offset"])
                            assert f.offset <= held, f"journal offset {f.offset} > sink's {held}"
                            offsets_checked += 1
            finally:
                journal.close()
        assert offsets_checked > 0, "no cut came mid-upload"
        # power back for good: the run recovers and uploads everything, then stops cleanly
        proc = start_run(data, "--seed", "9", *args, new_session=True)
        out = Lines(proc)
        out.until("run_started", 60)

        def all_uploaded() -> bool:
            j = Journal(data / "journal.db", readonly=True)
            try:
                rows = [j.get(b) for b in reported]
                return all(row is not None and row.state == "uploaded" for row in rows)
            finally:
                j.close()

        assert wait_until(all_uploaded, timeout_s=120), "reported bundles not all uploaded"
        uploaded = set(reported)  # what stops with the run below may seal one more, not sent
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        reported |= {r["bundle_id"] for r in out.rest() if r["type"] == "bundle_sealed"}
        journal = Journal(data / "journal.db", readonly=True)
        try:
            for b in reported:
                row = journal.get(b)
                assert row is not None and row.state in LIVE, (b, row and row.state)
                verify_bundle(data / "bundles" / b)
        finally:
            journal.close()
        left = [(p.name, sorted(os.listdir(p))) for p in (data / "bundles" / ".partial").iterdir()]
        assert left == [], (left, out.seen[-1])
        assert sink.wait_ingested()
        queue_counts = httpx.get(sink.url + "/api/ingest", headers=admin, timeout=30).json()
        assert queue_counts["failed"] == 0
        stored = httpx.get(
            sink.url + "/api/bundles", params={"device": DEVICE}, headers=admin, timeout=30
        ).json()["bundles"]
        ids = [b["bundle_id"] for b in stored]
        assert len(ids) == len(set(ids)), "a bundle ingested twice"
        assert uploaded <= set(ids)
        bad = [(b["bundle_id"], b["status"], b.get("status_detail")) for b in stored]
        assert all(b["status"] == "ok" for b in stored), [x for x in bad if x[1] != "ok"]
    finally:
        fs.stop()
        sink.stop()


def _bearer(token: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.read_text().strip()}"}


def test_the_sinks_tus_store_keeps_every_reported_offset_through_power_cuts(
    tmp_path: Path,
) -> None:
    """The sink's data on the cutting filesystem, the cart on the real disk: an upload whose
    offset the sink reported survives a cut with at least that many bytes (tusd's promise), the
    upload then finishes, and each bundle is ingested once, byte for byte, even when the cut
    comes right after the upload completed."""
    from benchmarks.bundles import seal_bundle
    from capsight_edge.uploader.service import UploaderThread
    from capsight_edge.uploader.shaping import Backoff, UploadSchedule
    from capsight_edge.uploader.uploader import Uploader

    fs = LazyMount(tmp_path / "lazy")
    sink = LocalSink(fs.start() / "sink").start()
    token = sink.add_device("cart-a")
    admin = {"Authorization": f"Bearer {sink.add_device('pc-admin', admin=True)}"}
    cart = tmp_path / "cart"
    journal = Journal(cart / "journal.db")
    chunk = 128 * 1024

    def upload(rate_bps: int) -> Uploader:
        return Uploader(
            journal,
            cart,
            sink_url=sink.url,
            token=token,
            schedule=UploadSchedule(rate_bps) if rate_bps else None,
            uncapped=not rate_bps,
            chunk_bytes=chunk,
            heartbeat_s=0,
            backoff=Backoff(base_s=0.05, max_s=0.4),
        )

    def cut_sink() -> None:
        sink.kill()
        fs.cut()
        fs.start()
        sink.start()

    try:
        # 1. cut mid-upload, twice: the offset the sink reported is still there
        seal_bundle(journal, cart, "mid", noise_frames=60)
        runner = UploaderThread(upload(4_000_000)).start()  # 0.5 MB/s: stops half-way
        try:
            for n in (3, 8):

                def past(n: int = n) -> bool:
                    row = journal.get("mid")
                    return row is not None and row.upload_offset > n * chunk

                assert wait_until(past, timeout_s=60)
                row = journal.get("mid")
                assert row is not None and row.state == "uploading"
                reported = row.upload_offset
                cut_sink()
                r = httpx.head(
                    row.upload_url,
                    headers={"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {token}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.status_code
                assert int(r.headers["Upload-Offset"]) >= reported
            assert wait_until(lambda: getattr(journal.get("mid"), "state", "") == "uploaded", 120)
        finally:
            runner.stop()
        # 2. cut as soon as the sink confirmed a whole upload, before its ingest could finish
        seal_bundle(journal, cart, "done", noise_frames=20)
        asyncio.run(upload(0).run(until_idle=True))
        assert getattr(journal.get("done"), "state", "") == "uploaded"
        cut_sink()
        assert sink.wait_ingested()
        counts = httpx.get(sink.url + "/api/ingest", headers=admin, timeout=30).json()
        assert counts["failed"] == 0
        stored = httpx.get(
            sink.url + "/api/bundles", params={"device": "cart-a"}, headers=admin, timeout=30
        ).json()["bundles"]
        assert sorted(b["bundle_id"] for b in stored) == ["done", "mid"]
        assert all(b["status"] == "ok" for b in stored), stored
        for bid in ("done", "mid"):
            for f in (cart / "bundles" / bid).iterdir():
                blob = sink.data / "blobs" / "store" / "bundles" / "cart-a" / bid / f.name
                assert blob.read_bytes() == f.read_bytes(), (bid, f.name)
    finally:
        journal.close()
        sink.stop()
        fs.stop()
