"""Disk-full test on a real small filesystem (a tmpfs this test mounts; root only)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsight_edge.profile import load_profile
from tests.conftest import SIM, wait_until

SIZE_MB = 9


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_capture_pauses_before_the_disk_fills_and_resumes(small_fs: Path) -> None:
    from capsight_edge.cart import Cart

    profile = load_profile(SIM, data_dir=small_fs)
    profile = dataclasses.replace(
        profile,
        # a busy shopper: captures come often, so the disk fills (and frees) sooner
        sim=dataclasses.replace(profile.sim, item_every_s=1.5),
        storage=dataclasses.replace(
            profile.storage,
            high_watermark_pct=60.0,
            low_watermark_pct=40.0,
            min_free_bytes=3 * 2**20,
            headroom_min=0.2,
        ),
    )
    lowest_free = [shutil.disk_usage(small_fs).free]
    cart = Cart(profile, seed=5)
    cart.start()
    try:
        assert cart.guard is not None and cart.journal is not None
        cart.guard.stop()  # check on this thread instead, often, so the test sees every step

        def pressure() -> bool:
            cart.guard.check()  # type: ignore[union-attr]
            lowest_free.append(shutil.disk_usage(small_fs).free)
            return cart.guard.paused  # type: ignore[union-attr]

        assert wait_until(pressure, timeout_s=240, interval_s=0.2), "never paused"
        sealed_at_pause = len(cart.recorder.sealed)  # type: ignore[union-attr]
        assert sealed_at_pause >= 2
        # Nothing may fire while paused; the trigger engine says so.
        assert cart.collector is not None and cart.collector.engine.paused
        # Uploads finish (as the uploader would mark them): the guard evicts them, space
        # returns, capture resumes.
        for row in cart.journal.bundles(("sealed",)):
            cart.journal.start_upload(row.id, "http://sink.invalid/x")
            cart.journal.mark_uploaded(row.id)
        assert wait_until(lambda: not pressure(), timeout_s=30, interval_s=0.2)
        assert not cart.collector.engine.paused

        def recording_again() -> bool:
            pressure()  # keep guarding while we wait
            return len(cart.recorder.sealed) > sealed_at_pause  # type: ignore[union-attr]

        assert wait_until(recording_again, timeout_s=120, interval_s=0.5)
    finally:
        cart.stop()
    assert cart.recorder is not None and cart.recorder.failed == []  # never ENOSPC
    assert min(lowest_free) > 0
    assert cart.guard is not None and cart.guard.evicted
