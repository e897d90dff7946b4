"""A small simulated fleet for the labelling tests: two carts in two stores record real bundles
(`capsight run`), a local sink ingests them, and tiny teacher models made here (no downloads)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.teachers import make_teacher  # noqa: F401  (the tests import it from here)
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS
from tests.conftest import SIM, start_run
from tests.sink_helpers import BACKEND, sink_cli

STORES = {"cart-north": "store-north", "cart-south": "store-south", "cart-east": "store-east"}
#: Each cart's scenario seed: cart-south's shopper also waves an empty hand over the basket
#: (at 9.6 s, with no item for 2 s either side).
SEEDS = {"cart-north": 11, "cart-south": 38, "cart-east": 13}


@dataclass
class Fleet:
    root: Path
    sink_data: Path
    bundles: dict[str, list[Path]]  # device -> bundle folders on the cart
    catalogue: Path
    admin: str


def record_fleet(root: Path, seconds: float = 30.0) -> dict[str, list[Path]]:
    procs = {}
    for device, store in STORES.items():
        prof = root / f"{device}.toml"
        prof.write_text(f"extends = '{SIM}'\n[device]\nid = '{device}'\nstore_id = '{store}'\n")
        procs[device] = start_run(
            root / device, "--seed", str(SEEDS[device]), "--duration", str(seconds), profile=prof
        )
    out: dict[str, list[Path]] = {}
    for device, proc in procs.items():
        _stdout, err = proc.communicate(timeout=seconds + 120)
        assert proc.returncode == 0, err
        folder = root / device / "bundles"
        out[device] = sorted(p for p in folder.iterdir() if p.name != ".partial")
    return out


def ingest_fleet(root: Path, bundles: dict[str, list[Path]]) -> Fleet:
    """The fleet's bundles in an embedded sink (SQLite files, whichever backend a module uses:
    :func:`private_sink` copies them where a test needs them)."""
    from capsight_edge.devices.sim import fleet_catalogue
    from capsight_edge.localsink import LocalSink
    from capsight_edge.profile import load_profile
    from tests.test_sink_ingest import ingested, upload

    sink = LocalSink(root / "sink")
    tokens = {d: sink.add_device(d) for d in bundles}
    admin = sink.add_device("ops", admin=True)
    catalogue = root / "catalogue.json"
    catalogue.write_text(fleet_catalogue(load_profile(SIM)).as_json())
    res = sink_cli("catalogue", "import", str(catalogue), "--data", str(sink.data))  # no --db
    assert res.returncode == 0, res.stderr
    sink.start()
    try:
        for device, folders in bundles.items():
            for folder in folders:
                for name in (CLIP, SENSORS, MANIFEST):
                    upload(sink, tokens[device], folder / name, folder.name)
        ingested(sink, admin)
    finally:
        sink.stop()
    return Fleet(root, sink.data, bundles, catalogue, admin)


def private_sink(fleet: Fleet, data: Path) -> Path:
    """A private copy of the fleet's sink in ``data`` (each test labels from scratch), on the
    backend in use: the folder, and on PostgreSQL its two databases copied into the fresh one
    that ``data``'s sinks and commands then use."""
    from cloud_sink.doctor import migrate

    shutil.copytree(fleet.sink_data, data)
    url = BACKEND.db_for(data)
    if url:
        migrate(data, db=url, from_sqlite=data)  # what `capsight-sink migrate --from-sqlite` does
        for name in ("sink.db", "index.db"):
            for stale in (name, f"{name}-wal", f"{name}-shm"):  # nothing reads them by mistake
                (data / stale).unlink(missing_ok=True)
    return data


def label_rows(index: object) -> list[tuple[object, ...]]:
    """What pre-labelling wrote, comparable across two runs."""
    from cloud_sink.labels import LabelStore

    return [
        (
            i["item_id"],
            i["sku"],
            i["box"],
            i["source"],
            i["score"],
            i["state"],
            i["frame_sha256"],
            json.dumps(i["candidates"]),
        )
        for i in LabelStore(index).items()
    ]
