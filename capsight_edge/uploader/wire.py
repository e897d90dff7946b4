"""What goes over the wire for each file of a bundle.

Clips go as they are: H.264 is already compressed (zstd gains nothing on it and costs CPU). The
manifest (JSON) and the sensor log are compressed with zstd when that saves at least
``MIN_SAVING`` of their size; MCAP chunks are zstd-compressed inside already, so the sensor log
often goes as it is. A compressed file is written once, beside the bundle (``wire/<bundle>/``),
so that a resumed upload sends the very same bytes; the sink decompresses it (upload metadata
``encoding: zstd``) and checks the result against the manifest's sha256.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from capsight_edge.bundle.manifest import CLIP, MANIFEST
from capsight_edge.durable import fsync_dir, make_dirs

COMPRESSIBLE = (MANIFEST, "sensors.mcap")
MIN_SAVING = 0.05
ZSTD_LEVEL = 6
# Upload order within a bundle: the manifest last, so the sink assembles the bundle once.
ORDER = {CLIP: 0, "sensors.mcap": 1, MANIFEST: 9}


@dataclass(frozen=True)
class WireFile:
    """One file as it is sent: ``path`` (the bundle's file or its compressed copy), ``bytes``
    sent, ``encoding`` ("" or "zstd"), and the ``raw_sha256``/``raw_bytes`` of the original."""

    name: str
    path: Path
    bytes: int
    encoding: str
    raw_sha256: str
    raw_bytes: int


def wire_dir(data_dir: Path, bundle_id: str) -> Path:
    return data_dir / "wire" / bundle_id


def prepare(data_dir: Path, bundle_id: str, name: str, raw_sha256: str) -> WireFile:
    """The file to send for ``name``; compresses (once) when that is worth it.
    Raises OSError when the bundle's file is missing."""
    src = data_dir / "bundles" / bundle_id / name
    raw_bytes = src.stat().st_size
    if name not in COMPRESSIBLE or raw_bytes < 64:
        return WireFile(name, src, raw_bytes, "", raw_sha256, raw_bytes)
    out = wire_dir(data_dir, bundle_id) / (name + ".zst")
    if not out.exists():
        import zstandard

        make_dirs(out.parent)
        tmp = out.with_suffix(".tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            zstandard.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(fin, fout, size=raw_bytes)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)  # an upload's offset counts bytes of this very file
    size = out.stat().st_size
    if size > raw_bytes * (1 - MIN_SAVING):
        out.unlink()
        return WireFile(name, src, raw_bytes, "", raw_sha256, raw_bytes)
    return WireFile(name, out, size, "zstd", raw_sha256, raw_bytes)


def remove(data_dir: Path, bundle_id: str) -> None:
    shutil.rmtree(wire_dir(data_dir, bundle_id), ignore_errors=True)
