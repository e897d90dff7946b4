"""A teacher model for pre-labelling: any ONNX model with a capsight model card works.

The card (:mod:`capsight_edge.runtime.card`: ``MODEL.card.json`` beside ``MODEL.onnx``, or the
copy inside the model) says how to feed and read the model; the trainer writes it. The session
runs batched on the providers asked for (CPU by default). A model that does not load, whose
input is not what its card says, or that returns NaN or the wrong shapes raises
:class:`TeacherError` before anything is labelled with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capsight_edge.runtime.card import (
    TASK,
    ModelCard,
    card_path,
    check_io,
    read_card,
    to_input,
    write_card,
)

__all__ = ["TASK", "Prediction", "Teacher", "TeacherError", "card_path", "write_card"]


class TeacherError(ValueError):
    pass


@dataclass(frozen=True)
class Prediction:
    sku: str
    score: float
    box: list[int] | None  # pixels of the frame it was asked about; None for "no product"
    #: Where the box head puts a product, whatever the class says: the box a barcode-as-label
    #: takes (the read names the product; the teacher only has to find it).
    product_box: list[int] | None = None
    #: Every label's probability, in the model card's label order (what other evidence weighs).
    probs: tuple[float, ...] = ()
    #: Whether the boxes were fitted to the frame after the model (cloud_sink.evidence.fit_box).
    fitted: bool = False


class Teacher:
    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        providers: list[str] | None = None,
        batch: int = 32,
    ) -> None:
        path = Path(model)
        self.path = path
        try:
            self.card: ModelCard = read_card(path)
        except FileNotFoundError:
            raise TeacherError(f"{path}: no model card at {card_path(path)}") from None
        except ValidationError as exc:
            raise TeacherError(f"{card_path(path)}: not a capsight model card: {exc}") from None
        except Exception as exc:  # not an ONNX file at all
            raise TeacherError(f"{path}: the model does not load: {exc}") from None
        try:
            import onnxruntime as ort

            self.session = ort.InferenceSession(
                str(path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise TeacherError(f"{path}: the model does not load: {exc}") from None
        problem = check_io(self.session, self.card)
        if problem:
            raise TeacherError(f"{path}: {problem}")
        self.batch = max(1, batch)
        self.version = f"{self.card.name}:{self.card.version}"
        self.labels = list(self.card.labels)

    def _prepare(self, images: list[Any]) -> Any:
        return to_input(images, self.card.input)

    def predict(self, images: list[Any]) -> list[Prediction]:
        """One prediction per image (BGR ``uint8`` arrays, the frames' own size)."""
        preds: list[Prediction] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            preds += self._read(chunk, self._prepare(chunk))
        return preds

    def _read(self, chunk: list[Any], batch: Any) -> list[Prediction]:
        """Run the model on one prepared batch and read its answers for ``chunk``'s frames."""
        import numpy as np

        scores, boxes = self.session.run(
            [self.card.outputs.scores, self.card.outputs.boxes], {self.card.input.name: batch}
        )
        scores, boxes = np.asarray(scores), np.asarray(boxes)
        if scores.shape != (len(chunk), len(self.labels)) or boxes.shape != (len(chunk), 4):
            raise TeacherError(
                f"the model returned scores {scores.shape} and boxes {boxes.shape}; its card "
                f"says [{len(chunk)}, {len(self.labels)}] and [{len(chunk)}, 4]"
            )
        if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
            raise TeacherError("the model returned NaN or infinity")
        preds: list[Prediction] = []
        for img, s, b in zip(chunk, scores, boxes, strict=True):
            k = int(np.argmax(s))
            h, w = img.shape[:2]
            sku = self.labels[k]
            x0 = min(w - 1, int(np.clip(b[0], 0, 1) * w))
            y0 = min(h - 1, int(np.clip(b[1], 0, 1) * h))
            bw = max(1, min(w - x0, int(np.clip(b[2], 0, 1) * w)))
            bh = max(1, min(h - y0, int(np.clip(b[3], 0, 1) * h)))
            box = [x0, y0, bw, bh]
            probs = tuple(float(v) for v in np.clip(s, 0, 1))
            preds.append(Prediction(sku, probs[k], box if sku else None, box, probs))
        return preds
