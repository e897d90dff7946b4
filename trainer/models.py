"""The product-recognition models, written here (no downloaded weights): for a frame, which SKU
of the catalogue is held up or going into the basket (or none), and its box.

- ``recogniser``: the cart's model. Five strided 3x3 stages (16..128 channels) on a 112 x 112
  input; small enough for a cart's CPU (the benchmark measures it on one core).
- ``teacher``: the same task, wider and twice as deep on a 144 x 144 input, for pre-labelling.

Both return class logits and a box (x, y, w, h as fractions of the frame, through a sigmoid):
the class from globally pooled features, the box from the flattened last feature map (where the
product is matters for the box, not for the class). :class:`Deployed` wraps a model for export:
probabilities and box fractions, the outputs a model card names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Arch:
    name: str
    size: int  # input width = height
    channels: tuple[int, ...]
    convs_per_stage: int
    #: The input normalisation written into the card (RGB, * scale, (x - mean) / std).
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


ARCHS = {
    "recogniser": Arch("recogniser", 112, (16, 32, 64, 96, 128), 1),
    "teacher": Arch("teacher", 144, (32, 64, 128, 192, 256), 2),
}


def _stage(cin: int, cout: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    for _ in range(convs - 1):
        layers += [
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return layers


class Recogniser(nn.Module):
    def __init__(self, arch: Arch, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in arch.channels:
            layers += _stage(cin, c, arch.convs_per_stage)
            cin = c
        self.features = nn.Sequential(*layers)
        side = arch.size
        for _ in arch.channels:
            side = (side + 1) // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.cls = nn.Linear(cin, classes)
        self.box = nn.Sequential(
            nn.Conv2d(cin, 16, 1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(16 * side * side, 4),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(image)
        logits = self.cls(self.dropout(self.pool(f).flatten(1)))
        return logits, self.box(f)


class Deployed(nn.Module):
    """What the ONNX file computes: ``scores`` (softmax) and ``boxes`` (sigmoid fractions)."""

    def __init__(self, model: Recogniser) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, box = self.model(image)
        return torch.softmax(logits, dim=1), torch.sigmoid(box)


def build(arch: str, classes: int) -> Recogniser:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (choose from {sorted(ARCHS)})")
    return Recogniser(ARCHS[arch], classes)


def card_input(arch: str) -> dict[str, Any]:
    a = ARCHS[arch]
    return {
        "name": "image",
        "width": a.size,
        "height": a.size,
        "layout": "NCHW",
        "color": "RGB",
        "scale": 1 / 255,
        "mean": list(a.mean),
        "std": list(a.std),
    }
