"""Power cuts, not only crashes: the crash harness's worker on a filesystem that forgets every
write not yet made durable (``tests/lazyfs.py``), cut at random moments.

A SIGKILL leaves the kernel's page cache intact; a cut does not. After each cut the filesystem is
mounted again over what survived, the device boots (recovery, timed), and the crash harness's
invariants are checked against the worker's ledger, which lives on the real disk, off the
filesystem that gets cut: every bundle the journal reported sealed and never evicted is live in
the journal, on disk, and verifies; nothing half-written is left; journal and disk agree; the
SQLite file passes its integrity check.

Run ``python -m benchmarks.powercut DIR CUTS`` for the loop alone.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYNCS = ("fsync", "fdatasync", "fsyncdir")
RECOVERY_BOUND_S = 5.0  # what the README states: a boot's recovery finishes within this


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def boot(data: Path) -> float:
    """What a device does first after power returns: open the journal, recover. Seconds."""
    from capsight_edge.journal.journal import Journal
    from capsight_edge.journal.recovery import recover

    start = time.perf_counter()
    journal = Journal(data / "journal.db")
    try:
        recover(journal, data)
    finally:
        journal.close()
    return time.perf_counter() - start


def powercut_loop(
    root: Path, cuts: int, seed: int = 0, max_wait_s: float = 0.6, *, strict: bool = True
) -> dict[str, Any]:
    """``cuts`` power cuts of the crash harness's worker at random moments; after each the
    filesystem is remounted over what survived, the device boots (timed), and the invariants
    are checked (:func:`benchmarks.crash_harness.check`). Totals: cuts survived, bundles
    sealed, lost and duplicated (the verifier, after the run), recovery seconds per boot."""
    from benchmarks.crash_harness import check, verify
    from tests.lazyfs import LazyMount

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    mount = LazyMount(root / "fs")
    ledger = root / "ledger.txt"
    data = mount.start() / "data"
    totals: dict[str, Any] = {"cuts": 0, "recovery_s": [], "kept_files": 0}
    try:
        for _ in range(cuts):
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.crash_harness",
                    "worker",
                    str(data),
                    str(ledger),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.35 + rng.uniform(0, max_wait_s))  # past start-up, into the work
            os.kill(proc.pid, signal.SIGKILL)  # the power goes: every process stops ...
            proc.wait()
            reply = mount.cut()  # ... and every write not made durable is gone
            totals["cuts"] += 1
            totals["kept_files"] = reply["kept"].get("files", 0)
            mount.start()
            totals["recovery_s"].append(boot(data))
            result = check(data, strict=strict, ledger=ledger)
            for k, v in result.items():
                if k in ("resealed", "removed_partial", "adopted", "discarded"):
                    totals[k] = totals.get(k, 0) + v
                else:
                    totals[k] = v
        final = verify(data, ledger)
        totals["lost"] = len(final["lost"])
        totals["lost_detail"] = final["lost_detail"]
        totals["duplicated"] = final["duplicated"]
        totals["disagree"] = len(final["live_rows"] ^ final["folders"])
    finally:
        mount.stop()
    rec = totals["recovery_s"]
    totals["recovery_p50_s"] = statistics.median(rec) if rec else 0.0
    totals["recovery_p99_s"] = percentile(rec, 99)
    return totals


def seal_cost(root: Path, bundles: int = 20) -> dict[str, Any]:
    """Syncs per sealed bundle through the real journal and sealing code, counted by the
    filesystem, against the least that makes a bundle durable: one fsync per file in it (the
    manifest included), one of its folder, one of the folder it is renamed into, and one journal
    commit (one WAL fsync) recording it sealed."""
    from benchmarks.crash_harness import make_bundle
    from capsight_edge.journal.journal import Journal
    from tests.lazyfs import LazyMount

    root.mkdir(parents=True, exist_ok=True)
    with LazyMount(root / "fs") as mount:
        data = mount.mnt / "data"
        journal = Journal(data / "journal.db")
        boot(data)
        before = Counter(mount.stats())
        files = 0
        for i in range(bundles):
            bid = f"cost-{i}"
            journal.add_recording(bid, priority=1, rule="cost")
            m = make_bundle(data, bid)
            journal.mark_sealed(bid, {k: asdict(v) for k, v in m.files.items()}, duration_s=1.0)
            files += len(m.files) + 1  # the manifest
        after = Counter(mount.stats())
        journal.close()
    syncs = {k: after[k] - before[k] for k in SYNCS}
    minimum = files + 3 * bundles
    return {
        "bundles": bundles,
        "syncs": syncs,
        "per_bundle": sum(syncs.values()) / bundles,
        "minimum_per_bundle": minimum / bundles,
    }


if __name__ == "__main__":
    out = powercut_loop(Path(sys.argv[1]), int(sys.argv[2]), strict=False)
    out.pop("recovery_s")
    print(out)
