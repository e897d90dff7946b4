"""Training: Ray Train's overhead against a plain torch loop, and int8 against fp32.

The rendered baseline (``capsight-train render-dataset``: the fleet catalogue of the profile in
clean studio renders) is trained twice in this run, like for like: the same model, data, epochs,
global batch and seed, on the same two cores:

- plain: one process, the trainer's own loop without Ray, two torch threads, global batch B;
- Ray Train: ``TorchTrainer`` (V2) on a local cluster started for it, two workers of one thread
  and half a CPU each, batch B/2 per worker (global B), gradients all-reduced over gloo.

Figures: training frames per second (all epochs' frames over all epochs' time), in pairs of
trainings taken back to back, who goes first alternating (the target is on the median of the
pairs' ratios: Ray >= 0.8x plain), the fixed start cost of a Ray run (from the call to the first
step: starting Ray and the workers, each worker decoding the dataset; the median of the pairs'),
the per-worker loader's decode time, and, on the first Ray-trained model, inferences per second
on one core (batch 1) of the fp32 and the int8 (QDQ, calibrated on training frames) ONNX models
and their test accuracy. For comparison, the same fp32 and int8 figures for the teacher's larger
network (untrained weights: speed only), exported and quantised the same way on the same CPU."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark

#: Pairs of trainings (plain, Ray Train) in a full run and in --quick. One pair alone is noise on
#: these shared VMs: the same code's ratio came out from 0.72x to 1.01x in seven pairs taken one
#: afternoon (plain from 436 to 573 frames/s), and a committed run's single pair at 0.69x.
PAIRS, QUICK_PAIRS = 3, 1


def _int8_speed_of(arch: str, classes: list[str], root: Path) -> tuple[float, float]:
    """fp32 and int8 inferences/s (one core, batch 1) of network ``arch`` with untrained
    weights, exported and quantised as the trainer does (calibrated on random frames): how much
    int8 gains on this CPU for a network larger than the recogniser."""
    import numpy as np
    import torch

    from capsight_edge.runtime.card import ModelCard
    from trainer.export import export_onnx, quantize_int8, speed
    from trainer.models import build, card_input

    torch.manual_seed(0)
    card = ModelCard(
        name=arch,
        version="speed",
        input=card_input(arch),  # type: ignore[arg-type]
        labels=classes,
        architecture=f"capsight-{arch}, untrained",
    )
    folder = root / f"int8-{arch}"
    folder.mkdir()
    fp32 = export_onnx(build(arch, len(classes)).eval(), card, folder / "model.onnx")
    size = card.input.width
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(32)]
    int8 = quantize_int8(fp32, folder / "model-int8.onnx", card, calib)
    return speed(fp32, card, seconds=3.0), speed(int8, card, seconds=3.0)


@benchmark("train")
def bench_train(ctx: BenchContext) -> BenchResult:
    from capsight_edge.profile import load_profile
    from trainer.data import open_dataset
    from trainer.render import RenderSpec, render_dataset
    from trainer.run import finish
    from trainer.train import TrainSettings, train_plain, train_ray

    result = BenchResult("train", __doc__.split("\n\n")[0].strip())
    profile = load_profile(ctx.profile_path)
    root = Path(tempfile.mkdtemp(prefix="capsight-train-"))
    try:
        folder = render_dataset(
            RenderSpec(
                name="baseline",
                root=root / "datasets",
                catalogue_seed=profile.sim.catalogue_seed,
                catalogue_size=profile.sim.catalogue_size,
                views=8 if ctx.quick else 24,
            )
        )
        ds = open_dataset(str(folder))
        epochs, batch = (1, 32) if ctx.quick else (8, 32)
        ray_settings = TrainSettings(
            dataset=str(folder),
            out=str(root / "ray"),
            epochs=epochs,
            batch=batch // 2,
            workers=2,
            cpus_per_worker=0.5,
            threads=1,
        )
        plain_settings = replace(
            ray_settings, out=str(root / "plain"), batch=batch, workers=1, threads=2
        )

        def rate(epochs_: list) -> float:  # type: ignore[type-arg]
            return sum(e.samples for e in epochs_) / sum(e.epoch_s for e in epochs_)

        # Each pair sees one state of the machine's drifting speed; each trial has folders of
        # its own and Ray Train a local cluster started for it (train_ray stops it after).
        plains: list[float] = []
        rays = []
        for t in range(QUICK_PAIRS if ctx.quick else PAIRS):
            for side in ("plain", "ray") if t % 2 == 0 else ("ray", "plain"):
                if side == "plain":
                    plain = train_plain(replace(plain_settings, out=f"{root}/plain-{t}"))
                    plains.append(rate(plain.epochs))
                else:
                    rays.append(train_ray(replace(ray_settings, out=f"{root}/ray-{t}")))
        ray_rates = [rate(r.epochs) for r in rays]
        ratio = statistics.median(r / p for r, p in zip(ray_rates, plains, strict=True))
        result.metrics.append(
            Metric(
                "Ray Train, 2 workers vs the plain loop: median of the paired trials",
                round(ratio, 3),
                "x",
                1.0,
                "plain torch loop, 1 process, in the same pair",
                ">= 0.8x",
                ratio >= 0.8,
            )
        )
        result.metrics.append(
            Metric(
                "Ray Train, 2 workers: training throughput (median of the trials)",
                round(statistics.median(ray_rates), 1),
                "frames/s",
                round(statistics.median(plains), 1),
                "plain torch loop, 1 process (median of the trials)",
            )
        )
        result.metrics.append(
            Metric(
                "Ray Train: fixed start cost of a run (median of the trials)",
                round(statistics.median(r.start_s for r in rays), 1),
                "s",
            )
        )
        result.metrics.append(
            Metric(
                "per-worker loader: decoding the training split (median of the trials)",
                round(statistics.median(r.epochs[0].decode_s for r in rays), 2),
                "s",
            )
        )
        result.notes.append(
            "the pairs, plain then Ray Train frames/s (ratio): "
            + "; ".join(
                f"{p:.0f}, {r:.0f} ({r / p:.2f}x)" for p, r in zip(plains, ray_rates, strict=True)
            )
            + "; who went first alternated, plain first in the first pair"
        )
        # the first Ray Train trial's model goes on: export, int8, speed
        ray = rays[0]
        after = finish(ds, replace(ray_settings, out=str(ray.state_path.parent)), ray.state_path)
        fp32, int8 = after["models"]["fp32"], after["models"]["int8"]
        result.metrics.append(
            Metric(
                "int8 inference, 1 core, batch 1",
                round(int8["inferences_per_s_1core"], 1),
                "inferences/s",
                round(fp32["inferences_per_s_1core"], 1),
                "fp32",
                ">= 2x fp32",
                int8["inferences_per_s_1core"] >= 2 * fp32["inferences_per_s_1core"],
            )
        )
        loss_pts = 100 * (fp32["accuracy"] - int8["accuracy"])
        result.metrics.append(
            Metric(
                "int8 accuracy loss on the test split",
                round(loss_pts, 2),
                "points",
                None,
                "",
                "<= 1 point",
                loss_pts <= 1.0,
            )
        )
        if ctx.quick:
            result.notes.append(
                "--quick: the teacher's network's int8 comparison is left out (full runs have it)"
            )
        else:
            teacher_fp32, teacher_int8 = _int8_speed_of("teacher", ds.classes, root)
            result.metrics.append(
                Metric(
                    "int8 inference of the teacher's network, 1 core, batch 1 (for comparison)",
                    round(teacher_int8, 1),
                    "inferences/s",
                    round(teacher_fp32, 1),
                    "fp32",
                )
            )
        result.metrics.append(
            Metric(
                "recogniser fp32 on one core (a cart's CPU)",
                round(fp32["inferences_per_s_1core"], 1),
                "inferences/s",
                None,
                "",
                ">= 15 inferences/s",
                fp32["inferences_per_s_1core"] >= 15,
            )
        )
        result.metrics.append(
            Metric(
                "test accuracy fp32 (clean studio test split)",
                round(100 * fp32["accuracy"], 1),
                "%",
            )
        )
        result.metrics.append(
            Metric(
                "parity: max abs error torch vs onnxruntime", after["parity"]["max_abs_error"], ""
            )
        )
        c = ds.manifest.counts()
        result.notes.append(
            f"{c['train']} training frames, {len(ds.classes) - 1} SKUs, {epochs} epochs a "
            f"trial, global batch {batch}, seed 0; plain: 1 process x 2 threads; Ray: 2 "
            "workers x 1 thread (0.5 CPU each); data: a per-worker loader (each worker decodes "
            "the split once; Ray Data was not measured against it)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
