"""The journal on real SQLite files, recovery on real folders, the storage guard, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.crash_harness import crash_loop, make_bundle, verify
from capsight_edge.bundle.manifest import (
    CLIP,
    Manifest,
)
from capsight_edge.errors import JournalError
from capsight_edge.journal.guard import StorageGuard
from capsight_edge.journal.journal import MIGRATIONS, Journal
from capsight_edge.journal.recovery import recover
from tests.conftest import ROOT


def files_of(m: Manifest) -> dict[str, dict[str, object]]:
    return {k: asdict(v) for k, v in m.files.items()}


def test_states_and_transitions(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.add_recording("a", priority=3, rule="unscanned_item")
    with pytest.raises(JournalError, match="already"):
        j.add_recording("a", priority=3, rule="x")
    with pytest.raises(JournalError, match="recording -> uploaded"):
        j.mark_uploaded("a")
    j.mark_sealed("a", {CLIP: {"sha256": "0" * 64, "bytes": 5}}, duration_s=4.0)
    j.start_upload("a", "http://sink/files/1")
    j.set_offset("a", 3)
    assert j.get("a").upload_offset == 3  # type: ignore[union-attr]
    assert j.upload_failed("a", "timeout", permanent=False) == "sealed"
    j.start_upload("a")
    assert j.get("a").upload_url == "http://sink/files/1"  # type: ignore[union-attr]
    j.mark_uploaded("a")
    j.mark_evicted("a", "space")
    row = j.get("a")
    assert row is not None and row.state == "evicted" and row.attempts == 2
    assert [t[1] for t in j.transitions("a")] == [
        "recording",
        "sealed",
        "uploading",
        "sealed",
        "uploading",
        "uploaded",
        "evicted",
    ]


def test_repeated_permanent_errors_quarantine(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.add_recording("q", priority=1, rule="r")
    j.mark_sealed("q", {})
    for expected in ("sealed", "sealed", "quarantined"):
        j.start_upload("q", "u")
        assert j.upload_failed("q", "413 too large", permanent=True) == expected
    assert "3 permanent upload errors" in j.get("q").reason  # type: ignore[union-attr]
    j.retry("q")
    assert j.get("q").state == "sealed"  # type: ignore[union-attr]


def test_queue_order_priority_then_age(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    for bid, prio, t in [("old-low", 1, 1), ("new-high", 3, 3), ("old-high", 3, 2)]:
        j.add_recording(bid, priority=prio, rule="r", created_ns=t)
        j.mark_sealed(bid, {})
    assert [r.id for r in j.upload_queue()] == ["old-high", "new-high", "old-low"]


def test_migrations_are_numbered_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert versions == list(range(1, len(MIGRATIONS) + 1)) and mode == "wal"
    assert Journal(path).schema_version == len(MIGRATIONS)  # reopening applies nothing twice


def test_journal_survives_kills_at_any_instruction(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    child = textwrap.dedent(f"""
        import sys
        from capsight_edge.journal.journal import Journal
        j = Journal({str(path)!r})
        i = int(sys.argv[1])
        while True:
            i += 1
            with j.batch():
                j.add_recording(f"k{{i}}", priority=1, rule="r")
                j.mark_sealed(f"k{{i}}", {{}})
            print(i, flush=True)
    """)
    start = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(start)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for _ in range(50):
            last = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        j = Journal(path)
        rows = j.bundles()
        assert all(r.state == "sealed" for r in rows)  # each batch is all or nothing
        assert {f"k{i}" for i in range(1, last + 1)} <= {r.id for r in rows}
        start = max(int(r.id[1:]) for r in rows)
        j.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_recovery_reconciles_every_case(tmp_path: Path) -> None:
    data = tmp_path
    j = Journal(data / "journal.db")
    # sealed and known
    m = make_bundle(data, "known")
    j.add_recording("known", priority=1, rule="r")
    j.mark_sealed("known", files_of(m))
    # complete in .partial (crash before the rename): resealed
    j.add_recording("late", priority=2, rule="r")
    m2 = make_bundle(data, "late", sealed=False)
    partial = data / "bundles" / ".partial" / "late"
    from capsight_edge.bundle.manifest import MANIFEST

    (partial / MANIFEST).write_text(m2.to_json())
    # half-written clip: removed, row discarded
    j.add_recording("half", priority=1, rule="r")
    (data / "bundles" / ".partial" / "half").mkdir()
    (data / "bundles" / ".partial" / "half" / CLIP).write_bytes(b"\x00" * 100)
    # sealed on disk, journal never committed: adopted
    make_bundle(data, "orphan", priority=3)
    # a stray file and a corrupt folder: quarantined
    (data / "bundles" / "stray.bin").write_bytes(b"?")
    bad = make_bundle(data, "bad")
    (data / "bundles" / "bad" / CLIP).write_bytes(b"tampered")
    # mid-eviction: folder removed
    m4 = make_bundle(data, "evicting")
    j.add_recording("evicting", priority=1, rule="r")
    j.mark_sealed("evicting", files_of(m4))
    j.start_upload("evicting", "u")
    j.mark_uploaded("evicting")
    j.mark_evicted("evicting", "space")
    # recording row with nothing on disk: discarded; upload in flight: resumable
    j.add_recording("ghost", priority=1, rule="r")
    m5 = make_bundle(data, "inflight")
    j.add_recording("inflight", priority=1, rule="r")
    j.mark_sealed("inflight", files_of(m5))
    j.start_upload("inflight", "http://sink/files/abc")
    j.set_offset("inflight", 4096)

    report = recover(j, data)
    assert report.resealed == ["late"]
    assert report.adopted == ["orphan"] and j.get("orphan").priority == 3  # type: ignore[union-attr]
    assert set(report.removed_partial) == {"half"}
    assert set(report.discarded) == {"half", "ghost"}
    assert sorted(report.quarantined) == ["bad", "stray.bin"]
    assert report.finished_evictions == ["evicting"]
    assert report.resumable_uploads == ["inflight"]
    assert j.get("inflight").upload_offset == 4096  # type: ignore[union-attr]
    live = {r.id for r in j.bundles(("sealed", "uploading", "uploaded"))}
    on_disk = {p.name for p in (data / "bundles").iterdir() if p.name != ".partial"}
    assert live == on_disk == {"known", "late", "orphan", "inflight"}
    assert (data / "quarantine" / "bad.why.txt").read_text().startswith("does not verify")
    assert bad.bundle_id == "bad"
    again = recover(j, data)
    assert not again.changed  # recovery is idempotent


def test_crash_loop_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    totals = crash_loop(data, kills=6, seed=1)
    assert totals["kills"] == 6 and totals["sealed"] > 0
    assert (totals["lost"], totals["duplicated"], totals["disagree"]) == (0, 0, 0)
    # The verifier counts what it claims to: a sealed bundle gone and one copied are seen.
    ledger = (data / "ledger.txt").read_text().split()
    sealed = {ledger[i + 1] for i in range(0, len(ledger), 2) if ledger[i] == "sealed"}
    live = sorted(verify(data)["folders"] & sealed)
    assert len(live) >= 2
    shutil.rmtree(data / "bundles" / live[0])
    shutil.copytree(data / "bundles" / live[1], data / "bundles" / "a-copy")
    after = verify(data)
    assert after["lost"] == [live[0]] and after["duplicated"] == 1


def test_guard_pauses_evicts_by_worth_and_resumes(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    ids = []
    for bid, prio, state in [
        ("up-old", 1, "uploaded"),
        ("up-new", 1, "uploaded"),
        ("low-old", 1, "sealed"),
        ("high-old", 3, "sealed"),
        ("low-new", 1, "sealed"),
        ("moving", 0, "uploading"),
    ]:
        m = make_bundle(tmp_path, bid, priority=prio)
        j.add_recording(bid, priority=prio, rule="r")
        j.mark_sealed(bid, files_of(m))
        if state in ("uploaded", "uploading"):
            j.start_upload(bid, "u")
        if state == "uploaded":
            j.mark_uploaded(bid)
        ids.append(bid)
    usage = shutil.disk_usage(tmp_path)
    used = 100 * (1 - usage.free / usage.total)
    events: list[str | None] = []
    # Watermarks just under the disk's real use: the guard pauses and evicts what is uploaded.
    guard = StorageGuard(
        j,
        tmp_path,
        high_watermark_pct=used - 0.5,
        low_watermark_pct=used - 1.0,
        min_free_bytes=0,
        headroom_min=0,
        on_change=events.append,
    )
    assert guard.eviction_order() == ["up-old", "up-new", "low-old", "low-new", "high-old"]
    guard.check()
    assert guard.paused and events and "high watermark" in str(events[0])
    assert guard.evicted == ["up-old", "up-new"]  # never-uploaded ones stay
    assert j.kv_get("capture_paused")
    # Critically full (less free than the minimum): sealed ones go too, by worth; never the one
    # being uploaded.
    guard.min_free = usage.free + 2**30
    guard.check()
    assert guard.evicted == ["up-old", "up-new", "low-old", "low-new", "high-old"]
    assert j.get("moving").state == "uploading"  # type: ignore[union-attr]
    assert (tmp_path / "bundles" / "moving").is_dir()
    assert not (tmp_path / "bundles" / "low-old").exists()
    assert j.get("low-old").reason.startswith("disk critically full")  # type: ignore[union-attr]
    guard.high, guard.low, guard.min_free = 100.0, 99.9, 0
    guard.check()
    assert not guard.paused and events[-1] is None and j.kv_get("capture_paused") is None


def test_headroom_uses_the_measured_bitrate(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    m = make_bundle(tmp_path, "one", size=60_000)
    j.add_recording("one", priority=1, rule="r")
    j.mark_sealed("one", files_of(m), duration_s=6.0)
    guard = StorageGuard(
        j, tmp_path, high_watermark_pct=100, low_watermark_pct=99, min_free_bytes=0, headroom_min=0
    )
    d = guard.disk()
    assert abs(d.bytes_per_min - 60 * sum(f.bytes for f in m.files.values()) / 6.0) < 1
    guard.headroom_min = d.headroom_min * 2  # more minutes than the disk holds at this rate
    guard.check()
    assert guard.paused and "min of recording fit" in str(guard.paused_reason)


def test_upload_plan_per_file(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.add_recording("b", priority=2, rule="r")
    j.mark_sealed("b", {CLIP: {"sha256": "0" * 64, "bytes": 100}})
    j.start_upload("b")
    j.plan_upload("b", [(CLIP, "", 100), ("manifest.json", "zstd", 40)])
    j.file_progress("b", CLIP, url="http://s/files/1", offset=60)
    j.file_progress("b", "manifest.json", url="http://s/files/2", offset=40, done=True)
    row = j.get("b")
    assert row is not None and row.upload_offset == 100 and row.upload_url == "http://s/files/2"
    # Planning again keeps what did not change (and its URL), resets what did.
    j.plan_upload("b", [(CLIP, "", 100), ("manifest.json", "zstd", 41)])
    plan = {p.name: p for p in j.upload_plan("b")}
    assert (plan[CLIP].url, plan[CLIP].offset) == ("http://s/files/1", 60)
    assert (plan["manifest.json"].url, plan["manifest.json"].done) == ("", False)
    with pytest.raises(JournalError, match="no upload planned"):
        j.file_progress("b", "other", url="", offset=0)
    assert j.abandoned_uploads() == []  # still uploading
    j.quarantine("b", "pulled")
    (gone,) = j.abandoned_uploads()
    assert gone.name == CLIP and gone.url == "http://s/files/1"
    j.forget_upload_plan("b", CLIP)  # its never-started sibling goes with it
    assert j.upload_plan("b") == []
    j.close()
