"""What a technician does to the bundles a cart holds: send quarantined ones back to the queue,
purge bundles now, and the one way a bundle's files leave the disk (:func:`evict`).

Every change goes through the journal's transitions: a purge is an eviction (``evicted``, with
its reason, committed before a file is touched), and an eviction interrupted by a crash is
finished by the journal's recovery. The CLI (``capsight queue retry|purge``) and the storage
guard call these; nothing removes a bundle's folder behind the journal's back.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capsight_edge.errors import JournalError
from capsight_edge.journal.journal import Journal

log = logging.getLogger("capsight.journal")
NEVER_UPLOADED = ("sealed", "quarantined")


@dataclass(frozen=True)
class BundleResult:
    """What happened to one bundle: ``ok`` and a message (or the reason it was refused);
    ``refused`` marks a request that was not allowed (rather than one that failed)."""

    bundle_id: str
    ok: bool
    message: str
    refused: bool = False


def evict(journal: Journal, data_dir: str | os.PathLike[str], bundle_id: str, reason: str) -> None:
    """The bundle leaves the cart: ``evicted`` is committed first, then its folder is removed
    (a crash in between is finished by recovery, which removes the folders of evicted rows)."""
    journal.mark_evicted(bundle_id, reason)
    shutil.rmtree(Path(os.path.expanduser(data_dir)) / "bundles" / bundle_id, ignore_errors=True)


def retry(
    journal: Journal, data_dir: str | os.PathLike[str], ids: Sequence[str] = ()
) -> list[BundleResult]:
    """Quarantined bundles (``ids``, default: all) go back to the upload queue; one whose files
    are gone cannot."""
    data = Path(os.path.expanduser(data_dir))
    out = []
    for bundle_id in ids or [r.id for r in journal.bundles(("quarantined",))]:
        if not (data / "bundles" / bundle_id).is_dir():
            out.append(
                BundleResult(
                    bundle_id,
                    False,
                    f"{bundle_id}: its files are gone (quarantine/ holds what could not be "
                    "verified)",
                )
            )
            continue
        try:
            journal.retry(bundle_id)
        except JournalError as exc:
            out.append(BundleResult(bundle_id, False, str(exc)))
            continue
        out.append(BundleResult(bundle_id, True, f"{bundle_id}: back in the upload queue"))
    return out


def purge(
    journal: Journal,
    data_dir: str | os.PathLike[str],
    ids: Iterable[str] = (),
    *,
    states: Sequence[str] = ("uploaded",),
    force: bool = False,
) -> list[BundleResult]:
    """Delete bundles now: ``ids``, or every bundle in ``states``. A bundle that was never
    uploaded (sealed, quarantined) is refused unless ``force``."""
    ids = list(ids)
    rows = (
        [(i, journal.get(i)) for i in ids]
        if ids
        else [(r.id, r) for r in journal.bundles(tuple(states))]
    )
    out = []
    for bundle_id, row in rows:
        if row is None:
            out.append(BundleResult(bundle_id, False, f"no bundle {bundle_id}", refused=True))
            continue
        if row.state in NEVER_UPLOADED and not force:
            out.append(
                BundleResult(
                    row.id,
                    False,
                    f"{row.id} was never uploaded; add --yes to delete it",
                    refused=True,
                )
            )
            continue
        try:
            evict(journal, data_dir, row.id, "purged by a technician")
        except JournalError as exc:
            out.append(BundleResult(row.id, False, str(exc)))
            continue
        log.info("purged %s (%s)", row.id, row.state)
        out.append(BundleResult(row.id, True, f"{row.id}: purged"))
    return out
