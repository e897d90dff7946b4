"""Every JSON record ``capsight-train --json`` writes, in the device CLI's one convention
(:mod:`capsight_edge.records`: JSON Lines, a ``type`` first, ``*_s`` seconds, ``*_utc`` times).
The JSON Schemas in ``schemas/train/`` are generated from these models (``python -m
trainer.records``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from capsight_edge.records import ErrorRecord, Record, emit

__all__ = ["ErrorRecord", "emit"]


class DatasetRenderedRecord(Record):
    type: Literal["dataset_rendered"] = "dataset_rendered"
    name: str
    version: int
    path: str
    items: int
    splits: dict[str, int]
    stores: dict[str, str]
    classes: int
    digest: str
    duration_s: float


class DatasetCombinedRecord(DatasetRenderedRecord):
    """A dataset made of others (``capsight-train combine-datasets``)."""

    type: Literal["dataset_combined"] = "dataset_combined"  # type: ignore[assignment]
    combined: list[str]


class TrainEpochRecord(Record):
    type: Literal["train_epoch"] = "train_epoch"
    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    samples: int
    epoch_s: float
    samples_per_s: float
    resumed_from: int | None


class TrainResultRecord(Record):
    """The whole report of a run (``train.json`` in the run's folder holds the same)."""

    type: Literal["train_result"] = "train_result"
    out: str
    dataset: dict[str, Any]
    settings: dict[str, Any]
    cluster: Literal["local", "existing"]
    workers: int
    use_gpu: bool
    epochs: list[dict[str, Any]]
    restarts: int
    start_s: float
    train_s: float
    export_s: float
    parity: dict[str, float]
    models: dict[str, Any]
    card_version: str


class EvalRecord(Record):
    """The gate's verdict (``eval.json`` holds the same)."""

    type: Literal["eval"] = "eval"
    decision: Literal["release", "reject"]
    reasons: list[str]
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    config: dict[str, Any]
    test_sets: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    confusion: dict[str, Any]


class PublishedRecord(Record):
    type: Literal["published"] = "published"
    name: str
    version: str
    registry: str
    files: list[str]
    targets_version: int


class KeyRecord(Record):
    type: Literal["key"] = "key"
    path: str
    public_path: str
    keyid: str


class KeysRotatedRecord(Record):
    """A new root naming new keys (``capsight-train rotate-keys``)."""

    type: Literal["keys_rotated"] = "keys_rotated"
    root_version: int
    root: str
    ml_keyid: str
    online_keyid: str
    targets_version: int


RECORDS: list[type[Record]] = [
    DatasetRenderedRecord,
    DatasetCombinedRecord,
    TrainEpochRecord,
    TrainResultRecord,
    EvalRecord,
    PublishedRecord,
    KeyRecord,
    KeysRotatedRecord,
    ErrorRecord,
]


def schemas() -> dict[str, dict[str, Any]]:
    return {r.model_fields["type"].default: r.model_json_schema() for r in RECORDS}


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, schema in sorted(schemas().items()):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_schemas(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas/train")):
        print(p)
