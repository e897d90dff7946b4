"""Journal benchmarks: transition throughput, commit latency, and the crash test at full count."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.plots import save_plot
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark


@benchmark("journal")
def bench_journal(ctx: BenchContext) -> BenchResult:
    from capsight_edge.journal.journal import Journal

    n = 5_000 if ctx.quick else 40_000
    tmp = Path(tempfile.mkdtemp(prefix="capsight-journal-"))
    j = Journal(tmp / "journal.db")
    # Batched: 100 bundles (200 transitions: recording, then sealed) per transaction.
    start = time.perf_counter()
    for b in range(0, n, 100):
        with j.batch():
            for i in range(b, b + 100):
                j.add_recording(f"x{i}", priority=1, rule="r")
                j.mark_sealed(f"x{i}", {})
    batched = 2 * n / (time.perf_counter() - start)
    # One transaction per transition (what a lone event costs), commit latency per transition.
    m = n // 20
    latencies = []
    start = time.perf_counter()
    for i in range(m):
        t0 = time.perf_counter()
        j.add_recording(f"y{i}", priority=1, rule="r")
        latencies.append(time.perf_counter() - t0)
    single = m / (time.perf_counter() - start)
    latencies.sort()
    # Transitions per second against the transaction's size, the same work at each size.
    sweep: list[tuple[int, float]] = []
    work = 2_000 if ctx.quick else 10_000
    for size in (1, 2, 10, 50, 200, 1000):
        count = work if size > 1 else m
        start = time.perf_counter()
        for b in range(0, count, size):
            with j.batch():
                for i in range(b, min(count, b + size) - 1, 2):
                    j.add_recording(f"s{size}-{i}", priority=1, rule="r")
                    j.mark_sealed(f"s{size}-{i}", {})
                if size == 1:
                    j.add_recording(f"s1-{b}", priority=1, rule="r")
        sweep.append((size, count / (time.perf_counter() - start)))
    j.close()
    res = BenchResult("journal", "SQLite journal (WAL, synchronous=FULL) on this machine's disk")
    res.metrics += [
        Metric(
            "transitions per second, 200 per transaction",
            batched,
            "/s",
            single,
            "one per transaction",
            ">= 20,000",
            batched >= 20_000,
        ),
        Metric(
            "commit p50, one transition per transaction",
            1000 * latencies[len(latencies) // 2],
            "ms",
        ),
        Metric(
            "commit p99, one transition per transaction",
            1000 * latencies[int(0.99 * len(latencies))],
            "ms",
        ),
    ]
    res.notes.append(
        f"{2 * n} batched and {m} single transitions; fsync per commit on this disk; "
        "SD cards and eMMC are far slower"
    )

    def draw(ax: Any) -> None:
        ax.plot([x for x, _ in sweep], [y for _, y in sweep], marker="o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(20_000, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("transitions per transaction")
        ax.set_ylabel("transitions/s (dashed: target)")
        ax.set_title("journal: SQLite WAL, synchronous=FULL, this machine's disk", fontsize=9)

    res.plots.append(save_plot(ctx, "journal_batch", draw))
    return res


def verifier_metrics(totals: dict[str, Any], prefix: str = "") -> list[Metric]:
    """The crash verifier's figures (benchmarks/crash_harness.py: verify), each with target 0."""
    return [
        Metric(prefix + name, totals[key], "bundles", target="0", met=totals[key] == 0)
        for key, name in (
            ("lost", "sealed bundles lost (verifier, after the run)"),
            ("duplicated", "bundles duplicated (verifier, after the run)"),
            ("disagree", "live bundles where journal and disk disagree"),
        )
    ]


@benchmark("crash")
def bench_crash(ctx: BenchContext) -> BenchResult:
    from benchmarks.crash_harness import crash_loop

    kills = 10 if ctx.quick else 200
    start = time.perf_counter()
    totals = crash_loop(
        Path(tempfile.mkdtemp(prefix="capsight-crash-")) / "data", kills, seed=7, strict=False
    )
    res = BenchResult(
        "crash",
        f"{kills} SIGKILLs of a device sealing, uploading and evicting "
        "bundles through the real journal and sealing code, recovery after each",
    )
    res.metrics += [
        Metric(
            "kills survived (recovery ran, no half-written bundle left, integrity ok)",
            totals["kills"],
            "kills",
            target=f"{kills}",
            met=totals["kills"] == kills,
        ),
        Metric("bundles sealed in all", totals["sealed"], "bundles"),
        Metric(
            "half-written bundles removed at recovery", totals.get("removed_partial", 0), "bundles"
        ),
        Metric("complete bundles sealed at recovery", totals.get("resealed", 0), "bundles"),
    ]
    res.metrics += verifier_metrics(totals)
    res.notes.append(
        f"ran {time.perf_counter() - start:.0f} s; lost, duplicated and disagreeing bundles "
        "are counted by a verifier over the worker's fsync'd ledger, the journal and the disk "
        "(benchmarks/crash_harness.py: verify); a half-written bundle left after recovery or a "
        "failed integrity check would have stopped the run with the reason"
    )
    return res


