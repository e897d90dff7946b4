"""Dataset export: an immutable, versioned snapshot of the reviewed labels.

``DIR/datasets/NAME/vN/`` holds ``manifest.json`` (:mod:`cloud_sink.datasets`, what the trainer
reads), ``coco.json`` (COCO detection: images, one box per labelled product, categories = SKUs),
``label-studio.json`` (tasks with the pre-label as a prediction and the review as the
annotation) and ``frames/``. A version is never written twice: each export is the next ``vN``.

Splits keep a store wholly on one side (no store's frames in both training and test). The test
set is fixed by the first version of a dataset: later versions carry exactly the same test
items, and new items from the test stores are left out rather than leak into training.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from cloud_sink.datasets import (
    MACHINE_SOURCES,
    NONE,
    Item,
    Label,
    Manifest,
    Moment,
    load_manifest,
    versions,
    write_manifest,
)
from cloud_sink.labels import LabelStore


class ExportError(ValueError):
    pass


#: The states of an item that has a pre-label and no review yet.
PRELABELLED = ("prelabelled", "quick_confirm", "needs_review")


def assign_stores(stores: list[str], *, test_stores: list[str] | None, seed: int) -> dict[str, str]:
    """Each store to one split: the given test stores (else about a quarter, at least one),
    one validation store when three or more remain, the rest training."""
    ordered = sorted(set(stores))
    if len(ordered) < 2:
        raise ExportError(
            f"the selection holds {len(ordered)} store(s): a split by store needs at least two "
            "(one to train on, one to test on)"
        )
    rng = random.Random(seed)
    if test_stores:
        unknown = set(test_stores) - set(ordered)
        if unknown:
            raise ExportError(f"test stores {sorted(unknown)} have no reviewed items")
        test = sorted(set(test_stores))
    else:
        test = sorted(rng.sample(ordered, max(1, len(ordered) // 4)))
    rest = [s for s in ordered if s not in test]
    if not rest:
        raise ExportError("every store is a test store: nothing is left to train on")
    val = [rng.choice(rest)] if len(rest) >= 3 else []
    return {s: "test" if s in test else "val" if s in val else "train" for s in ordered}


def export_dataset(
    index: Any,
    blobs: Any,
    root: str | os.PathLike[str],
    name: str,
    classes: list[str],
    *,
    test_stores: list[str] | None = None,
    seed: int = 0,
    stores: list[str] | None = None,
    gtins: dict[str, str] | None = None,
    prelabels: bool = False,
    bundles: set[tuple[str, str]] | None = None,
    all_train: bool = False,
) -> Path:
    """Write the next version of dataset ``name``; returns its folder. ExportError (nothing
    written) when the selection is empty or a split would leak. ``prelabels``: the items no
    one has reviewed yet, labelled by their pre-labels alone (to measure what review adds).
    ``bundles``: only the items of these (device, bundle) pairs. ``all_train``: every store in
    training, for data that joins another dataset whose test set lives elsewhere
    (``capsight-train combine-datasets``)."""
    base = Path(root) / "datasets" / name
    known = versions(base)
    store = LabelStore(index)
    states = PRELABELLED if prelabels else ("reviewed",)
    rows = [
        r
        for state in states
        for r in store.items(state=state, limit=100_000)
        if (not stores or r["store_id"] in stores)
        and (r["source"] or not prelabels)
        and (bundles is None or (r["device_id"], r["bundle_id"]) in bundles)
    ]
    if not rows:
        what = "pre-labelled" if prelabels else "reviewed"
        raise ExportError(f"no {what} items in the selection: nothing to export")
    fixed_test: dict[str, Item] = {}
    sides: dict[str, str]
    first = load_manifest(base / f"v{known[0]}", verify=False) if known else None
    if all_train:
        if first is not None and set(first.stores.values()) != {"train"}:
            raise ExportError(
                f"dataset {name} v{known[0]} has a test split: with --all-train its test items "
                "would train; export under another name"
            )
        sides = dict.fromkeys({r["store_id"] for r in rows}, "train")
    elif first is not None:  # the first version fixed the test set and the stores' sides
        sides = dict(first.stores)
        fixed_test = {i.item_id: i for i in first.items if i.split == "test"}
        for s in {r["store_id"] for r in rows} - set(sides):
            sides[s] = "train"  # a store seen for the first time trains
    else:
        sides = assign_stores([r["store_id"] for r in rows], test_stores=test_stores, seed=seed)
    version = (known[-1] + 1) if known else 1
    folder = base / f"v{version}"
    tmp = base / f".v{version}.partial"
    (tmp / "frames").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    valid = set(classes) | {NONE}
    for r in rows:
        split = sides[r["store_id"]]
        if split == "test" and fixed_test and r["item_id"] not in fixed_test:
            continue  # the test set is fixed: new test-store items stay out of every split
        sku = r["sku"] or NONE
        if sku not in valid:
            raise ExportError(f"item {r['item_id']}: SKU {sku!r} is not in the catalogue")
        moment = r["moment"] or {}
        label = Label(
            sku=sku,
            box=r["box"] if sku else None,
            source=r["source"] if r["source"] in MACHINE_SOURCES else "human",
            model_version=r["model_version"],
            score=min(1.0, max(0.0, float(r["score"]))),
            reviewer=r["reviewer"],
            review_s=float(r["review_s"]),
        )
        item = Item(
            item_id=r["item_id"],
            frame=f"frames/{r['item_id'].replace('~', '.')}.jpg",
            sha256=r["frame_sha256"],
            width=r["width"],
            height=r["height"],
            label=label,
            split=split,  # type: ignore[arg-type]
            store_id=r["store_id"],
            device_id=r["device_id"],
            bundle_id=r["bundle_id"],
            t_ns=r["t_ns"],
            t_utc=r["t_utc"],
            moment=Moment(
                weight_delta_g=moment.get("weight_delta_g"),
                accel_g=moment.get("accel_g"),
                position_mm=moment.get("position_mm"),
                reasons=moment.get("reasons", []),
            ),
        )
        items.append(_copy_frame(blobs, r["frame_key"], item, tmp))
        # The track takes the item's label: its own box (where the product is in that frame)
        # for a product, none for "no product"; the sensors of its moment are the item's.
        for k, t in enumerate(r.get("track") or [], start=1):
            track_id = f"{r['item_id']}~{k}"
            if split == "test" and fixed_test and track_id not in fixed_test:
                continue
            tracked = item.model_copy(
                update={
                    "item_id": track_id,
                    "frame": f"frames/{track_id.replace('~', '.')}.jpg",
                    "sha256": t["frame_sha256"],
                    "t_ns": t["t_ns"],
                    "t_utc": "",
                    "label": label.model_copy(
                        update={"box": t.get("box") if sku else None, "review_s": 0.0}
                    ),
                    "track_of": r["item_id"],
                }
            )
            items.append(_copy_frame(blobs, t["frame_key"], tracked, tmp))
    missing = set(fixed_test) - {i.item_id for i in items}
    if missing:
        raise ExportError(f"{len(missing)} items of the fixed test set are no longer reviewed")
    manifest = Manifest(
        name=name,
        version=version,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        classes=[NONE, *[c for c in classes if c != NONE]],
        gtins=dict(gtins or {}),
        items=items,
        stores={s: sides[s] for s in sorted({i.store_id for i in items})},  # type: ignore[misc]
    )
    write_manifest(tmp, manifest)
    (tmp / "coco.json").write_text(json.dumps(to_coco(manifest)))
    (tmp / "label-studio.json").write_text(json.dumps(to_label_studio(manifest, rows)))
    os.replace(tmp, folder)
    return folder


def _copy_frame(blobs: Any, key: str, item: Item, folder: Path) -> Item:
    """Write ``item``'s frame (blob ``key``) into the export, checked against its sha256."""
    data = blobs.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != item.sha256:
        what = f"the frame {key} of its track" if item.track_of else "its frame"
        raise ExportError(f"item {item.track_of or item.item_id}: {what} does not match its sha256")
    (folder / item.frame).write_bytes(data)
    return item


