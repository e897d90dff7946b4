"""The model card: how to feed a product-recognition model and read what it says.

Every consumer of a model reads its card and nothing else: the cart's runtime, the sink's
pre-labelling (the teacher) and the trainer's gate. Nobody hard-codes an input size, a colour
order or a normalisation. The trainer writes the card beside the model (``MODEL.card.json``) and
inside it (ONNX metadata, key :data:`ONNX_KEY`)::

    {"name": "recogniser", "version": "2026-12-03.1", "task": "capsight.product_recognition/1",
     "input": {"name": "image", "width": 112, "height": 112, "layout": "NCHW",
               "color": "RGB", "scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5],
               "std": [0.25, 0.25, 0.25]},
     "outputs": {"scores": "scores", "boxes": "boxes"},
     "labels": ["", "sku-0001", ...], "gtins": ["", "04006381333931", ...],
     "dataset": {"name": "baseline", "version": 1, "sha256": "..."},
     "metrics": {"accuracy": 0.93, ...}, "precision": "fp32", "opset": 18}

``scores`` is ``[N, len(labels)]`` (probabilities; label ``""`` is "no product"), ``boxes`` is
``[N, 4]``: x, y, width, height as fractions of the frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TASK = "capsight.product_recognition/1"
ONNX_KEY = "capsight.card"  # the card's JSON in the ONNX model's metadata_props


class CardInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    width: int = Field(ge=8, le=4096)
    height: int = Field(ge=8, le=4096)
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1 / 255
    mean: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default=[1.0, 1.0, 1.0], min_length=3, max_length=3)


class CardOutputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scores: str = "scores"
    boxes: str = "boxes"


class CardDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int
    sha256: str


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    task: Literal["capsight.product_recognition/1"] = "capsight.product_recognition/1"
    input: CardInput
    outputs: CardOutputs = CardOutputs()
    labels: list[str] = Field(min_length=2)
    #: The GTIN-14 of each label ("" for "no product"); empty when the model's maker had none.
    gtins: list[str] = []
    architecture: str = ""
    precision: Literal["fp32", "int8"] = "fp32"
    opset: int | None = None
    dataset: CardDataset | None = None
    metrics: dict[str, float] = {}
    created_utc: str = ""


def card_path(model: str | os.PathLike[str]) -> Path:
    p = Path(model)
    return p.with_name(p.stem + ".card.json")


def write_card(model: str | os.PathLike[str], card: dict[str, Any] | ModelCard) -> Path:
    """Write the card beside ``model`` (checked first)."""
    checked = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
    path = card_path(model)
    path.write_text(json.dumps(checked.model_dump(exclude_none=True), indent=1))
    return path


def read_card(model: str | os.PathLike[str]) -> ModelCard:
    """The card beside ``model``, else the one inside it (ONNX metadata). Raises
    ``FileNotFoundError`` when there is neither, ``pydantic.ValidationError`` when it is not a
    card."""
    beside = card_path(model)
    if beside.is_file():
        return ModelCard.model_validate_json(beside.read_bytes())
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == ONNX_KEY:
            return ModelCard.model_validate_json(prop.value)
    raise FileNotFoundError(f"{model}: no model card beside it ({beside.name}) or inside it")


def to_input(images: list[Any], spec: CardInput) -> Any:
    """BGR ``uint8`` frames of any size -> the model's input batch as its card says: resized
    (area), colour order, ``* scale``, ``(x - mean) / std``, NCHW ``float32``. The trainer feeds
    its model through this same function, so training and every consumer agree."""
    import cv2
    import numpy as np

    small = np.empty((len(images), spec.height, spec.width, 3), np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if (h, w) == (spec.height, spec.width):
            small[i] = img
            continue
        # Area averaging in two steps: first by the largest whole factor k (OpenCV's fast path
        # for whole factors; the last w % k columns and h % k rows are dropped), then to the
        # model's size. Near a plain INTER_AREA (within a grey level on average) at about half
        # its cost on a 720p frame, where the plain resize was half of the teacher's time.
        k = min(w // spec.width, h // spec.height)
        if k >= 2:
            img = cv2.resize(
                img[: h - h % k, : w - w % k], (w // k, h // k), interpolation=cv2.INTER_AREA
            )
        small[i] = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    if spec.color == "RGB":
        small = small[..., ::-1]
    # (x * scale - mean) / std as one multiply-add per value, NCHW.
    gain = (spec.scale / np.array(spec.std, np.float32)).astype(np.float32)
    shift = (np.array(spec.mean, np.float32) / np.array(spec.std, np.float32)).astype(np.float32)
    out = small.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    out *= gain[None, :, None, None]
    out -= shift[None, :, None, None]
    return out


def check_io(session: Any, card: ModelCard) -> str | None:
    """Why an onnxruntime session does not match its card (input name and shape, output
    names), or None when it does."""
    inputs = {i.name: i for i in session.get_inputs()}
    spec = card.input
    if spec.name not in inputs:
        return f"no input named {spec.name!r} (has {list(inputs)})"
    shape = inputs[spec.name].shape
    want = [None, 3, spec.height, spec.width]
    if len(shape) != 4 or any(
        isinstance(s, int) and w is not None and s != w for s, w in zip(shape, want, strict=True)
    ):
        return f"input shape {shape} is not [N, 3, {spec.height}, {spec.width}] as its card says"
    outputs = {o.name for o in session.get_outputs()}
    for name in (card.outputs.scores, card.outputs.boxes):
        if name not in outputs:
            return f"no output named {name!r} (has {sorted(outputs)})"
    return None
