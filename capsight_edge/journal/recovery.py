"""Reconcile the journal with the files on disk after any crash.

Run at start, before anything records or uploads:

- a ``bundles/.partial/<id>`` folder holding a complete bundle that verifies against its manifest
  (the crash came between the last fsync and the rename) is sealed now; anything else there is a
  half-written clip and is removed (its journal row, if any, becomes ``discarded``);
- a sealed folder the journal does not know (the crash came between the rename and the journal's
  commit) is adopted as ``sealed``; a folder that does not verify, or a stray file, goes to
  ``quarantine/`` with a note saying why;
- a journal row marked evicted whose folder is still there (the crash came mid-eviction) has its
  folder removed; a row whose folder vanished is reported (this must never happen to a sealed one);
- uploads in flight keep their upload URL and offset: the uploader resumes them.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capsight_edge.bundle.manifest import MANIFEST, Manifest, ManifestError, verify_bundle
from capsight_edge.durable import fsync_dir, make_dirs
from capsight_edge.journal.journal import BundleRow, Journal

log = logging.getLogger("capsight.journal.recovery")


@dataclass
class RecoveryReport:
    resealed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    removed_partial: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    finished_evictions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    resumable_uploads: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    @property
    def changed(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "resumable_uploads")


def _seal_row(journal: Journal, row: BundleRow | None, manifest: Manifest) -> None:
    """Record a bundle found sealed on disk: adopt it (no row) or finish its row (recording)."""
    files = {k: asdict(v) for k, v in manifest.files.items()}
    duration = manifest.video.duration_s if manifest.video else 0.0
    if row is None:
        journal.mark_sealed(
            manifest.bundle_id,
            files,
            priority=manifest.trigger.priority,
            rule=manifest.trigger.rule,
            duration_s=duration,
            adopt=True,
        )
    elif row.state == "recording":
        journal.mark_sealed(manifest.bundle_id, files, duration_s=duration)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _quarantine(path: Path, root: Path, reason: str, report: RecoveryReport) -> None:
    make_dirs(root)
    target = root / path.name
    n = 1
    while target.exists():
        target = root / f"{path.name}.{n}"
        n += 1
    os.replace(path, target)
    (root / f"{target.name}.why.txt").write_text(reason + "\n")
    report.quarantined.append(path.name)
    log.warning("quarantined %s: %s", path, reason)


def recover(journal: Journal, data_dir: str | os.PathLike[str]) -> RecoveryReport:
    data = Path(os.path.expanduser(data_dir))
    bundles, partial, quarantine = (
        data / "bundles",
        data / "bundles" / ".partial",
        data / "quarantine",
    )
    make_dirs(partial)
    report = RecoveryReport()

    # 1. Half-finished seals.
    for d in sorted(partial.iterdir()):
        row = journal.get(d.name)
        try:
            if not d.is_dir() or not (d / MANIFEST).is_file():
                raise ManifestError("no manifest: the clip was still being written")
            manifest = verify_bundle(d)
            if manifest.bundle_id != d.name:
                raise ManifestError(f"manifest names {manifest.bundle_id}")
        except ManifestError as exc:
            _remove(d)
            report.removed_partial.append(d.name)
            if row is not None and row.state == "recording":
                journal.discard(d.name, f"incomplete at recovery: {exc}")
                report.discarded.append(d.name)
            continue
        target = bundles / d.name
        if target.exists():
            shutil.rmtree(d)  # sealed already; this copy is a leftover
            report.removed_partial.append(d.name)
            continue
        os.replace(d, target)
        fsync_dir(bundles)
        _seal_row(journal, row, manifest)
        report.resealed.append(d.name)
    fsync_dir(partial)

    # 2. Folders in bundles/ against the journal.
    for d in sorted(bundles.iterdir()):
        if d.name == ".partial":
            continue
        row = journal.get(d.name)
        if row is not None and row.state in ("evicted", "discarded"):
            _remove(d)
            report.finished_evictions.append(d.name)
            continue
        if not d.is_dir():
            _quarantine(d, quarantine, "a file the journal does not know", report)
            continue
        try:
            manifest = verify_bundle(d)
            if manifest.bundle_id != d.name:
                raise ManifestError(f"manifest names {manifest.bundle_id}, folder {d.name}")
        except ManifestError as exc:
            if row is not None and row.state in ("sealed", "uploading"):
                journal.quarantine(d.name, f"does not verify at recovery: {exc}")
            elif row is not None and row.state == "uploaded":
                journal.mark_evicted(d.name, f"does not verify at recovery: {exc}")
            _quarantine(d, quarantine, f"does not verify: {exc}", report)
            continue
        if row is None or row.state == "recording":
            _seal_row(journal, row, manifest)
            (report.adopted if row is None else report.resealed).append(d.name)

    # 3. Journal rows against the folders.
    for row in journal.bundles(("recording", "sealed", "uploading", "uploaded")):
        exists = (bundles / row.id).is_dir()
        if row.state == "recording" and not exists and not (partial / row.id).exists():
            journal.discard(row.id, "the clip never completed")
            report.discarded.append(row.id)
        elif row.state in ("sealed", "uploading", "uploaded") and not exists:
            if row.state != "uploading":
                journal.mark_evicted(row.id, "files missing at recovery")
            # An upload in flight stays as it is: the uploader's next attempt fails on the
            # missing files and the journal quarantines it with that reason.
            report.missing.append(row.id)
        elif row.state == "uploading":
            report.resumable_uploads.append(row.id)
    if report.changed:
        log.warning("recovery: %s", {k: len(v) for k, v in report.as_dict().items() if v})
    return report
