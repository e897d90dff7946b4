"""Export: ONNX (explicit opset, dynamic batch, ``onnx.checker``), parity with torch on the test
set, int8 static quantisation (QDQ, calibrated on training frames), and the model card inside the
ONNX file (metadata) and beside it (JSON)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.runtime.card import ONNX_KEY, ModelCard, card_path, to_input, write_card

OPSET = 18
#: Parity bounds between torch and onnxruntime (fp32): probabilities and box fractions.
MAX_ABS_ERROR = 1e-4


class ExportError(RuntimeError):
    pass


@dataclass
class Parity:
    items: int
    max_abs_error: float
    max_rel_error: float
    argmax_agreement: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "argmax_agreement": self.argmax_agreement,
        }


def embed_card(path: Path, card: ModelCard) -> None:
    """Write ``card`` into the ONNX file's metadata and beside it."""
    import onnx

    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == ONNX_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, card.model_dump_json(exclude_none=True)
    onnx.save(proto, str(path))
    write_card(path, card)


def export_onnx(model: Any, card: ModelCard, path: Path) -> Path:
    """The model as ONNX (opset :data:`OPSET`, batch dimension ``N`` dynamic), checked."""
    import contextlib
    import io
    import warnings

    import onnx
    import torch

    from trainer.models import Deployed

    # The exporter warns about every torchvision op it could not register (we use none).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    deployed = Deployed(model).eval()
    spec = card.input
    example = torch.zeros(2, 3, spec.height, spec.width)
    batch = torch.export.Dim("N", min=1, max=4096)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),  # the exporter's own chatter
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deployed,
            (example,),
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=[spec.name],
            output_names=[card.outputs.scores, card.outputs.boxes],
            dynamic_shapes={"image": {0: batch}},
            external_data=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims[0].dim_param:
        raise ExportError("the exported model's batch dimension is not dynamic")
    embed_card(path, card.model_copy(update={"opset": OPSET}))
    return path


def session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, card: ModelCard, images: Any, batch: int = 64) -> tuple[Any, Any]:
    """Scores and boxes of an ONNX model for BGR frames (any size), fed as its card says."""
    import numpy as np

    sess = session(path, threads=2)
    scores, boxes = [], []
    for s in range(0, len(images), batch):
        x = to_input(list(images[s : s + batch]), card.input)
        a, b = sess.run([card.outputs.scores, card.outputs.boxes], {card.input.name: x})
        scores.append(a)
        boxes.append(b)
    if not scores:
        return np.zeros((0, len(card.labels)), np.float32), np.zeros((0, 4), np.float32)
    return np.concatenate(scores), np.concatenate(boxes)


def parity(model: Any, path: Path, card: ModelCard, images: Any) -> Parity:
    """torch vs onnxruntime on ``images``: the largest absolute and relative differences of
    every output; :class:`ExportError` when beyond :data:`MAX_ABS_ERROR`."""
    import numpy as np
    import torch

    from trainer.models import Deployed

    deployed = Deployed(model).eval()
    ref_s, ref_b = [], []
    with torch.no_grad():
        for s in range(0, len(images), 64):
            a, b = deployed(torch.from_numpy(to_input(list(images[s : s + 64]), card.input)))
            ref_s.append(a.numpy())
            ref_b.append(b.numpy())
    want = np.concatenate([np.concatenate(ref_s), np.concatenate(ref_b)], axis=1)
    got_s, got_b = run_onnx(path, card, images)
    got = np.concatenate([got_s, got_b], axis=1)
    diff = np.abs(got - want)
    rel = diff / np.maximum(np.abs(want), 1e-3)
    k = len(card.labels)
    result = Parity(
        items=len(images),
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        max_rel_error=float(rel.max()) if rel.size else 0.0,
        argmax_agreement=float((got[:, :k].argmax(1) == want[:, :k].argmax(1)).mean())
        if len(images)
        else 1.0,
    )
    if result.max_abs_error > MAX_ABS_ERROR:
        raise ExportError(
            f"onnxruntime differs from torch by up to {result.max_abs_error:.2e} "
            f"(bound {MAX_ABS_ERROR:.0e}) on {len(images)} test frames"
        )
    return result


def quantize_int8(src: Path, dst: Path, card: ModelCard, calibration: Any) -> Path:
    """Static int8 quantisation (QDQ: int8 weights per channel, uint8 activations), the
    activation ranges calibrated on ``calibration`` (training frames, BGR at any size)."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {card.input.name: to_input(list(calibration[s : s + 16]), card.input)}
                    for s in range(0, len(calibration), 16)
                ]
            )

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            # The softmax and the box head's output stay in float: the scores must sum to 1.
            nodes_to_exclude=[],
            op_types_to_quantize=["Conv", "MatMul", "Gemm", "Relu", "GlobalAveragePool"],
        )
    embed_card(dst, card.model_copy(update={"precision": "int8"}))
    return dst


def speed(
    path: Path, card: ModelCard, *, seconds: float = 2.0, runs: int = 1000, batch: int = 1
) -> float:
    """Inferences per second of ``path`` on one core (one intra-op thread), batch ``batch``:
    ``runs`` runs, or as many as ``seconds`` allow when the model is slower."""
    import numpy as np

    sess = session(path, threads=1)
    x = (
        np.random.default_rng(0)
        .normal(0, 1, (batch, 3, card.input.height, card.input.width))
        .astype(np.float32)
    )
    feed = {card.input.name: x}
    for _ in range(5):
        sess.run(None, feed)
    n, t0 = 0, time.perf_counter()
    while n < runs and time.perf_counter() - t0 < seconds:
        sess.run(None, feed)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def load_card(path: Path) -> ModelCard:
    return ModelCard.model_validate_json(card_path(path).read_bytes())


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1))
