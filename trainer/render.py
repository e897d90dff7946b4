"""Rendered datasets, written in the export manifest format.

``baseline``: the "manually collected" dataset of a new product line. Every SKU of the fleet's
catalogue in clean studio renders (the scene renderer's clean mode: even light, no blur, glare,
fingers or crumples), held up to the camera or going into the basket, front or back; plus frames
with no product in hand (an empty or filled basket, a hand waving). Three studio sessions, each a
"store" wholly on one split (train / val / test), so the test split is its own fixed set.

With ``--store ID[:PROFILE]`` the frames are rendered in those stores' conditions instead (the
profile's ``[sim.store_conditions]``; the simulator's defaults without one): the stores' test
set of the flywheel, rendered once from a fixed seed. Each item records its conditions
(lighting, blur, glare, occlusion, crumpled): the gate's slices.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_sink.datasets import NONE, Item, Label, Manifest, versions, write_manifest

STUDIO = {"studio-a": "train", "studio-b": "val", "studio-c": "test"}


@dataclass
class RenderSpec:
    name: str
    root: Path
    catalogue_seed: int = 1
    catalogue_size: int = 40
    views: int = 24  # per SKU, over all splits
    none_share: float = 0.15  # of all frames, frames with no product in hand
    width: int = 640
    height: int = 360
    seed: int = 0
    #: store id -> (StoreConditions, split); empty: the clean studio sessions.
    stores: dict[str, tuple[Any, str]] | None = None


def render_dataset(spec: RenderSpec, *, on_item: Any = None) -> Path:
    """Render the dataset ``spec`` describes as the next version under ``spec.root/NAME``;
    returns its folder."""
    import cv2

    from capsight_edge.devices.studio import conditions_of, no_product_frame, product_frame
    from capsight_edge.scene.catalogue import Catalogue
    from capsight_edge.scene.conditions import CLEAN

    catalogue = Catalogue(spec.catalogue_size, seed=spec.catalogue_seed)
    base = spec.root / spec.name
    version = (versions(base) or [0])[-1] + 1
    tmp = base / f".v{version}.partial"
    (tmp / "frames").mkdir(parents=True, exist_ok=True)
    stores = spec.stores or {s: (CLEAN, split) for s, split in STUDIO.items()}
    # Views per store: the studio sessions split the views 70 / 15 / 15; rendered stores share
    # them evenly.
    share = (
        {"studio-a": 0.7, "studio-b": 0.15, "studio-c": 0.15}
        if not spec.stores
        else dict.fromkeys(stores, 1 / len(stores))
    )
    items: list[Item] = []
    size = (spec.width, spec.height)
    n_done = 0
    for s_index, (store_id, (conditions, split)) in enumerate(sorted(stores.items())):
        views = max(1, round(spec.views * share[store_id]))
        jobs: list[tuple[str, int]] = []
        for p_index, product in enumerate(catalogue.products):
            jobs += [(product.sku, p_index * 1000 + v) for v in range(views)]
        n_none = round(len(jobs) * spec.none_share / (1 - spec.none_share))
        jobs += [(NONE, 10_000_000 + v) for v in range(n_none)]
        for sku, k in jobs:
            seed = hashlib.sha256(f"{spec.seed}/{s_index}/{k}".encode()).digest()
            attempt = int.from_bytes(seed[:6], "big")
            got = None
            if sku:
                for retry in range(20):
                    got = product_frame(catalogue, sku, conditions, size, attempt + retry)
                    if got is not None:
                        break
                if got is None:
                    continue
            else:
                got = no_product_frame(catalogue, conditions, size, attempt)
            frame, truth = got
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            data = jpeg.tobytes()
            item_id = f"{store_id}-{sku or 'none'}-{k % 1000 if sku else k % 10_000_000:05d}"
            rel = f"frames/{item_id}.jpg"
            (tmp / rel).write_bytes(data)
            box = list(truth.item_bbox) if sku and truth.item_bbox else None
            items.append(
                Item(
                    item_id=item_id,
                    frame=rel,
                    sha256=hashlib.sha256(data).hexdigest(),
                    width=spec.width,
                    height=spec.height,
                    label=Label(sku=sku, box=box, source="render", model_version="renderer"),
                    split=split,  # type: ignore[arg-type]
                    store_id=store_id,
                    conditions=conditions_of(truth),
                )
            )
            n_done += 1
            if on_item is not None:
                on_item(n_done, len(jobs) * len(stores))
    manifest = Manifest(
        name=spec.name,
        version=version,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        classes=[NONE, *(p.sku for p in catalogue.products)],
        gtins={p.sku: p.gtin14 for p in catalogue.products},
        items=items,
        stores={s: split for s, (_c, split) in sorted(stores.items())},  # type: ignore[misc]
        notes=json.dumps(
            {
                "rendered": "clean studio" if not spec.stores else "store conditions",
                "catalogue_seed": spec.catalogue_seed,
                "catalogue_size": spec.catalogue_size,
                "seed": spec.seed,
                "views_per_sku": spec.views,
            }
        ),
    )
    write_manifest(tmp, manifest)
    folder = base / f"v{version}"
    os.replace(tmp, folder)
    return folder
