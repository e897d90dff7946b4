"""Datasets as the trainer sees them: an export manifest (:mod:`cloud_sink.datasets`, the one
module of the sink the trainer imports), checked whole before any worker starts, and decoded into
arrays at the model's input size through the model card's own preprocessing.

``--dataset`` is a folder holding ``manifest.json`` or a NAME under the datasets root
(``NAME`` = its newest version, ``NAME@3`` = version 3).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloud_sink.datasets import NONE, Item, LeakError, Manifest, check_no_leak

MAX_PROBLEMS_SHOWN = 8


class DatasetError(ValueError):
    """The dataset cannot be trained on; the message says every reason found (up to a few)."""


def datasets_root(root: str | os.PathLike[str] | None = None) -> Path:
    return Path(root or os.environ.get("CAPSIGHT_DATASETS") or "datasets").expanduser()


def resolve(dataset: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of ``dataset`` (a folder, or NAME / NAME@VERSION under the datasets root)."""
    p = Path(dataset).expanduser()
    if (p / "manifest.json").is_file():
        return p
    if p.is_file() and p.name == "manifest.json":
        return p.parent
    name, _, version = dataset.partition("@")
    base = datasets_root(root) / name
    if version:
        folder = base / f"v{version.lstrip('v')}"
        if not (folder / "manifest.json").is_file():
            raise DatasetError(f"dataset {name} has no version {version} in {base}")
        return folder
    versions = sorted(
        (int(v.name[1:]), v)
        for v in (base.iterdir() if base.is_dir() else [])
        if v.name[:1] == "v" and v.name[1:].isdigit() and (v / "manifest.json").is_file()
    )
    if not versions:
        raise DatasetError(
            f"{dataset!r} is neither a dataset folder (with manifest.json) nor a dataset name "
            f"under {datasets_root(root)}"
        )
    return versions[-1][1]


@dataclass
class Dataset:
    root: Path
    manifest: Manifest

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def split(self, name: str) -> list[Item]:
        return sorted((i for i in self.manifest.items if i.split == name), key=lambda i: i.item_id)

    def gtins(self) -> list[str]:
        return [self.manifest.gtins.get(c, "") if c else "" for c in self.classes]

    def digest(self) -> str:
        return self.manifest.digest()


def open_dataset(
    dataset: str,
    *,
    root: str | os.PathLike[str] | None = None,
    allow_empty_classes: bool = False,
    test_only: bool = False,
    added: bool = False,
) -> Dataset:
    """Read and check a dataset; :class:`DatasetError` lists what is wrong: missing frames,
    hashes that do not match, labels outside the catalogue, a class with no training item,
    a test frame that is also in training or validation, a store on both sides.
    ``test_only``: a test set for the gate (no training split needed). ``added``: data to add
    to another dataset's training (:func:`combine_datasets`: no split needed)."""
    folder = resolve(dataset, root)
    try:
        manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    except ValidationError as exc:
        raise DatasetError(f"{folder}/manifest.json is not a dataset manifest: {exc}") from None
    problems: list[str] = []
    classes = manifest.classes
    if not classes or classes[0] != NONE:
        problems.append('the class list must start with "" (no product)')
    if len(set(classes)) != len(classes):
        problems.append("the class list names a class twice")
    known = set(classes)
    try:
        check_no_leak(manifest.items)
    except LeakError as exc:
        problems.append(str(exc))
    ids = Counter(i.item_id for i in manifest.items)
    problems += [f"item {k} appears {n} times" for k, n in ids.items() if n > 1]
    by_hash: dict[str, set[str]] = {}
    missing = mismatched = 0
    for item in manifest.items:
        if item.label.sku not in known:
            problems.append(
                f"item {item.item_id}: label {item.label.sku!r} is not in the catalogue "
                f"({len(known) - 1} SKUs)"
            )
        path = folder / item.frame
        if ".." in Path(item.frame).parts or Path(item.frame).is_absolute():
            problems.append(f"item {item.item_id}: frame path {item.frame!r} leaves the dataset")
            continue
        try:
            data = path.read_bytes()
        except OSError:
            missing += 1
            if missing <= 3:
                problems.append(f"item {item.item_id}: frame {item.frame} is missing")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != item.sha256:
            mismatched += 1
            if mismatched <= 3:
                problems.append(f"item {item.item_id}: {item.frame} does not match its sha256")
        by_hash.setdefault(digest, set()).add(item.split)
    if missing > 3:
        problems.append(f"... {missing} frames missing in all")
    if mismatched > 3:
        problems.append(f"... {mismatched} frames whose sha256 does not match in all")
    leaked = sum(1 for splits in by_hash.values() if "test" in splits and len(splits) > 1)
    if leaked:
        problems.append(
            f"{leaked} test frame(s) also appear in training or validation (same bytes): the "
            "test set would flatter the model"
        )
    train = [i for i in manifest.items if i.split == "train"]
    if not train and not test_only and not added:
        problems.append("no training items")
    if not added and not any(i.split == "test" for i in manifest.items):
        problems.append("no test items: the gate would have nothing to judge on")
    counts = Counter(i.label.sku for i in train)
    empty = [c for c in classes if c in known and counts[c] == 0]
    if empty and train and not allow_empty_classes and not test_only:
        shown = ", ".join(repr(c) for c in empty[:5]) + (" ..." if len(empty) > 5 else "")
        problems.append(
            f"{len(empty)} class(es) have no training item ({shown}); train on a dataset that "
            "covers the catalogue, or pass --allow-empty-classes to keep them untrained"
        )
    if problems:
        head = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(head)
        raise DatasetError(
            f"{folder} cannot be trained on:\n  - "
            + "\n  - ".join(head)
            + (f"\n  ({more} more)" if more else "")
        )
    return Dataset(folder, manifest)


