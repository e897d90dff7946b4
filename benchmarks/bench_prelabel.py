"""Pre-labelling on a simulated fleet's captures, and what it saves a reviewer.

Three carts in three stores record for a while (`capsight run`), upload to a local sink
(`capsight upload now`), and the sink pre-labels what it stored with the fleet's catalogue
(barcode-as-label) and a teacher. Figures:

- the model stage (the teacher's preprocessing and inference, batched) in frames per second,
  beside the bare onnxruntime ``session.run`` on already prepared tensors of the same frames
  (the baseline: what our preprocessing costs on top);
- the end-to-end rate (read the sensor log, decode, model, JPEG and label writes);
- the simulated reviewer's verdicts (capsight_edge/demo/reviewer.py, its time model cited there):
  the share of pre-labels accepted unchanged, and reviewer seconds per item with the pre-labels
  against labelling the same items from scratch, per source;
- the same share from the same bundles pre-labelled by the read and the teacher alone (no box
  fitted to the clip, no catalogue weights): what the clip and the scale add
  (cloud_sink/evidence.py).

The teacher is trained in this run by the trainer (``trainer/``: the ``teacher`` architecture)
on frames rendered in the profile's store conditions (``render-dataset --store``), never on the
fleet's captures or their truth. The model stage's speed is also measured with the tiny
stand-in of ``benchmarks/teachers.py``, for comparison with earlier runs.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.registry import (
    BenchContext,
    BenchResult,
    Metric,
    SimCart,
    benchmark,
    capsight_cli,
    fleet_carts,
    record_carts,
)

#: The teacher's training: rendered views per SKU and epochs (--quick uses the tiny stand-in).
TEACHER_VIEWS, TEACHER_EPOCHS = 32, 20
#: The three carts of a full run; --quick records the fleet's first three (fleet_cost's, so that
#: a quick run records them once).
CARTS = [
    SimCart("bench-north", "store-north", 21),
    SimCart("bench-south", "store-south", 22),
    SimCart("bench-east", "store-east", 23),
]


def _upload(root: Path, sink: Any, carts: list[SimCart]) -> None:
    for device in (c.device for c in carts):
        token = root / f"{device}.token"
        token.write_text(sink.add_device(device))  # type: ignore[attr-defined]
        res = subprocess.run(
            capsight_cli(
                "upload",
                "now",
                "--uncapped",
                "--profile",
                str(root / "carts" / f"{device}.toml"),
                "--data",
                str(root / "carts" / device),
                "--sink",
                sink.url,
                "--token-file",
                str(token),
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(f"upload now failed: {res.stdout[-500:]} {res.stderr[-500:]}")


def _train_teacher(root: Path, ctx: BenchContext) -> tuple[Path, str]:
    """A teacher trained here on renders in the profile's store conditions (four rendered
    stores, split by store)."""
    from capsight_edge.profile import load_profile
    from capsight_edge.scene.conditions import StoreConditions
    from trainer.data import open_dataset
    from trainer.render import RenderSpec, render_dataset
    from trainer.run import finish
    from trainer.train import TrainSettings, train_plain

    profile = load_profile(ctx.profile_path)
    cond = StoreConditions.from_section(profile.sim.store_conditions)
    sides = {"render-1": "test", "render-2": "val", "render-3": "train", "render-4": "train"}
    folder = render_dataset(
        RenderSpec(
            name="teacher",
            root=root / "datasets",
            catalogue_seed=profile.sim.catalogue_seed,
            catalogue_size=profile.sim.catalogue_size,
            views=TEACHER_VIEWS,
            stores={s: (cond, side) for s, side in sides.items()},
        )
    )
    ds = open_dataset(str(folder))
    epochs = TEACHER_EPOCHS
    settings = TrainSettings(
        dataset=str(folder),
        out=str(root / "teacher"),
        arch="teacher",
        epochs=epochs,
        workers=1,
        threads=2,
    )
    start = time.perf_counter()
    trained = train_plain(settings)
    after = finish(ds, settings, trained.state_path, version="bench")
    acc = after["models"]["fp32"]["accuracy"]
    return root / "teacher" / "model.onnx", (
        f"the trainer's teacher architecture, {epochs} epochs on {ds.manifest.counts()['train']} "
        f"frames rendered in the profile's store conditions ({time.perf_counter() - start:.0f} s"
        f" to train and export), {acc:.1%} accurate on its rendered test store"
    )


@benchmark("prelabel", needs=("simulated carts",))
def bench_prelabel(ctx: BenchContext) -> BenchResult:
    import cv2
    import numpy as np

    from benchmarks.teachers import make_teacher
    from capsight_edge.demo import reviewer as sim
    from capsight_edge.devices.sim import fleet_catalogue
    from capsight_edge.localsink import LocalSink
    from capsight_edge.profile import load_profile
    from cloud_sink.blobs import LocalBlobStore
    from cloud_sink.catalogue import Catalogue
    from cloud_sink.index import Index
    from cloud_sink.labels import LabelStore
    from cloud_sink.prelabel import PrelabelConfig, Prelabeler
    from cloud_sink.teacher import Teacher

    result = BenchResult("prelabel", __doc__.split("\n\n")[0].strip())
    seconds = 12.0 if ctx.quick else 90.0
    root = Path(tempfile.mkdtemp(prefix="capsight-prelabel-"))
    try:
        # (--quick: the carts' cameras at 640x360 and 10 fps, as fleet_cost's: three carts at
        # full size kept both cores busy for the whole recording)
        carts = fleet_carts(3) if ctx.quick else CARTS
        reused = record_carts(ctx, carts, seconds, root / "carts", at_once=len(carts))
        sink = LocalSink(root / "sink").start()
        try:
            _upload(root, sink, carts)
            admin = sink.add_device("bench-admin", admin=True)
            sink.admin = admin
            sink.wait_ingested()
        finally:
            sink.stop()
        cat_file = root / "catalogue.json"
        cat_file.write_text(fleet_catalogue(load_profile(ctx.profile_path)).as_json())
        catalogue = Catalogue.load(cat_file)
        if ctx.quick:  # a teacher trained for one epoch recognises nothing either
            from benchmarks.teachers import make_teacher

            (root / "teacher").mkdir()
            teacher_path = make_teacher(root / "teacher", ["", *catalogue.skus], size=64)
            teacher_note = "--quick: the tiny stand-in teacher (benchmarks/teachers.py)"
        else:
            teacher_path, teacher_note = _train_teacher(root, ctx)
        teacher = Teacher(teacher_path)
        if teacher.labels != ["", *catalogue.skus]:
            raise RuntimeError("the trained teacher's labels are not the fleet catalogue's")
        plain_db = root / "plain-index.db"  # the same bundles, for the sources alone
        with (
            contextlib.closing(sqlite3.connect(root / "sink" / "index.db")) as src,
            contextlib.closing(sqlite3.connect(plain_db)) as dst,
        ):
            src.backup(dst)
        index = Index(root / "sink" / "index.db")
        blobs = LocalBlobStore(root / "sink" / "blobs" / "store")
        report = Prelabeler(index, blobs, catalogue, teacher).run()
        plain = Index(plain_db)
        unweighed = Catalogue([replace(p, weight_g=None) for p in catalogue.products])
        Prelabeler(plain, blobs, unweighed, teacher, PrelabelConfig(fit_boxes=False)).run()
        items = LabelStore(index).items(limit=100_000)
        if not items:
            raise RuntimeError("the fleet captured nothing worth a label")
        # The model stage alone, on the items' frames, repeated to at least 512 frames.
        frames = [
            cv2.imdecode(np.frombuffer(blobs.get_bytes(i["frame_key"]), np.uint8), cv2.IMREAD_COLOR)
            for i in items
        ]
        frames = (frames * (512 // len(frames) + 1))[:512]
        start = time.perf_counter()
        teacher.predict(frames)
        ours = len(frames) / (time.perf_counter() - start)
        prepared = [teacher._prepare(frames[i : i + 32]) for i in range(0, len(frames), 32)]
        name = teacher.card.input.name
        start = time.perf_counter()
        for batch in prepared:
            teacher.session.run(None, {name: batch})
        bare = len(frames) / (time.perf_counter() - start)
        result.metrics.append(
            Metric(
                "model stage (preprocess + inference)",
                round(ours, 1),
                "frames/s",
                round(bare, 1),
                "bare session.run",
                ">= 200 frames/s",
                ours >= 200,
            )
        )
        e2e = report.items / report.total_s if report.total_s else 0.0
        result.metrics.append(
            Metric("end to end (sensors, decode, model, writes)", round(e2e, 1), "frames/s")
        )
        result.metrics.append(Metric("bundles pre-labelled", report.bundles, "bundles"))
        result.metrics.append(Metric("frames worth a label", report.items, "frames"))
        result.metrics.append(
            Metric("frames skipped as empty background", report.empty_frames, "frames")
        )
        # The simulated reviewer, per source of the pre-label.
        truths = sim.Truths(blobs, root)
        by_source: dict[str, list[sim.Decision]] = {}
        for item in items:
            d = sim.review(item, truths.of(item))
            by_source.setdefault(item["source"] or "none", []).append(d)
        everything = [d for ds in by_source.values() for d in ds]
        s = sim.summary(everything)
        alone = sim.summary(
            [sim.review(i, truths.of(i)) for i in LabelStore(plain).items(limit=100_000)]
        )
        result.metrics.append(
            Metric(
                "pre-labels accepted unchanged",
                s["accepted_unchanged_pct"],
                "%",
                alone["accepted_unchanged_pct"],
                "read and teacher alone",
                ">= 70%",
                (s["accepted_unchanged_pct"] or 0) >= 70,
            )
        )
        result.metrics.append(
            Metric(
                "reviewer seconds per item, with pre-labels",
                round(s["reviewer_s"] / len(everything), 2),
                "s",
                round(s["from_scratch_s"] / len(everything), 2),
                "from scratch",
                "< from scratch",
                s["reviewer_s"] < s["from_scratch_s"],
            )
        )
        for source, ds in sorted(by_source.items()):
            part = sim.summary(ds)
            result.metrics.append(
                Metric(f"{source}: accepted unchanged", part["accepted_unchanged_pct"], "%")
            )
            result.metrics.append(
                Metric(
                    f"{source}: reviewer seconds per item",
                    round(part["reviewer_s"] / len(ds), 2),
                    "s",
                    round(part["from_scratch_s"] / len(ds), 2),
                    "from scratch",
                )
            )
        tiny = Teacher(make_teacher(root, ["", *catalogue.skus], size=64))
        start = time.perf_counter()
        tiny.predict(frames)
        result.metrics.append(
            Metric(
                "model stage with the tiny stand-in teacher",
                round(len(frames) / (time.perf_counter() - start), 1),
                "frames/s",
            )
        )
        result.notes.append(
            f"{len(carts)} carts x {seconds:.0f} s"
            + (" (--quick: cameras at 640x360 and 10 fps)" if ctx.quick else "")
            + (
                f", {reused} of them recorded earlier in this run by another benchmark"
                if reused
                else ""
            )
            + f"; teacher: {teacher_note}; reviewer time "
            f"model: {s['model']} (sources in capsight_edge/demo/reviewer.py)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
