"""Sealing a bundle atomically: a reader sees either no bundle or all of it.

The files are written into ``bundles/.partial/<id>/``; sealing fsyncs each file, writes the
manifest (temporary name, fsync, rename), fsyncs the folder, renames it to ``bundles/<id>/`` and
fsyncs both parents. A crash before the last rename leaves a ``.partial`` folder that recovery
either completes (if it verifies) or removes.
"""

from __future__ import annotations

import os
from pathlib import Path

from capsight_edge.bundle.manifest import MANIFEST, Manifest
from capsight_edge.durable import fsync_dir, fsync_file


def seal(partial: Path, bundles: Path, manifest: Manifest) -> Path:
    """Seal ``partial`` (which holds the manifest's files) as ``bundles/<bundle_id>``."""
    for name in manifest.files:
        fsync_file(partial / name)
    tmp = partial / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(manifest.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, partial / MANIFEST)
    fsync_dir(partial)
    final = bundles / manifest.bundle_id
    os.replace(partial, final)
    fsync_dir(bundles)
    fsync_dir(partial.parent)
    return final