@benchmark("power_cut")
def bench_power_cut(ctx: BenchContext) -> BenchResult:
    from benchmarks.powercut import (
        RECOVERY_BOUND_S,
        cart_powercut_loop,
        powercut_loop,
        seal_cost,
    )
    from tests.lazyfs import unavailable

    cuts, cart_cuts = (2, 1) if ctx.quick else (100, 100)
    res = BenchResult(
        "power_cut",
        f"{cart_cuts} power cuts of `capsight run` (simulated devices, uploading to a sink on the "
        f"real disk) and {cuts} of a worker sealing, uploading and evicting bundles through the "
        "real journal and sealing code, on a FUSE filesystem that forgets every write not made "
        "durable (tests/lazyfs.py), remounted over what survived and booted after each",
    )
    reason = unavailable()
    if reason:
        res.notes.append(f"skipped: {reason}")
        return res
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="capsight-powercut-"))
    cart = cart_powercut_loop(
        tmp / "cart", cart_cuts, seed=7, max_wait_s=6.0 if ctx.quick else 12.0
    )
    totals = powercut_loop(tmp / "loop", cuts, seed=7, strict=False)
    cost = seal_cost(tmp / "cost", bundles=10 if ctx.quick else 50)
    problems = {
        "not verifying or not live": cart["lost"],
        "offsets ahead of the sink": cart["offsets_ahead"],
        "half-written folders left": cart["partial_left"],
        "not uploaded after the last boot": len(cart["not_uploaded"]),
        "ingested twice": cart["ingested_twice"],
        "stored not ok": len(cart["stored_not_ok"]),
        "failed ingests": cart["ingest_failed"],
    }
    res.metrics += [
        Metric(
            "capsight run: cuts survived (booted and ran again)",
            cart["cuts"],
            "cuts",
            target=f"{cart_cuts}",
            met=cart["cuts"] == cart_cuts and cart["last_exit"] == 0,
        ),
        Metric("capsight run: bundles reported sealed", cart["reported"], "bundles"),
        Metric(
            "capsight run: reported bundles lost or broken, at the sink or on the cart",
            sum(problems.values()),
            "bundles",
            target="0",
            met=sum(problems.values()) == 0,
        ),
        Metric(
            "capsight run: upload offsets checked against the sink",
            cart["offsets_checked"],
            "offsets",
        ),
        Metric("capsight run: boot to running, p50", cart["boot_p50_s"], "s"),
        Metric(
            "capsight run: boot to running, p99",
            cart["boot_p99_s"],
            "s",
            target=f"< {RECOVERY_BOUND_S:g} s",
            met=cart["boot_p99_s"] < RECOVERY_BOUND_S,
        ),
        Metric(
            "worker: cuts survived (booted, nothing half-written left, integrity ok)",
            totals["cuts"],
            "cuts",
            target=f"{cuts}",
            met=totals["cuts"] == cuts,
        ),
        Metric("worker: bundles reported sealed", totals["sealed"], "bundles"),
    ]
    res.metrics += verifier_metrics(totals, "worker: ")
    res.metrics += [
        Metric("worker: recovery at boot, p50", totals["recovery_p50_s"], "s"),
        Metric(
            "worker: recovery at boot, p99",
            totals["recovery_p99_s"],
            "s",
            target=f"< {RECOVERY_BOUND_S:g} s",
            met=totals["recovery_p99_s"] < RECOVERY_BOUND_S,
        ),
        Metric(
            "syncs per sealed bundle",
            cost["per_bundle"],
            "syncs",
            baseline=cost["minimum_per_bundle"],
            baseline_name="the least that makes a bundle durable",
            target="<= 2x the least",
            met=cost["per_bundle"] <= 2 * cost["minimum_per_bundle"],
        ),
    ]
    res.notes.append(
        f"capsight run: uploads paced at 1 Mbit/s, a manual capture asked at each boot, the cut "
        f"up to 12 s after the run started; checked after the last boot: {problems}"
    )
    res.notes.append(
        f"ran {time.perf_counter() - start:.0f} s; the worker's ledger of sealed bundles lives on "
        "the real disk, off the filesystem that is cut; syncs counted by the filesystem while "
        f"{cost['bundles']} bundles were sealed: {cost['syncs']}; the least per bundle is one "
        "fsync per file in it (the manifest included), one of its folder, one of the folder it "
        "is renamed into, one journal commit; recovery at boot is opening the journal and "
        "running recovery on the filesystem just remounted"
    )
    return res