def to_coco(m: Manifest) -> dict[str, Any]:
    cats = [
        {"id": i, "name": sku, "supercategory": "product"} for i, sku in enumerate(m.classes) if sku
    ]
    cat_id = {c["name"]: c["id"] for c in cats}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for n, item in enumerate(m.items, start=1):
        if item.label.sku and not item.label.box:
            continue  # a product with no box: in COCO it would read as a frame without one
        images.append(
            {
                "id": n,
                "file_name": item.frame,
                "width": item.width,
                "height": item.height,
                "split": item.split,
                "store_id": item.store_id,
            }
        )
        if item.label.sku and item.label.box:
            x, y, w, h = item.label.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": cat_id[item.label.sku],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"capsight dataset {m.name} v{m.version}"},
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }


def to_label_studio(m: Manifest, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio tasks (image + RectangleLabels): the pre-label as a prediction, the review
    as an annotation, boxes in percent of the image as Label Studio wants them."""
    by_id = {r["item_id"]: r for r in rows}

    def result(sku: str, box: list[int] | None, w: int, h: int) -> list[dict[str, Any]]:
        if not sku or not box:
            return []
        x, y, bw, bh = box
        return [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "value": {
                    "x": 100 * x / w,
                    "y": 100 * y / h,
                    "width": 100 * bw / w,
                    "height": 100 * bh / h,
                    "rotation": 0,
                    "rectanglelabels": [sku],
                },
            }
        ]

    tasks = []
    for item in m.items:
        row = by_id.get(item.item_id, {})
        cands = row.get("candidates", [])
        first = next(
            (c for c in cands if c.get("source") == "teacher"), cands[0] if cands else None
        )
        task: dict[str, Any] = {
            "data": {"image": item.frame, "item_id": item.item_id, "store_id": item.store_id},
            "annotations": [
                {"result": result(item.label.sku, item.label.box, item.width, item.height)}
            ],
        }
        if first is not None:
            task["predictions"] = [
                {
                    "model_version": first.get("model_version") or first.get("source", ""),
                    "score": first.get("score", 0.0),
                    "result": result(
                        first.get("sku", ""), first.get("box"), item.width, item.height
                    ),
                }
            ]
        tasks.append(task)
    return tasks
