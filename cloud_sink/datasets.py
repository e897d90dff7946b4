"""The dataset manifest: what an export writes and what the trainer reads. The one module of the
sink the trainer imports (pydantic and the standard library only).

An export is immutable and versioned: ``DIR/datasets/NAME/vN/manifest.json`` plus the frames
it names (``frames/<item>.jpg``, each with its sha256). Items carry the label (SKU or ``""``
for "no product", box in pixels), where it came from (source, model version, score, reviewer,
seconds spent), the split, and the time-aligned sensor values of its moment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
NONE = ""  # the label of a frame that shows no product
Split = Literal["train", "val", "test"]
Source = Literal["barcode", "weight", "scale", "teacher", "vlm", "human", "render"]
#: The sources that label without a person (cloud_sink.prelabel).
MACHINE_SOURCES = ("barcode", "weight", "scale", "teacher", "vlm")


def box_iou(a: list[int] | list[float], b: list[int] | list[float]) -> float:
    """Intersection over union of two boxes as a label stores them (x, y, width, height)."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Label(_Model):
    sku: Annotated[str, Field(max_length=64)]
    #: x, y, width, height in pixels of the frame; None for "no product" (or no box known).
    box: Annotated[list[int], Field(min_length=4, max_length=4)] | None = None
    source: Source
    model_version: str = ""
    score: Annotated[float, Field(ge=0, le=1)] = 1.0
    reviewer: str = ""
    review_s: Annotated[float, Field(ge=0)] = 0.0


class Moment(_Model):
    """The sensors at the item's moment (what the trainer may use beside the pixels)."""

    weight_delta_g: float | None = None
    accel_g: list[float] | None = None
    position_mm: list[float] | None = None
    reasons: list[str] = []


class Item(_Model):
    item_id: str
    frame: str  # path relative to the manifest's folder
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    width: Annotated[int, Field(ge=1)]
    height: Annotated[int, Field(ge=1)]
    label: Label
    split: Split
    store_id: str
    device_id: str = ""
    bundle_id: str = ""
    t_ns: int = 0
    t_utc: str = ""
    moment: Moment = Moment()
    #: What the dataset knows of the conditions the frame was taken in (a rendered set knows
    #: them all: ``lighting``, ``blur``, ``glare``, ``occlusion``, ``crumpled``); the release
    #: gate's slices. Empty for fleet frames: the gate measures what it can from the pixels.
    conditions: dict[str, str] = {}
    #: For a frame of a reviewed item's track: that item's id (one review labelled both).
    track_of: str = ""


class Manifest(_Model):
    schema_version: Literal[1] = 1
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    version: Annotated[int, Field(ge=1)]
    created_utc: str
    #: Every SKU of the catalogue, in the order a model's class index follows; "" is class 0.
    classes: list[str]
    #: The GTIN-14 of each SKU of ``classes`` (from the catalogue): what a model card lists.
    gtins: dict[str, str] = {}
    items: list[Item]
    #: Which stores went to which split (a store is wholly on one side: no leakage).
    stores: dict[str, Split]
    notes: str = ""

    def counts(self) -> dict[str, int]:
        out = {"train": 0, "val": 0, "test": 0}
        for item in self.items:
            out[item.split] += 1
        return out

    def digest(self) -> str:
        """sha256 of the manifest's canonical JSON: the dataset's identity in a model card."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class LeakError(ValueError):
    """A store appears in more than one split."""


def check_no_leak(items: list[Item]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        other = seen.setdefault(item.store_id, item.split)
        if other != item.split:
            raise LeakError(
                f"store {item.store_id} is in both {other} and {item.split}: a store must be "
                "wholly on one side"
            )


def load_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read a dataset manifest (a file, or the folder holding ``manifest.json``); ``verify``
    checks every frame's sha256 and that no store leaks across splits."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    manifest = Manifest.model_validate_json(p.read_bytes())
    check_no_leak(manifest.items)
    if verify:
        for item in manifest.items:
            data = (p.parent / item.frame).read_bytes()
            if hashlib.sha256(data).hexdigest() != item.sha256:
                raise ValueError(f"{item.frame}: sha256 does not match the manifest")
    return manifest


def versions(base: Path) -> list[int]:
    """The versions of the dataset whose folder is ``base`` (``base/v1``, ``base/v2``, ...)."""
    if not base.is_dir():
        return []
    return sorted(
        int(p.name[1:]) for p in base.iterdir() if p.name[:1] == "v" and p.name[1:].isdigit()
    )


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    check_no_leak(manifest.items)
    path = folder / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=1))
    os.replace(tmp, path)
    return path
