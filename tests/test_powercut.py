"""Power cuts, not only crashes: the cart and the sink on a filesystem that forgets every write
not yet made durable (tests/lazyfs.py), cut at random moments and booted again."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
import pytest

from benchmarks.powercut import RECOVERY_BOUND_S, cart_powercut_loop, powercut_loop, seal_cost
from capsight_edge.journal.journal import Journal
from capsight_edge.localsink import LocalSink
from tests.conftest import wait_until
from tests.lazyfs import LazyMount, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"FUSE: {unavailable()}")


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


def test_capsight_run_through_power_cuts(tmp_path: Path) -> None:
    """`capsight run` (journal, sealing, recovery, uploader) on the cutting filesystem, the sink
    on the real disk, cut three times mid-upload: every bundle the run reported sealed survives
    and verifies, upload offsets never run ahead of what the sink holds, nothing half-written is
    left or reaches the sink, each bundle is ingested once. The run record is durable: each
    boot removes the simulated MCU's folder the cut run left in the temporary folder."""
    links = set(Path(tempfile.gettempdir()).glob("capsight-mcu-*"))
    t = cart_powercut_loop(tmp_path, cuts=3, seed=11, wait_for_seal=True)
    assert set(Path(tempfile.gettempdir()).glob("capsight-mcu-*")) <= links
    assert t["cuts"] == 3 and t["reported"] >= 3
    assert t["lost"] == 0, t["lost_detail"]
    assert t["offsets_checked"] > 0, "no cut came mid-upload"
    assert t["offsets_ahead"] == 0
    assert t["last_exit"] == 0 and t["partial_left"] == 0
    assert t["ingested_all"] and t["ingest_failed"] == 0
    assert t["not_uploaded"] == [] and t["ingested_twice"] == 0 and t["stored_not_ok"] == []
    assert max(t["boot_s"]) < 60


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
