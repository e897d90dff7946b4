"""``capsight-train run``: train through Ray, then export, check parity, quantise, measure, and
write the run's report. What a run leaves in ``--out``:

- ``model.pt`` (the final checkpoint's weights), ``progress.jsonl`` (one line per epoch);
- ``model.onnx`` + ``model.card.json``, ``model-int8.onnx`` + ``model-int8.card.json``;
- ``train.json``: settings, dataset identity, per-epoch figures, the start cost, parity, the
  accuracy of fp32 and int8 on the dataset's own test split, and their speed on one core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from capsight_edge.runtime.card import CardDataset, ModelCard
from trainer.data import Dataset, decode
from trainer.train import EpochReport, TrainSettings, train_ray

CALIBRATION_FRAMES = 256


def load_model(arch: str, classes: int, state_path: Path) -> Any:
    import torch

    from trainer.models import build

    model = build(arch, classes)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def finish(
    ds: Dataset, settings: TrainSettings, state_path: Path, *, version: str | None = None
) -> dict[str, Any]:
    """Export, parity, int8, accuracy and speed of a trained model (the part of a run after
    training, also used on its own by the benchmark)."""
    import numpy as np

    from trainer import __version__
    from trainer.evaluate import load_tests, score
    from trainer.export import embed_card, export_onnx, parity, quantize_int8, speed
    from trainer.models import ARCHS, card_input

    out = Path(settings.out)
    model = load_model(settings.arch, len(ds.classes), state_path)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    card = ModelCard(
        name=settings.arch,
        version=version or time.strftime("%Y%m%d.%H%M%S", time.gmtime()),
        input=card_input(settings.arch),  # type: ignore[arg-type]
        labels=ds.classes,
        gtins=ds.gtins(),
        architecture=f"capsight-{settings.arch} (trainer {__version__})",
        dataset=CardDataset(name=ds.manifest.name, version=ds.manifest.version, sha256=ds.digest()),
        created_utc=created,
    )
    fp32 = export_onnx(model, card, out / "model.onnx")
    tests = load_tests([ds])
    par = parity(model, fp32, card, tests.images)
    size = ARCHS[settings.arch].size
    train_items = ds.split("train")
    pick = np.random.default_rng(settings.seed).permutation(len(train_items))[:CALIBRATION_FRAMES]
    calib = decode(ds, [train_items[int(k)] for k in sorted(pick)], size, size).images
    int8 = quantize_int8(fp32, out / "model-int8.onnx", card, calib)
    from capsight_edge.runtime.card import to_input
    from trainer.publish import write_golden

    golden_inputs = to_input(list(tests.images[:4]), card.input)
    figures: dict[str, Any] = {}
    for tag, path in (("fp32", fp32), ("int8", int8)):
        s = score(path, tests)
        figures[tag] = {
            "accuracy": s.accuracy,
            "box_iou": s.box_iou,
            "inferences_per_s_1core": speed(path, card),
            "bytes": path.stat().st_size,
        }
        metrics = {"accuracy": round(s.accuracy, 4), "box_iou": round(s.box_iou, 4)}
        embed_card(
            path,
            card.model_copy(
                update={"precision": tag, "opset": card.opset or 18, "metrics": metrics}
            ),
        )
        write_golden(path, golden_inputs)
    figures["int8_accuracy_loss"] = figures["fp32"]["accuracy"] - figures["int8"]["accuracy"]
    figures["int8_speedup"] = (
        figures["int8"]["inferences_per_s_1core"] / figures["fp32"]["inferences_per_s_1core"]
    )
    return {"parity": par.as_dict(), "models": figures, "card_version": card.version}


def run(
    ds: Dataset,
    settings: TrainSettings,
    *,
    address: str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    out = Path(settings.out)
    t0 = time.perf_counter()
    result = train_ray(settings, address=address, on_epoch=on_epoch)
    t_train = time.perf_counter() - t0
    if on_stage:
        on_stage("export, parity, int8")
    after = finish(ds, settings, result.state_path, version=version)
    report = {
        "type": "train_result",
        "out": str(out),
        "dataset": {
            "path": str(ds.root),
            "name": ds.manifest.name,
            "version": ds.manifest.version,
            "sha256": ds.digest(),
            "counts": ds.manifest.counts(),
            "classes": len(ds.classes),
        },
        "settings": asdict(settings),
        "cluster": "existing" if address else "local",
        "workers": result.workers,
        "use_gpu": result.use_gpu,
        "epochs": [asdict(e) for e in result.epochs],
        "restarts": result.restarts,
        "start_s": round(result.start_s, 3),
        "train_s": round(t_train, 3),
        "export_s": round(time.perf_counter() - t0 - t_train, 3),
        **after,
    }
    (out / "train.json").write_text(json.dumps(report, indent=1))
    return report
