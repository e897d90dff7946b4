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

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SYNCS = ("fsync", "fdatasync", "fsyncdir")
RECOVERY_BOUND_S = 5.0  # what the README states: a boot's recovery finishes within this


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def boot(data: Path) -> tuple[float, dict[str, list[str]]]:
    """What a device does first after power returns: open the journal, recover. Seconds, and
    what recovery did."""
    from capsight_edge.journal.journal import Journal
    from capsight_edge.journal.recovery import recover

    start = time.perf_counter()
    journal = Journal(data / "journal.db")
    try:
        report = recover(journal, data)
    finally:
        journal.close()
    return time.perf_counter() - start, report.as_dict()


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
    totals: dict[str, Any] = {"cuts": 0, "recovery_s": []}
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
            mount.cut()  # ... and every write not made durable is gone
            totals["cuts"] += 1
            mount.start()
            seconds, report = boot(data)
            totals["recovery_s"].append(seconds)
            found = ("resealed", "removed_partial", "adopted", "discarded")
            for k in found:
                totals[k] = totals.get(k, 0) + len(report[k])  # what the boot found to do
            checked = check(data, strict=strict, ledger=ledger)  # recovers again: a no-op
            totals.update({k: v for k, v in checked.items() if k not in found})
        final = verify(data, ledger)
        totals["lost"] = len(final["lost"])
        totals["lost_detail"] = final["lost_detail"]
        totals["duplicated"] = final["duplicated"]
        totals["disagree"] = len(final["live_rows"] ^ final["folders"])
    finally:
        mount.stop()
    rec = totals["recovery_s"]
    totals["recovery_p50_s"] = percentile(rec, 50)
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


class _Records:
    """A run's stdout, read in a thread: its JSON records, with deadlines."""

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
            if rec is None:
                raise RuntimeError(f"the run ended before a {kind} record")
            self.seen.append(rec)
            if rec["type"] == kind:
                return rec

    def rest(self) -> list[dict[str, Any]]:
        while (rec := self.q.get(timeout=60)) is not None:
            self.seen.append(rec)
        return self.seen

    def sealed(self) -> set[str]:
        return {r["bundle_id"] for r in self.seen if r["type"] == "bundle_sealed"}