@dataclass
class Arrays:
    """A split decoded at the model's input size (BGR ``uint8`` N x H x W x 3), its class
    indices, boxes (x, y, w, h as fractions of the frame) and whether each has a box."""

    images: Any
    labels: Any
    boxes: Any
    has_box: Any
    items: list[Item]


def decode(ds: Dataset, items: list[Item], width: int, height: int) -> Arrays:
    """Decode ``items`` resized (area) to ``width`` x ``height``: the first step of the card's
    :func:`~capsight_edge.runtime.card.to_input`, done once instead of every epoch."""
    import cv2
    import numpy as np

    index = {c: k for k, c in enumerate(ds.classes)}
    n = len(items)
    images = np.empty((n, height, width, 3), np.uint8)
    labels = np.empty(n, np.int64)
    boxes = np.zeros((n, 4), np.float32)
    has_box = np.zeros(n, bool)
    for k, item in enumerate(items):
        img = cv2.imread(str(ds.root / item.frame), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"item {item.item_id}: {item.frame} is not a readable image")
        images[k] = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        labels[k] = index[item.label.sku]
        if item.label.sku and item.label.box:
            x, y, w, h = item.label.box
            boxes[k] = (x / item.width, y / item.height, w / item.width, h / item.height)
            has_box[k] = True
    return Arrays(images, labels, boxes, has_box, items)


def combine_datasets(
    name: str,
    base: Dataset,
    added: list[Dataset],
    *,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """A new dataset ``name`` (its next version under the datasets root): every item of
    ``base`` on its own split, and every item of each ``added`` dataset in training (its stores
    too: a store stays wholly on one side). For adding what a fleet captured to what the team had,
    when the test set that judges lives elsewhere. The class lists must be the same. Refused: an
    added store on the base's validation or test side (its items would be on two sides), and a
    frame in two of the datasets (the same bytes would train twice). Frames are hard-linked
    (copied across filesystems)."""
    import json
    import shutil
    import time

    from cloud_sink.datasets import versions, write_manifest

    for ds in added:
        if ds.classes != base.classes:
            raise DatasetError(f"{ds.root}: its classes are not {base.root}'s (another catalogue?)")
    stores: dict[str, Any] = dict(base.manifest.stores)
    for ds in added:
        clash = sorted(s for s in ds.manifest.stores if stores.get(s, "train") != "train")
        if clash:
            raise DatasetError(
                f"store(s) {', '.join(clash)} of {ds.root} are on a validation or test side of "
                f"{base.root}: their items would be on two sides"
            )
        stores.update(dict.fromkeys(ds.manifest.stores, "train"))
    held_out = {i.sha256 for i in base.manifest.items if i.split != "train"}
    clash_n = sum(1 for ds in added for i in ds.manifest.items if i.sha256 in held_out)
    if clash_n:
        raise DatasetError(
            f"{clash_n} frame(s) of the added datasets are frames of {base.root}'s validation or "
            "test split (same bytes): training on them would flatter the model"
        )
    seen: set[str] = set()
    for ds in [base, *added]:
        twice = {i.sha256 for i in ds.manifest.items} & seen
        if twice:
            raise DatasetError(
                f"{len(twice)} frame(s) of {ds.root} are in another of the datasets too (same "
                "bytes): they would train twice"
            )
        seen |= {i.sha256 for i in ds.manifest.items}
    folder_base = datasets_root(root) / name
    version = (versions(folder_base) or [0])[-1] + 1
    tmp = folder_base / f".v{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    items: list[Item] = []
    for k, ds in enumerate([base, *added]):
        prefix = f"{k}-{ds.manifest.name}-v{ds.manifest.version}"
        for item in ds.manifest.items:
            dest = tmp / "frames" / prefix / item.frame
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(ds.root / item.frame, dest)
            except OSError:
                shutil.copyfile(ds.root / item.frame, dest)
            update = {
                "item_id": f"{prefix}/{item.item_id}",
                "frame": f"frames/{prefix}/{item.frame}",
            }
            if k:
                update["split"] = "train"
            items.append(item.model_copy(update=update))
    manifest = Manifest(
        name=name,
        version=version,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        classes=base.classes,
        gtins={**base.manifest.gtins},
        items=items,
        stores=stores,
        notes=json.dumps(
            {
                "combined": [f"{d.manifest.name}@{d.manifest.version}" for d in [base, *added]],
                "added_to_train": [d.digest() for d in added],
                "base": base.digest(),
            }
        ),
    )
    write_manifest(tmp, manifest)
    folder = folder_base / f"v{version}"
    os.replace(tmp, folder)
    return folder
