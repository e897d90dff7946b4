"""The shared-memory frame bus: zero-copy views, latest wins, other processes attach by name."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest

from capsight_edge.camera.framebus import FrameBus, FrameBusReader
from capsight_edge.errors import FrameError


def frame(v: int) -> Any:
    return np.full((36, 64, 3), v % 256, np.uint8)


def test_reader_gets_a_view_not_a_copy() -> None:
    with FrameBus(64, 36, fps=1000) as bus:
        reader = FrameBusReader(bus.name)
        bus.publish(frame(7), 123)
        got = reader.next_frame(timeout_s=1)
        assert got is not None and got.seq == 1 and got.t_ns == 123
        assert int(got.image[0, 0, 0]) == 7
        assert np.shares_memory(got.image, reader._layout.views[got.seq % reader.slots])
        assert got.valid()
        reader.close()


def test_latest_wins_and_skips_are_counted() -> None:
    with FrameBus(64, 36, slots=3, fps=1000) as bus:
        reader = FrameBusReader(bus.name)
        bus.publish(frame(1), 1)
        first = reader.next_frame(0.1)
        assert first is not None
        for i in range(2, 12):
            bus.publish(frame(i), i)  # the producer never waits for the reader
        got = reader.next_frame(0.1)
        assert got is not None and got.seq == 11 and reader.skipped == 9
        assert not first.valid()  # its slot has been overwritten since
        assert reader.next_frame(0.05) is None  # nothing newer yet
        reader.close()


def test_wrong_frames_are_rejected() -> None:
    with FrameBus(64, 36) as bus:
        with pytest.raises(FrameError, match="carries"):
            bus.publish(np.zeros((10, 10, 3), np.uint8), 0)
        with pytest.raises(FrameError):
            bus.publish(np.zeros((36, 64, 3), np.float32), 0)
        assert bus.rejected == 2


def test_unknown_bus_is_a_clear_error() -> None:
    with pytest.raises(FrameError, match="no frame bus"):
        FrameBusReader("capsight-fb-does-not-exist")


def _consumer(name: str, want: int, out: Any) -> None:
    reader = FrameBusReader(name)
    seen = []
    while len(seen) < want:
        f = reader.next_frame(timeout_s=5)
        if f is None:
            break
        value = int(f.image[0, 0, 0])
        if f.valid():
            seen.append((f.seq, value))
    out.put((seen, reader.skipped))
    reader.close()


def test_a_consumer_in_another_process_reads_frames() -> None:
    ctx = mp.get_context("spawn")
    with FrameBus(64, 36, fps=200) as bus:
        q = ctx.Queue()
        proc = ctx.Process(target=_consumer, args=(bus.name, 20, q))
        proc.start()
        import time

        deadline = time.monotonic() + 30
        while proc.is_alive() and q.empty() and time.monotonic() < deadline:
            bus.publish(frame(bus.seq + 1), time.monotonic_ns())
            time.sleep(0.005)
        seen, skipped = q.get(timeout=30)
        proc.join(10)
    assert len(seen) == 20
    assert all(value == seq % 256 for seq, value in seen)  # pixels match the frame's number
    seqs = [s for s, _ in seen]
    assert seqs == sorted(seqs)
    assert skipped == seqs[-1] - seqs[0] + 1 - len(seqs)
