"""Recorder benchmarks: the encoders here, the pre-roll strategies, the cart's AI while we record,
and how fast a bundle is sealed.

- encoders: every encoder that opens on this machine, at 640x480 and 1280x720 on synthetic scene
  frames: frames per second of CPU, CPU per frame, bytes per second at the default quality.
- preroll: keeping 3 s of pre-roll at 720p15 by encoding continuously into a packet ring, vs
  keeping raw I420 frames and encoding them only when a clip opens.
- inference_regression: the reference inference loop (its own process, 1 thread, 15 Hz, alive
  for the whole session) with collection off, vs while the Collector and the Recorder record
  720p15 with the CPU encoder, the conditions in turn; the same with the cart's ModelRuntime (a
  recogniser pulled from a real registry) as the AI. Where a hardware encoder opens, also while
  recording with it (target <= 1.02x).
- gpu_inference: the reference CNN on the GPU, collection off vs recording (skipped without one).
- seal_latency: from the end of a clip's post-roll to its bundle sealed.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_camera import _frames, _publisher
from benchmarks.plots import save_plot
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _scaled(frames: list[Any], size: tuple[int, int]) -> list[Any]:
    import cv2

    return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]


@benchmark("encoders")
def bench_encoders(ctx: BenchContext) -> BenchResult:
    from capsight_edge.profile.schema import ENCODERS
    from capsight_edge.recorder.encoders import VideoEncoder
    from capsight_edge.recorder.probe import probe_encoder

    n = 30 if ctx.quick else 90
    frames = _frames("active", n)
    res = BenchResult(
        "encoders",
        f"every encoder that opens here, {n} synthetic-scene frames, "
        "default quality (balanced), 15 fps",
    )
    baseline: dict[tuple[int, int], float] = {}
    for name in ("libx264", *[e for e in ENCODERS if e != "libx264"]):
        probe = probe_encoder(name)
        if not probe.opens:
            res.notes.append(f"{name}: {probe.reason}")
            continue
        for size in ((640, 480), (1280, 720)):
            imgs = _scaled(frames, size)
            enc = VideoEncoder(name, size[0], size[1], 15.0)
            total = 0
            c0 = time.process_time()
            for i, img in enumerate(imgs):
                total += sum(len(p.data) for p in enc.encode(img, int(i / 15 * 1e9)))
            total += sum(len(p.data) for p in enc.flush())
            cpu_ms = (time.process_time() - c0) * 1000 / len(imgs)
            if name == "libx264":
                baseline[size] = cpu_ms
            label = f"{name} {size[0]}x{size[1]}"
            res.metrics += [
                Metric(f"{label}: CPU per frame", cpu_ms, "ms", baseline.get(size), "libx264"),
                Metric(f"{label}: frames per CPU-second", 1000 / cpu_ms, "fps"),
                Metric(f"{label}: bytes per second at 15 fps", total / (len(imgs) / 15), "B/s"),
            ]
    res.notes.append("CPU per frame includes the BGR to YUV conversion the encoder needs")
    return res


@benchmark("preroll")
def bench_preroll(ctx: BenchContext) -> BenchResult:
    from capsight_edge.recorder.encoders import VideoEncoder
    from capsight_edge.recorder.outputs import PacketRing, RawRing, i420_to_bgr

    seconds = 6 if ctx.quick else 20
    frames = _frames("active", 150)
    n = seconds * 15
    res = BenchResult(
        "preroll",
        f"keeping 3 s of pre-roll at 1280x720, 15 fps, over {seconds} s "
        "of frames with no clip open; then opening one clip",
    )
    enc = VideoEncoder("libx264", 1280, 720, 15.0)
    ring = PacketRing(4.0)
    c0 = time.process_time()
    for i in range(n):
        ring.write(enc.encode(frames[i % len(frames)], int(i / 15 * 1e9)))
    encoded_cpu = (time.process_time() - c0) / seconds
    raw = RawRing(3.5)
    c0 = time.process_time()
    for i in range(n):
        raw.push(frames[i % len(frames)], int(i / 15 * 1e9))
    raw_cpu = (time.process_time() - c0) / seconds
    c0 = time.process_time()
    burst = VideoEncoder("libx264", 1280, 720, 15.0)
    for t, img in raw.since(int((seconds - 3) * 1e9)):
        burst.encode(i420_to_bgr(img), t)
    burst_s = time.process_time() - c0
    res.metrics += [
        Metric("continuous encode into a packet ring: CPU", 100 * encoded_cpu, "% of one core"),
        Metric(
            "raw I420 ring: CPU",
            100 * raw_cpu,
            "% of one core",
            100 * encoded_cpu,
            "continuous encode",
        ),
        Metric("packet ring memory", ring.bytes / 2**20, "MiB"),
        Metric("raw ring memory", raw.bytes / 2**20, "MiB", ring.bytes / 2**20, "packet ring"),
        Metric(
            "raw ring: CPU to encode the pre-roll when a clip opens", 1000 * burst_s, "ms of CPU"
        ),
    ]
    breakeven = burst_s / max(1e-9, encoded_cpu - raw_cpu)
    res.notes.append(
        f"raw wins on CPU unless clips open more often than every {breakeven:.0f} s of cart time"
    )

    def draw(ax: Any) -> None:
        points = (
            ("continuous encode, packet ring", 100 * encoded_cpu, ring.bytes / 2**20),
            ("raw I420 ring", 100 * raw_cpu, raw.bytes / 2**20),
        )
        for label, cpu, mib in points:
            ax.scatter([mib], [cpu], s=60, label=label)
        ax.set_xlabel("memory held for 3 s of pre-roll (MiB)")
        ax.set_ylabel("CPU with no clip open (% of one core)")
        ax.set_title(
            f"preroll at 1280x720, 15 fps (raw: + {1000 * burst_s:.0f} ms of CPU per clip)",
            fontsize=9,
        )
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)

    res.plots.append(save_plot(ctx, "preroll_cpu_memory", draw))
    return res


class RunqueueWait:
    """How long the thread that made it has waited for a core while runnable, in ns over its
    life (``/proc/thread-self/schedstat``, Linux with scheduler statistics; ``ns()`` is None
    elsewhere). The file is opened once: a read is then a couple of microseconds, against tens
    for an open each time, and it is taken twice around every inference step."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def ns(self) -> int | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 128, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _infer_proc(bus_q: Any, cmd_q: Any, out_q: Any, model: str, backend: str = "") -> None:
    """The inference loop in its own process, for the whole session: each number from
    ``cmd_q`` is one window of that many seconds, answered on ``out_q``; None ends it.
    ``backend``: "" (onnxruntime on the CPU, as a CPU cart), "onnxruntime-cuda" or "torch-cuda"
    (``benchmarks.gpu``)."""
    from capsight_edge.runtime.inference import InferenceLoop

    providers = ["CUDAExecutionProvider"] if backend == "onnxruntime-cuda" else None
    loop = InferenceLoop(bus_q.get(timeout=60), model, rate_hz=15.0, threads=1, providers=providers)
    if backend == "torch-cuda":
        import cv2
        import numpy as np

        from benchmarks.gpu import TorchReference

        net = TorchReference(model, "cuda")
        probe = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        want = loop.session.run(None, {"input": probe})[0]
        if not np.allclose(net(probe), want, atol=1e-3):
            raise RuntimeError("the PyTorch reference CNN does not match onnxruntime's")

        def step(image: Any) -> Any:
            small = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
            return net((small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy())

        loop.step = step  # type: ignore[method-assign]
    # Each step's wait for a core: a step's time is its own CPU plus the time it was runnable
    # while other threads held both cores (what a scheduler, not the memory system, adds).
    waits_ms: list[float] = []
    inner, wait = loop.step, RunqueueWait()  # this thread's: the loop runs in it

    def timed(image: Any) -> Any:
        before = wait.ns()
        out = inner(image)
        after = wait.ns()
        if before is not None and after is not None:
            waits_ms.append((after - before) / 1e6)
        return out

    loop.step = timed  # type: ignore[method-assign]
    loop.run(1.0)  # warm up
    out_q.put("ready")
    while (seconds := cmd_q.get()) is not None:
        skipped = loop.reader.skipped
        loop.stats = type(loop.stats)()
        waits_ms.clear()
        stats = loop.run(seconds)
        stats.skipped_frames -= skipped  # the reader counts over its life
        out_q.put(
            {**stats.summary(), "latencies_ms": list(stats.latencies_ms), "waits_ms": waits_ms[:]}
        )
    wait.close()
    loop.close()


@dataclass(frozen=True)
class Condition:
    """What runs beside the inference loop in a window: nothing (``mode`` None), or the
    Collector and a Recorder with that pre-roll ``mode``, a clip open if ``recording``,
    ``encoders`` its preference list (default: libx264 alone, the CPU encoder)."""

    mode: str | None = None
    recording: bool = False
    encoders: tuple[str, ...] = ("libx264",)


OFF = Condition()
RECORDING = Condition("raw", True)


def _conditions(hw: list[str], idle_preroll: bool = False) -> dict[str, Condition]:
    """Collection off and recording with libx264; continuous pre-roll encoding with no clip
    open if ``idle_preroll``; recording with the hardware encoders ``hw`` if any open."""
    conditions = {"off": OFF, "recording": RECORDING}
    if idle_preroll:
        conditions["idle pre-roll"] = Condition("encoded")
    if hw:
        conditions["hardware"] = Condition("raw", True, tuple(hw))
    return conditions


def _interleaved(
    model: str,
    conditions: dict[str, Condition],
    seconds: float,
    windows: int,
    backend: str = "",
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """One inference process and one camera for the whole session; ``seconds`` of each
    condition, in ``windows`` windows taken in turn (the order rotating from one round to the
    next), each condition's windows pooled. Only the inference steps inside a window count: a
    Recorder's start and stop fall between windows. A drift of the machine meets every
    condition alike. Returns, per condition, the pooled inference figures and the recorder's
    (summed over its windows)."""
    ctx = mp.get_context("spawn")
    name_q, stop, bus_q, cmd_q, out_q = (
        ctx.Queue(),
        ctx.Event(),
        ctx.Queue(),
        ctx.Queue(),
        ctx.Queue(),
    )
    pub = ctx.Process(target=_publisher, args=(name_q, stop, "active", 15.0), daemon=True)
    pub.start()
    infer = None
    stats: dict[str, list[dict[str, Any]]] = {label: [] for label in conditions}
    extras: dict[str, dict[str, Any]] = {label: {} for label in conditions}
    try:
        name = name_q.get(timeout=120)
        infer = ctx.Process(
            target=_infer_proc, args=(bus_q, cmd_q, out_q, model, backend), daemon=True
        )
        infer.start()
        bus_q.put(name)
        if out_q.get(timeout=120) != "ready":
            raise RuntimeError("the inference process did not start")
        labels = list(conditions)
        for w in range(windows):
            for label in labels[w % len(labels) :] + labels[: w % len(labels)]:
                with _beside(conditions[label], name) as extra:
                    cmd_q.put(seconds / windows)
                    stats[label].append(out_q.get(timeout=seconds / windows + 120))
                for k, v in extra.items():
                    old = extras[label].get(k, 0)
                    extras[label][k] = (old + v) if isinstance(v, int) else v
        cmd_q.put(None)
        infer.join(10)
    finally:
        stop.set()
        pub.join(10)
        if infer is not None and infer.is_alive():
            infer.kill()
    return {label: (_pooled(stats[label]), extras[label]) for label in conditions}


@contextlib.contextmanager
def _beside(cond: Condition, bus_name: str) -> Iterator[dict[str, Any]]:
    """The Collector and Recorder of ``cond`` running for the block (nothing if ``mode`` is
    None); afterwards the dict yielded holds the recorder's figures."""
    import dataclasses

    from capsight_edge.collector import Collector
    from capsight_edge.profile import load_profile
    from capsight_edge.recorder.recorder import Recorder
    from capsight_edge.triggers.engine import Decision

    extra: dict[str, Any] = {}
    if cond.mode is None:
        yield extra
        return
    tmp = tempfile.mkdtemp(prefix="capsight-bench-")
    profile = load_profile("hw_profiles/sim.toml", data_dir=tmp)
    profile = dataclasses.replace(
        profile, encoder=dataclasses.replace(profile.encoder, preference=list(cond.encoders))
    )
    collector = Collector(profile)
    collector.start(bus_name=bus_name)
    recorder = Recorder(
        profile, bus_name=bus_name, width=1280, height=720, fps=15.0, preroll_mode=cond.mode
    )
    try:
        recorder.start()
        if cond.recording:
            now = time.monotonic_ns()
            recorder.on_decision(
                Decision("fire", "bench", 1, now, {}, "", clip_start_ns=now - 3_000_000_000)
            )
        yield extra
        if cond.recording:
            now = time.monotonic_ns()
            recorder.on_decision(
                Decision("end", "bench", 1, now, {}, "", clip_start_ns=now, clip_end_ns=now)
            )
    finally:
        recorder.stop()
        collector.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    extra.update(sealed=len(recorder.sealed), encoder=recorder.encoder_name, **recorder.stats)


def _pooled(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows of one condition as one: their latencies together, their counts summed."""
    from capsight_edge.runtime.inference import InferenceStats

    stats = InferenceStats([x for c in cases for x in c["latencies_ms"]])
    stats.late, stats.skipped_frames, stats.no_frame = (
        sum(c[k] for c in cases) for k in ("late", "skipped_frames", "no_frame")
    )
    waits = [x for c in cases for x in c.get("waits_ms", [])]
    return {**stats.summary(), "latencies_ms": stats.latencies_ms, "waits_ms": waits}


def _wait_metrics(case: dict[str, Any], off: dict[str, Any], label: str) -> list[Metric]:
    """The steps' waits for a core under ``label`` against collection off (none where the
    kernel keeps no scheduler statistics, or a step went unmeasured)."""
    ours, base = case.get("waits_ms", []), off.get("waits_ms", [])
    if not ours or not base or len(ours) != len(case["latencies_ms"]):
        return []
    return [
        Metric(
            f"wait for a core per step, mean, {label}",
            sum(ours) / len(ours),
            "ms",
            sum(base) / len(base),
            "off",
        ),
        Metric(
            f"steps that waited over 1 ms for a core, {label}",
            sum(w > 1.0 for w in ours),
            "steps",
            sum(w > 1.0 for w in base),
            "off",
        ),
    ]


#: Fewest inference steps a p99 verdict rests on: at 400 the p99 is the 4th slowest step; at
#: 60 (a 4 s window at 15 Hz, as --quick had then) it is the slowest one, and two quick tries
#: of the same code gave 1.55x and 1.06x. (--quick now has 3 s, 45 steps, and no verdict.)
MIN_P99_STEPS = 400


def _p99_verdict(
    rec: dict[str, Any], off: dict[str, Any], limit: float, notes: list[str]
) -> bool | None:
    """Whether ``rec``'s p99 is within ``limit`` times ``off``'s, or None (no verdict, with a
    note) when either rests on fewer than MIN_P99_STEPS steps."""
    steps = min(len(rec["latencies_ms"]), len(off["latencies_ms"]))
    if steps < MIN_P99_STEPS:
        note = (
            f"no p99 verdict: {steps} steps in a condition, fewer than the {MIN_P99_STEPS} a p99 "
            "needs to be more than the slowest few steps (a full run has them)"
        )
        if note not in notes:
            notes.append(note)
        return None
    return bool(rec["p99_ms"] / off["p99_ms"] <= limit)


@benchmark("inference_regression")
def bench_inference_regression(ctx: BenchContext) -> BenchResult:
    from capsight_edge.runtime.inference import build_reference_cnn

    # Full runs: 60 s of each condition in 6 windows of 10 s, one inference process throughout,
    # the conditions in turn (900 steps each, so the p99 is the 10th slowest). Before: a window
    # of 30 s each gave 1.06x and 1.23x in two runs of the same code; windows of 10 s with a
    # fresh inference process each gave 0.86x to 1.45x in four tries on this machine.
    seconds, windows = (3.0, 1) if ctx.quick else (60.0, 6)
    model = str(build_reference_cnn(Path(tempfile.mkdtemp()) / "reference_cnn.onnx"))
    res = BenchResult(
        "inference_regression",
        "reference inference loop (0.3 GMAC CNN, 1 thread, "
        f"15 Hz, own process) for {seconds:.0f} s of each: collection off vs the "
        "Collector recording 1280x720 at 15 fps with the CPU encoder (libx264)"
        + (
            f", in {windows} windows each, taken in turn by one inference process"
            if windows > 1
            else ""
        ),
    )
    hw = hardware_encoders()
    # (--quick leaves the idle pre-roll case out: a smoke run)
    runs = _interleaved(model, _conditions(hw, idle_preroll=not ctx.quick), seconds, windows)
    (off, _), (raw_rec, raw_extra) = runs["off"], runs["recording"]
    base_p99 = off["p99_ms"]
    res.metrics += [
        Metric("p50, collection off", off["p50_ms"], "ms"),
        Metric("p99, collection off", base_p99, "ms"),
        Metric("p50, recording (CPU encoder)", raw_rec["p50_ms"], "ms", off["p50_ms"], "off"),
        Metric(
            "p99, recording (CPU encoder)",
            raw_rec["p99_ms"],
            "ms",
            base_p99,
            "off",
            "<= 1.10x",
            _p99_verdict(raw_rec, off, 1.10, res.notes),
        ),
        *(
            [
                Metric(
                    "p99, idle with continuous pre-roll encoding",
                    runs["idle pre-roll"][0]["p99_ms"],
                    "ms",
                    base_p99,
                    "off",
                )
            ]
            if "idle pre-roll" in runs
            else []
        ),
        Metric(
            "inference frames skipped, off / recording",
            raw_rec["skipped_frames"],
            "frames",
            off["skipped_frames"],
            "off",
        ),
        Metric("late inference steps, recording", raw_rec["late"], "steps", off["late"], "off"),
        Metric("frames the encoder skipped while recording", raw_extra.get("skipped", 0), "frames"),
    ]
    waits = _wait_metrics(raw_rec, off, "recording (CPU encoder)")
    res.metrics += waits
    if waits:  # the note explains these metrics: only beside them
        res.notes.append(
            "wait for a core: the time a step's thread was runnable but not running "
            "(/proc/thread-self/schedstat), the part of a step's time that other threads add "
            "through the scheduler; the rest is the step's own CPU"
        )

    def draw(ax: Any) -> None:
        for label, case in (("collection off", off), ("recording (CPU encoder)", raw_rec)):
            xs = sorted(case["latencies_ms"])
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
        ax.axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("inference latency (ms)")
        ax.set_ylabel("share of steps at or under (dashed: p99)")
        ax.set_title(
            f"inference_regression: reference CNN, 15 Hz, {seconds:.0f} s each", fontsize=9
        )
        ax.legend(fontsize=8, loc="lower right")

    res.plots.append(save_plot(ctx, "inference_latency_cdf", draw))
    if ctx.quick:
        res.notes.append(
            "--quick: the ModelRuntime pair and the idle pre-roll case are left out (full runs "
            "measure them)"
        )
    else:
        res.metrics += _model_runtime_pair(seconds, windows)
    _with_hardware_encoder(res, runs, hw)
    res.notes.append(f"recording run: {raw_extra}")
    return res


def _model_runtime_pair(seconds: float, windows: int) -> list[Metric]:
    """The same, with the cart's real ModelRuntime as the AI (the recogniser it pulled from a
    real registry and verified), its health watch included."""
    from benchmarks.push import served_registry

    root = Path(tempfile.mkdtemp(prefix="capsight-runtime-"))
    with served_registry(root) as served:
        rt = served.runtime(root / "cart")
        rt.pull()
        rt.close()
    runs = _interleaved(str(root / "cart"), {"off": OFF, "recording": RECORDING}, seconds, windows)
    (rt_off, _), (rt_rec, _) = runs["off"], runs["recording"]
    return [
        Metric("ModelRuntime p99, collection off", rt_off["p99_ms"], "ms"),
        Metric(
            "ModelRuntime p99, recording (CPU encoder)",
            rt_rec["p99_ms"],
            "ms",
            rt_off["p99_ms"],
            "off",
            "<= 1.10x",
            _p99_verdict(rt_rec, rt_off, 1.10, []),
        ),
    ]


def _with_hardware_encoder(
    res: BenchResult, runs: dict[str, tuple[dict[str, Any], dict[str, Any]]], hw: list[str]
) -> None:
    """The inference p99 while recording with the hardware encoder (``runs["hardware"]``),
    against collection off in the same session (target <= 1.02x), or a note naming each
    hardware encoder's probe error."""
    if "hardware" not in runs:
        res.notes.append(
            "hardware encoder: none opens here, so the <= 1.02x figure cannot be measured "
            f"({_why_no_hardware_encoder()})"
        )
        return
    rec, extra = runs["hardware"]
    off = runs["off"][0]
    res.metrics.append(
        Metric(
            f"p99, recording ({extra.get('encoder', hw[0])}, the hardware encoder)",
            rec["p99_ms"],
            "ms",
            off["p99_ms"],
            "off",
            "<= 1.02x",
            _p99_verdict(rec, off, 1.02, res.notes),
        )
    )


def hardware_encoders() -> list[str]:
    """The hardware encoders that open here, in the registry's order."""
    from capsight_edge.recorder.encoders import BACKENDS
    from capsight_edge.recorder.probe import probe_encoder

    return [n for n, (_, _, _, is_hw) in BACKENDS.items() if is_hw and probe_encoder(n).opens]


def _why_no_hardware_encoder() -> str:
    from capsight_edge.recorder.encoders import BACKENDS
    from capsight_edge.recorder.probe import probe_encoder

    return "; ".join(
        f"{n}: {probe_encoder(n).reason}" for n, (_, _, _, is_hw) in BACKENDS.items() if is_hw
    )


@benchmark("gpu_inference")
def bench_gpu_inference(ctx: BenchContext) -> BenchResult:
    """The reference CNN on the GPU (batch 1, 15 Hz, its own process), collection off vs
    recording 720p15 with the hardware encoder where one opens (target <= 1.02x), and with the
    CPU encoder, in turn as in ``inference_regression``. Skipped, with the reason, where there
    is no GPU."""
    from benchmarks.gpu import gpu_backend, gpu_name
    from capsight_edge.runtime.inference import build_reference_cnn

    backend, why = gpu_backend()
    res = BenchResult(
        "gpu_inference",
        "reference CNN on the GPU (batch 1, 15 Hz, own process): collection off vs recording "
        "1280x720 at 15 fps",
    )
    if not backend:
        res.notes.append(f"skipped: no GPU inference here ({why})")
        return res
    # 30 s of each in 3 windows: the device tool lends a GPU for minutes, not an hour
    seconds, windows = (6.0, 1) if ctx.quick else (30.0, 3)
    model = str(build_reference_cnn(Path(tempfile.mkdtemp()) / "reference_cnn.onnx"))
    hw = hardware_encoders()
    runs = _interleaved(model, _conditions(hw), seconds, windows, backend)
    (off, _), (cpu_rec, cpu_extra) = runs["off"], runs["recording"]
    base = off["p99_ms"]
    res.metrics += [
        Metric("p50, collection off", off["p50_ms"], "ms"),
        Metric("p99, collection off", base, "ms"),
        Metric(
            f"p99, recording ({cpu_extra.get('encoder', 'libx264')}, the CPU encoder)",
            cpu_rec["p99_ms"],
            "ms",
            base,
            "off",
        ),
    ]
    _with_hardware_encoder(res, runs, hw)
    res.notes.append(
        f"ran on {gpu_name() or 'the GPU'} through {backend}" + (f" ({why})" if why else "")
    )
    return res


@benchmark("seal_latency")
def bench_seal_latency(ctx: BenchContext) -> BenchResult:
    from capsight_edge.collector import Collector
    from capsight_edge.profile import load_profile
    from capsight_edge.recorder.recorder import Recorder
    from capsight_edge.sensors.ring import SensorRing
    from capsight_edge.triggers.engine import Decision

    clips = 1 if ctx.quick else 6
    ctxm = mp.get_context("spawn")
    name_q, stop = ctxm.Queue(), ctxm.Event()
    pub = ctxm.Process(target=_publisher, args=(name_q, stop, "active", 15.0), daemon=True)
    pub.start()
    name = name_q.get(timeout=120)
    tmp = tempfile.mkdtemp(prefix="capsight-bench-")
    profile = load_profile("hw_profiles/sim.toml", data_dir=tmp)
    ring = SensorRing()
    collector = Collector(profile, sensor_log=ring)
    collector.start(bus_name=name)
    recorder = Recorder(profile, bus_name=name, width=1280, height=720, fps=15.0, sensors=ring)
    recorder.start()
    try:
        time.sleep(3.5)
        for _ in range(clips):
            now = time.monotonic_ns()
            recorder.on_decision(
                Decision("fire", "bench", 1, now, {}, "", clip_start_ns=now - 3_000_000_000)
            )
            time.sleep(2.0)
            now = time.monotonic_ns()
            recorder.on_decision(
                Decision(
                    "end",
                    "bench",
                    1,
                    now,
                    {},
                    "",
                    clip_start_ns=now,
                    clip_end_ns=now + 1_000_000_000,
                )
            )
            deadline = time.monotonic() + 15
            while recorder.busy and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        recorder.stop()
        collector.stop()
        stop.set()
        pub.join(10)
    delays = sorted(recorder.seal_delays_s)
    res = BenchResult(
        "seal_latency",
        f"{clips} clips of about 6 s at 1280x720, 15 fps: time "
        "from the end of the post-roll to the bundle sealed (fsync'd and renamed)",
    )
    worst = delays[-1] if delays else float("nan")
    res.metrics += [
        Metric("median", 1000 * delays[len(delays) // 2], "ms")
        if delays
        else Metric("median", float("nan"), "ms"),
        Metric("worst", 1000 * worst, "ms", target="<= 1000", met=worst <= 1.0),
        Metric("bundles sealed", len(recorder.sealed), "bundles"),
    ]
    return res
