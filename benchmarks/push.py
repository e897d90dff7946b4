"""Models and a registry for the model-push tests and benchmarks, made here (no downloads).

:func:`make_recogniser`: the trainer's recogniser with seeded random weights, exported as the
trainer exports a model (card, golden self-test) with an ``eval.json`` that releases it (the gate
itself is tested on trained models). :func:`open_registry`: the keys, the registry and the sink's
online key, through the same functions the commands call; :func:`served_registry`: that registry
served by a real sink.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["", "sku-0000", "sku-0001", "sku-0002"]


def make_recogniser(
    folder: Path, version: str, seed: int, *, nan: bool = False, dead: bool = False
) -> Path:
    """``folder/model.onnx`` (random weights from ``seed``). ``nan``: answers NaN (fails its
    self-test); ``dead``: the same scores whatever the frame (passes its self-test)."""
    import torch

    from capsight_edge.runtime.card import ModelCard
    from trainer.export import export_onnx
    from trainer.models import build, card_input
    from trainer.publish import write_golden

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build("recogniser", len(LABELS)).eval()
    with torch.no_grad():
        if nan:
            model.cls.bias.fill_(float("nan"))
        if dead:
            model.cls.weight.zero_()
    card = ModelCard.model_validate(
        {
            "name": "recogniser",
            "version": version,
            "input": card_input("recogniser"),
            "labels": LABELS,
        }
    )
    path = export_onnx(model, card, folder / "model.onnx")
    spec = card.input
    inputs = np.random.default_rng(seed).normal(0, 1, (2, 3, spec.height, spec.width))
    write_golden(path, inputs.astype(np.float32))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "eval.json").write_text(
        json.dumps({"decision": "release", "reasons": [], "candidate": {"sha256": sha}})
    )
    return path


def open_registry(sink_data: Path, ml_key: Path) -> Path:
    """A registry in ``sink_data/registry`` (the ML team's key made at ``ml_key``, the sink's
    online key beside the registry); returns the root a cart is given."""
    from capsight_edge.runtime.trust import generate_key
    from cloud_sink.registry import keygen, registry_dir
    from trainer.publish import init_registry

    generate_key(ml_key)
    keygen(sink_data)
    folder = registry_dir(sink_data)
    return init_registry(folder, ml_key, folder / "online.pub.json")


@dataclass
class Served:
    registry: Any  # cloud_sink.registry.Registry
    sink: Any  # capsight_edge.localsink.LocalSink, started
    trusted_root: Path
    token: str  # a device token for "cart-bench"

    def runtime(self, cart: Path) -> Any:
        from capsight_edge.runtime.models import ModelRuntime

        return ModelRuntime(
            cart,
            device_id="cart-bench",
            registry_url=self.sink.url,
            trust_root=self.trusted_root,
            token=self.token,
        )


@contextlib.contextmanager
def served_registry(root: Path, versions: tuple[str, ...] = ("1",)) -> Iterator[Served]:
    """A real sink serving a registry with a recogniser per version published (``stable`` on
    the first); stopped on exit."""
    from capsight_edge.localsink import LocalSink
    from cloud_sink.registry import Registry
    from trainer.publish import publish

    sink = LocalSink(root / "sink")
    trusted = open_registry(root / "sink", root / "ml.key")
    registry = Registry(root / "sink")
    for seed, version in enumerate(versions, start=1):
        model = make_recogniser(root / f"v{version}", version, seed)
        publish(model, model.with_name("eval.json"), registry.folder, root / "ml.key")
    registry.promote("stable", "recogniser", versions[0], who="bench")
    token = sink.add_device("cart-bench")
    sink.start()
    try:
        yield Served(registry, sink, trusted, token)
    finally:
        sink.stop()
