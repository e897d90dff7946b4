"""Crash test: a worker seals, uploads and evicts bundles through the real journal and sealing
code as fast as it can, and gets SIGKILLed at random moments; after each kill, recovery runs and
the invariants are checked:

- no sealed bundle lost: every bundle the worker saw sealed (its ledger, fsync'd after the journal
  committed) and did not evict is in the journal and on disk, and verifies;
- none duplicated, nothing half-written left: ``.partial`` is empty after recovery;
- journal and disk agree: every live row has its folder and every folder its live row;
- the SQLite file passes ``PRAGMA integrity_check``.

Run ``python -m benchmarks.crash_harness worker DIR`` for the worker alone.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

LIVE = ("sealed", "uploading", "uploaded")


def _ledger(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def make_bundle(
    data: Path,
    bid: str,
    *,
    priority: int = 1,
    size: int = 10_000,
    sealed: bool = True,
    device: str = "cart",
) -> Any:
    """A bundle of random bytes, written into ``bundles/.partial/<bid>`` and sealed (or not)."""
    from capsight_edge.bundle.manifest import (
        CLIP,
        SENSORS,
        Manifest,
        TriggerInfo,
        VideoInfo,
        sha256_file,
    )
    from capsight_edge.bundle.seal import seal

    partial = data / "bundles" / ".partial" / bid
    partial.mkdir(parents=True)
    (partial / CLIP).write_bytes(os.urandom(size))
    (partial / SENSORS).write_bytes(os.urandom(200))
    files = {CLIP: sha256_file(partial / CLIP), SENSORS: sha256_file(partial / SENSORS)}
    m = Manifest(
        bid,
        device,
        "store",
        "sim",
        TriggerInfo("r", priority, 0, {}),
        0,
        1,
        "",
        "",
        VideoInfo("h264", "libx264", 2, 2, 15.0, 1, 2.0),
        files,
        "",
        "test",
    )
    if sealed:
        seal(partial, data / "bundles", m)
    return m


def worker(data: Path, ledger: Path | None = None) -> None:
    """Seal, upload and evict until killed; each seal and each eviction's intent goes to the
    ledger (``data/ledger.txt`` unless given: the power-cut test keeps it off the filesystem
    that gets cut, as the truth the journal is checked against)."""
    from capsight_edge.journal.journal import Journal
    from capsight_edge.journal.recovery import recover

    journal = Journal(data / "journal.db")
    recover(journal, data)
    bundles = data / "bundles"
    rng = random.Random(os.getpid())
    i = 0
    while True:
        i += 1
        bid = f"b{os.getpid()}-{i}"
        prio = rng.randint(0, 3)
        journal.add_recording(bid, priority=prio, rule="crash")
        m = make_bundle(data, bid, priority=prio, size=16 * 1024 * rng.randint(1, 8))
        journal.mark_sealed(bid, {k: asdict(v) for k, v in m.files.items()}, duration_s=1.0)
        _ledger(ledger or data / "ledger.txt", f"sealed {bid}")
        live = journal.bundles(("sealed",))
        if live and rng.random() < 0.5:
            b = rng.choice(live)
            journal.start_upload(b.id, f"http://sink.invalid/files/{b.id}")
            for off in range(0, b.bytes, max(1, b.bytes // 3)):
                journal.set_offset(b.id, off)
            if rng.random() < 0.8:
                journal.mark_uploaded(b.id)
        done = journal.bundles(("uploaded",))
        if len(done) > 5:
            victim = min(done, key=lambda r: r.created_ns)
            # the intent, before the journal commits
            _ledger(ledger or data / "ledger.txt", f"evicted {victim.id}")
            journal.mark_evicted(victim.id, "crash test eviction")
            shutil.rmtree(bundles / victim.id, ignore_errors=True)


def verify(data: Path, ledger_path: Path | None = None) -> dict[str, Any]:
    """The verifier, over the worker's ledger, the journal and the disk (no recovery, no
    asserts): ``lost`` are bundles the ledger says were sealed and never evicted that are not
    live in the journal or not on disk; ``duplicated`` are extra copies, a clip (by its sha256)
    in more than one live folder or a bundle id the ledger saw sealed twice."""
    from capsight_edge.bundle.manifest import CLIP, MANIFEST, Manifest
    from capsight_edge.journal.journal import Journal

    bundles = data / "bundles"
    ledger_path = ledger_path or data / "ledger.txt"
    ledger = ledger_path.read_text().split() if ledger_path.exists() else []
    sealed_lines = [ledger[i + 1] for i in range(0, len(ledger), 2) if ledger[i] == "sealed"]
    sealed = set(sealed_lines)
    evicted = {ledger[i + 1] for i in range(0, len(ledger), 2) if ledger[i] == "evicted"}
    journal = Journal(data / "journal.db")
    try:
        rows = {r.id: r for r in journal.bundles()}
    finally:
        journal.close()
    live_rows = {i for i, r in rows.items() if r.state in LIVE}
    folders = {p.name for p in bundles.iterdir() if p.name != ".partial"}
    lost = sorted(b for b in sealed - evicted if b not in live_rows or b not in folders)
    clips: dict[str, int] = {}
    for b in folders:
        try:
            digest = Manifest.from_json((bundles / b / MANIFEST).read_bytes()).files[CLIP].sha256
        except (OSError, ValueError, KeyError):
            continue
        clips[digest] = clips.get(digest, 0) + 1
    duplicated = sum(n - 1 for n in clips.values()) + len(sealed_lines) - len(sealed)
    return {
        "sealed": len(sealed),
        "evicted": len(evicted),
        "lost": lost,
        "lost_detail": [(b, rows[b].state if b in rows else None, b in folders) for b in lost[:5]],
        "duplicated": duplicated,
        "live_rows": live_rows,
        "folders": folders,
    }


def check(data: Path, *, strict: bool = True, ledger: Path | None = None) -> dict[str, Any]:
    """Recover, then check every invariant; returns counts. ``strict``: raise AssertionError
    at the first broken one; otherwise lost and duplicated bundles are counted and returned
    (a benchmark measures them), the other invariants still raise. The ledger's "evicted"
    lines are written before the eviction commits (an intent), so a bundle killed
    mid-eviction may be either gone or still live, never lost unannounced."""
    from capsight_edge.bundle.manifest import verify_bundle
    from capsight_edge.journal.journal import Journal
    from capsight_edge.journal.recovery import recover

    journal = Journal(data / "journal.db")
    report = recover(journal, data)
    journal.close()
    bundles, partial = data / "bundles", data / "bundles" / ".partial"
    v = verify(data, ledger)
    if strict:
        assert not v["lost"], (
            f"sealed bundles lost (id, journal state, folder present): {v['lost_detail']}"
        )
        assert not v["duplicated"], f"{v['duplicated']} bundles duplicated"
        assert v["live_rows"] == v["folders"], (
            f"journal and disk disagree: rows only {v['live_rows'] - v['folders']}, "
            f"folders only {v['folders'] - v['live_rows']}"
        )
    assert not list(partial.iterdir()), "half-written bundles left in .partial"
    for b in v["folders"] & v["live_rows"]:
        verify_bundle(bundles / b)
    # closed here, not when collected: an open file keeps a lazily unmounted test filesystem
    # (tests/lazyfs.py) alive, and its orderly stop then waited 20 s for it
    with contextlib.closing(sqlite3.connect(data / "journal.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return {
        "sealed": v["sealed"],
        "evicted": v["evicted"],
        "live": len(v["live_rows"]),
        "lost": len(v["lost"]),
        "duplicated": v["duplicated"],
        "resealed": len(report.resealed),
        "removed_partial": len(report.removed_partial),
        "adopted": len(report.adopted),
        "discarded": len(report.discarded),
    }


def crash_loop(
    data: Path, kills: int, seed: int = 0, max_wait_s: float = 0.8, *, strict: bool = True
) -> dict[str, Any]:
    """``kills`` SIGKILLs of the worker at random moments, recovery and :func:`check` after
    each. The totals end with the verifier's figures over the final journal and disk."""
    rng = random.Random(seed)
    data.mkdir(parents=True, exist_ok=True)
    totals: dict[str, Any] = {"kills": 0}
    root = Path(__file__).resolve().parent.parent
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.crash_harness", "worker", str(data)],
            cwd=root,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.35 + rng.uniform(0, max_wait_s))  # past start-up, into the work
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        totals["kills"] += 1
        result = check(data, strict=strict)
        for k, v in result.items():
            if k in ("resealed", "removed_partial", "adopted", "discarded"):
                totals[k] = totals.get(k, 0) + v
            else:
                totals[k] = v
    final = verify(data)
    totals["lost"] = len(final["lost"])
    totals["duplicated"] = final["duplicated"]
    totals["disagree"] = len(final["live_rows"] ^ final["folders"])
    return totals


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) == 4 else None)
    else:
        print(crash_loop(Path(sys.argv[1]), int(sys.argv[2])))
