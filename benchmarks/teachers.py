"""Tiny teacher models made here (no downloads), for the tests and the pre-label benchmark: the
mean colour of the frame through a fixed linear layer. A poor recogniser (the trainer makes real
ones) that exercises every path of a real one: batched input, a card, scores and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_teacher(
    folder: Path,
    labels: list[str],
    *,
    size: int = 32,
    channels: int = 3,
    nan: bool = False,
    version: str = "tiny-1",
) -> Path:
    """A tiny ONNX teacher: the mean colour of the frame through a fixed linear layer. It is a
    poor recogniser (the trainer makes real ones); it exercises every path of a real one."""
    import onnx
    from onnx import TensorProto, helper

    k = len(labels)
    rng = np.random.default_rng(7)
    w = rng.normal(0, 1, (channels, k)).astype(np.float32)
    b = np.zeros(k, np.float32)
    b[0] = 2.0 if not nan else 0.0  # "no product" wins on a neutral frame
    box_w = np.zeros((channels, 4), np.float32)
    box_b = np.array([0.3, 0.2, 0.3, 0.5], np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Gemm", ["flat", "BW", "BB"], ["boxes"]),
    ]
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten()),
        helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
        helper.make_tensor("BW", TensorProto.FLOAT, box_w.shape, box_w.flatten()),
        helper.make_tensor("BB", TensorProto.FLOAT, box_b.shape, box_b),
    ]
    if nan:
        inits.append(helper.make_tensor("N", TensorProto.FLOAT, [1], [float("nan")]))
        nodes.append(helper.make_node("Mul", ["probs", "N"], ["scores"]))
    else:
        nodes.append(helper.make_node("Identity", ["probs"], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "teacher",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / f"teacher-{version}.onnx"
    onnx.save(model, path)
    card = {
        "name": "tiny-teacher",
        "version": version,
        "task": "capsight.product_recognition/1",
        "input": {
            "name": "image",
            "width": size,
            "height": size,
            "layout": "NCHW",
            "color": "RGB",
            "scale": 1 / 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "outputs": {"scores": "scores", "boxes": "boxes"},
        "labels": labels,
    }
    path.with_name(path.stem + ".card.json").write_text(json.dumps(card))
    return path