def _start_cart(data: Path, profile: Path, *args: str) -> subprocess.Popen[str]:
    """`capsight run --json` in its own process group (a power cut stops all of it at once)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "capsight_edge.cli.main", "--log-level", "ERROR", "run"),
            *("--json", "--data", str(data), "--profile", str(profile), *args),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _cut_cart(proc: subprocess.Popen[str], mount: Any, data: Path) -> None:
    """Every process of the run stops at once, every unsynced write is gone, and with the RAM
    the shared memory the run held (its record names the segments)."""
    try:
        segments = json.loads((data / "run.json").read_text()).get("segments", [])
    except (OSError, ValueError):
        segments = []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    mount.cut()
    for name in segments:
        (Path("/dev/shm") / str(name).lstrip("/")).unlink(missing_ok=True)


def cart_powercut_loop(
    root: Path, cuts: int, seed: int = 0, *, max_wait_s: float = 8.0, wait_for_seal: bool = False
) -> dict[str, Any]:
    """``cuts`` power cuts of `capsight run` (simulated devices, journal, recorder, uploader
    paced at 1 Mbit/s so cuts come mid-upload) on the cutting filesystem, the sink on the real
    disk. Each boot asks for a manual capture; the cut comes at a random moment up to
    ``max_wait_s`` after the run started (``wait_for_seal``: after its first sealed bundle).
    After each cut, every upload offset the journal holds is checked against the sink's HEAD.
    Then a last boot runs until everything reported sealed is uploaded and stops cleanly.

    Returned: cuts, bundles reported sealed, those lost (not live or not verifying at the end),
    offsets checked and ahead of the sink, half-written folders left, bundles stored on the sink
    (ingested twice, not ok, failed ingests), and seconds from each boot to `run_started`."""
    import httpx

    from capsight_edge.bundle.manifest import ManifestError, verify_bundle
    from capsight_edge.collector import send_manual_trigger
    from capsight_edge.journal.journal import Journal
    from capsight_edge.localsink import LocalSink
    from tests.lazyfs import LazyMount

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    sim = ROOT / "hw_profiles" / "sim.toml"
    slow = root / "slow.toml"
    slow.write_text(
        sim.read_text().replace("max_upload_bps = 8_000_000", "max_upload_bps = 1_000_000")
    )
    sink = LocalSink(root / "sink").start()
    device = "sim-cart-0001"  # the simulated profile's device id, which its manifests carry
    token = root / "token"
    token.write_text(sink.add_device(device))
    admin = {"Authorization": f"Bearer {sink.add_device('powercut-admin', admin=True)}"}
    tus = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {token.read_text().strip()}"}
    mount = LazyMount(root / "fs")
    data = mount.start() / "data"
    args = ("--sink", sink.url, "--token-file", str(token))
    t: dict[str, Any] = {"cuts": 0, "boot_s": [], "offsets_checked": 0, "offsets_ahead": 0}
    reported: set[str] = set()
    try:
        for cycle in range(cuts):
            started = time.perf_counter()
            proc = _start_cart(data, slow, "--seed", str(seed * 1000 + cycle), *args)
            out = _Records(proc)
            out.until("run_started", 120)
            t["boot_s"].append(time.perf_counter() - started)
            send_manual_trigger(data, "power cut")
            if wait_for_seal:
                out.until("bundle_sealed", 120)
                time.sleep(rng.uniform(0.0, 2.0))
            else:
                time.sleep(rng.uniform(0.0, max_wait_s))
            _cut_cart(proc, mount, data)
            t["cuts"] += 1
            out.rest()
            reported |= out.sealed()
            mount.start()
            if not (data / "journal.db").exists():
                continue  # cut before the journal was first made durable: nothing to check
            journal = Journal(data / "journal.db", readonly=True)
            try:
                for row in journal.bundles(("uploading",)):
                    for f in journal.upload_plan(row.id):
                        if f.url and f.offset and not f.done:
                            r = httpx.head(f.url, headers=tus, timeout=30)
                            held = int(r.headers.get("Upload-Offset", -1))
                            t["offsets_checked"] += 1
                            t["offsets_ahead"] += int(r.status_code != 200 or f.offset > held)
            finally:
                journal.close()
        # power back for good: recover, upload everything reported, stop cleanly
        proc = _start_cart(data, sim, "--seed", str(seed * 1000 + cuts), *args)
        out = _Records(proc)
        out.until("run_started", 120)

        def uploaded() -> bool:
            j = Journal(data / "journal.db", readonly=True)
            try:
                rows = [j.get(b) for b in reported]
            finally:
                j.close()
            return all(r is not None and r.state == "uploaded" for r in rows)

        deadline = time.monotonic() + 60 + 5 * len(reported)
        while not uploaded() and time.monotonic() < deadline:
            time.sleep(0.5)
        expected = set(reported)  # what stopping seals below is not sent
        proc.send_signal(signal.SIGTERM)
        t["last_exit"] = proc.wait(timeout=120)
        reported |= {r["bundle_id"] for r in out.rest() if r["type"] == "bundle_sealed"}
        journal = Journal(data / "journal.db", readonly=True)
        lost = []
        try:
            for b in sorted(reported):
                found = journal.get(b)
                try:
                    ok = found is not None and found.state in ("sealed", "uploading", "uploaded")
                    ok = ok and verify_bundle(data / "bundles" / b) is not None
                except ManifestError:
                    ok = False
                if not ok:
                    lost.append((b, found.state if found is not None else None))
        finally:
            journal.close()
        t["partial_left"] = len(list((data / "bundles" / ".partial").iterdir()))
        t["ingested_all"] = sink.wait_ingested()
        t["ingest_failed"] = httpx.get(sink.url + "/api/ingest", headers=admin, timeout=30).json()[
            "failed"
        ]
        stored = httpx.get(
            sink.url + "/api/bundles", params={"device": device}, headers=admin, timeout=30
        ).json()["bundles"]
    finally:
        mount.stop()
        sink.stop()
    ids = [b["bundle_id"] for b in stored]
    t.update(
        reported=len(reported),
        lost=len(lost),
        lost_detail=lost[:5],
        not_uploaded=sorted(expected - set(ids)),
        stored=len(ids),
        ingested_twice=len(ids) - len(set(ids)),
        stored_not_ok=[(b["bundle_id"], b["status"]) for b in stored if b["status"] != "ok"],
        boot_p50_s=percentile(t["boot_s"], 50),
        boot_p99_s=percentile(t["boot_s"], 99),
    )
    return t


if __name__ == "__main__":
    out = powercut_loop(Path(sys.argv[1]), int(sys.argv[2]), strict=False)
    out.pop("recovery_s")
    print(out)
