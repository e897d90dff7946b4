"""Frame sources: one contract, every source (V4L2 through a simulated capture device)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capsight_edge.camera.sources import FileReplaySource, SyntheticSource, V4l2Source
from capsight_edge.devices.render import SceneRenderer
from capsight_edge.errors import DeviceError
from capsight_edge.scene.catalogue import Catalogue
from firmware_bridge.sim.scenario import generate
from tests.camera_helpers import record_clip


class FakeCapture:
    """The last inch of a V4L2 camera: what cv2.VideoCapture returns, scripted. ``plan`` is a
    list of 'ok', 'bad' (corrupt frame), 'none' (no frame)."""

    def __init__(self, plan: list[str], opened: bool = True) -> None:
        self.plan = list(plan)
        self.opened = opened
        self.released = False

    def isOpened(self) -> bool:
        return self.opened and not self.released

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, Any]:
        step = self.plan.pop(0) if self.plan else "none"
        if step == "ok":
            return True, np.full((48, 64, 3), 100, np.uint8)
        if step == "bad":
            return True, np.zeros((0,), np.uint8)
        return False, None

    def release(self) -> None:
        self.released = True


def renderer() -> SceneRenderer:
    cat = Catalogue(20, seed=1)
    return SceneRenderer(
        generate("shopping", 30, seed=2, products=[(p.sku, p.weight_g) for p in cat.products]),
        cat,
        width=320,
        height=180,
    )


def make_synthetic(tmp_path: Path) -> Any:
    return SyntheticSource(renderer(), fps=30, realtime=False, duration_s=1.0)


def make_replay(tmp_path: Path) -> Any:
    clip = record_clip(tmp_path / "clip.mp4", renderer(), 1.0, fps=30, size=(320, 180))
    return FileReplaySource(str(clip), realtime=False)


def make_v4l2(tmp_path: Path) -> Any:
    return V4l2Source("0", capture_factory=lambda dev: FakeCapture(["ok"] * 30))


@pytest.mark.parametrize(
    "make", [make_synthetic, make_replay, make_v4l2], ids=["synthetic", "replay", "v4l2"]
)
def test_source_contract(tmp_path: Path, make: Callable[[Path], Any]) -> None:
    source = make(tmp_path)
    source.open()
    frames = [source.read() for _ in range(30)]
    source.close()
    assert all(f is not None for f in frames)
    assert all(f.image.dtype == np.uint8 and f.image.ndim == 3 for f in frames)
    assert all(f.pixel_format == "BGR" for f in frames)
    times = [f.t_ns for f in frames]
    assert times == sorted(times)
    assert [f.seq for f in frames] == list(range(1, 31))


def test_replay_paced_in_real_time(tmp_path: Path) -> None:
    import time

    clip = record_clip(tmp_path / "c.mp4", renderer(), 1.0, fps=15, size=(160, 96))
    source = FileReplaySource(str(clip), realtime=True)
    source.open()
    start = time.monotonic()
    n = 0
    while source.read() is not None:
        n += 1
    assert n == 15
    assert time.monotonic() - start >= 14 / 15 - 0.05  # not faster than the file's rate


def test_replay_of_a_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DeviceError, match="cannot replay"):
        FileReplaySource(str(bad)).open()


def test_v4l2_counts_corrupt_frames_and_reopens_after_a_vanish() -> None:
    captures = [
        FakeCapture(["ok", "bad", "ok", "none", "none"]),
        FakeCapture([], opened=False),
        FakeCapture(["ok", "ok"]),
    ]
    made: list[FakeCapture] = []

    def factory(dev: Any) -> FakeCapture:
        cap = captures.pop(0) if captures else FakeCapture(["ok"] * 5)
        made.append(cap)
        return cap

    source = V4l2Source("/dev/video7", capture_factory=factory, stall_s=0.0)
    source._backoff = 0.01
    source.open()
    got = [source.read() for _ in range(4)]
    assert all(f is not None for f in got)
    assert source.errors["corrupt"] == 1 and source.errors["no_frame"] >= 1
    assert source.errors["stall"] >= 1 and source.reopens >= 2
    assert made[0].released and made[1].released  # the vanished device was let go


def test_v4l2_that_never_opens_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="does not open"):
        V4l2Source("3", capture_factory=lambda d: FakeCapture([], opened=False)).open()
