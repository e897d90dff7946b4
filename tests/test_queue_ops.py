"""What a technician does to the queue, as library calls (the CLI only prints them), and the
scale flows on a simulated cart."""

from __future__ import annotations

from pathlib import Path

from capsight_edge.journal import queue_ops
from capsight_edge.journal.journal import Journal
from capsight_edge.journal.recovery import recover
from capsight_edge.profile import load_profile
from capsight_edge.sensors import scale
from tests.conftest import SIM
from tests.test_queue_cli import populate


def journal_with(data: Path) -> Journal:
    """``a`` uploaded, ``b`` sealed, ``c`` quarantined (the CLI tests' journal)."""
    populate(data)
    return Journal(data / "journal.db")


def test_purge_is_an_eviction_through_the_journal(tmp_path: Path) -> None:
    j = journal_with(tmp_path)
    refused = queue_ops.purge(j, tmp_path, ["b", "c", "nope"])
    assert [(r.bundle_id, r.ok, r.refused) for r in refused] == [
        ("b", False, True),
        ("c", False, True),
        ("nope", False, True),
    ]
    assert (tmp_path / "bundles" / "b").is_dir()
    done = queue_ops.purge(j, tmp_path)  # the uploaded ones by default
    assert [r.bundle_id for r in done if r.ok] == ["a"]
    forced = queue_ops.purge(j, tmp_path, ["c"], force=True)
    assert forced[0].ok
    # A quarantined bundle is evicted straight away: no detour through the upload queue.
    assert [t[:2] for t in j.transitions("c")][-1] == ("quarantined", "evicted")
    assert j.get("c").reason == "purged by a technician"  # type: ignore[union-attr]
    assert not (tmp_path / "bundles" / "c").exists()
    j.close()


def test_a_purge_cut_short_by_a_crash_is_finished_by_recovery(tmp_path: Path) -> None:
    j = journal_with(tmp_path)
    j.mark_evicted("a", "purged by a technician")  # committed; the crash came before rmtree
    assert (tmp_path / "bundles" / "a").is_dir()
    report = recover(j, tmp_path)
    assert report.finished_evictions == ["a"] and not (tmp_path / "bundles" / "a").exists()
    j.close()


def test_retry_sends_quarantined_bundles_back_unless_their_files_are_gone(
    tmp_path: Path,
) -> None:
    j = journal_with(tmp_path)
    (tmp_path / "bundles" / "c").rename(tmp_path / "elsewhere")
    (gone,) = queue_ops.retry(j, tmp_path)
    assert not gone.ok and "files are gone" in gone.message
    (tmp_path / "elsewhere").rename(tmp_path / "bundles" / "c")
    (back,) = queue_ops.retry(j, tmp_path)
    assert back.ok and j.get("c").state == "sealed"  # type: ignore[union-attr]
    j.close()


def test_calibration_flow_on_a_simulated_cart(tmp_path: Path) -> None:
    profile = load_profile(SIM, data_dir=tmp_path)
    steps: list[tuple[str, bool]] = []
    with scale.scale_session(profile) as hub:
        result = scale.calibrate(hub, 1000.0, prompt=lambda t, p: steps.append((t, p)))
    # Untared: the flow tares first. The simulated technician acts: nobody is asked to.
    assert steps == [
        ("Empty the cart to tare it first.", False),
        ("Place 1000 g on the cart.", False),
    ]
    assert abs(sum(result.counts_per_gram) / 4 - 10.0) < 0.3
    assert result.file == tmp_path / "calibration.json" and result.file.is_file()
