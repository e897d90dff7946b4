"""The MCAP sensor log: readable by standard readers, ordered, and crash-tolerant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from mcap.reader import make_reader

from capsight_edge.sensors.sensorlog import CHANNELS, SensorLog, read_messages
from tests.conftest import ROOT


def test_channels_schemas_and_standard_reader(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    with SensorLog(path, metadata={"device_id": "cart-1"}) as log:
        for i in range(400):
            t = 1_000_000_000 + i * 12_500_000
            log.add("/weight/raw", t, counts=[1, 2, 3, 4])
            log.add("/imu", t + 1000, accel_g=[0, 0, 1], gyro_dps=[0, 0, 0], temp_c=27.0)
            if i == 40:
                log.event("/weight/events", t, {"kind": "item_added", "delta_g": 100.0})
    with open(path, "rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        assert summary is not None
        # A log holds the channels that were written, each with its schema from CHANNELS.
        topics = {c.topic: c.schema_id for c in summary.channels.values()}
        assert set(topics) == {"/weight/raw", "/imu", "/weight/events"}
        for topic, sid in topics.items():
            assert summary.schemas[sid].name == CHANNELS[topic][0]
        assert {s.encoding for s in summary.schemas.values()} == {"jsonschema"}
        times = [m.log_time for _, _, m in reader.iter_messages(log_time_order=False)]
        assert times == sorted(times)  # written in time order
        metadata = list(reader.iter_metadata())
        assert metadata[0].metadata["device_id"] == "cart-1"
    msgs = read_messages(path)
    raw = [m for m in msgs if m[0] == "/weight/raw"]
    assert sum(len(m[2]["t_ns"]) for m in raw) == 400  # every sample, batched
    assert len(raw) < 100


def test_out_of_order_producers_are_reordered(tmp_path: Path) -> None:
    path = tmp_path / "o.mcap"
    with SensorLog(path, reorder_s=0.5) as log:
        for i in range(200):
            t = 1_000_000_000 + i * 10_000_000
            log.add("/weight/raw", t, counts=[i])
            log.add("/imu", t - 200_000_000, accel_g=[0, 0, 1], gyro_dps=[0, 0, 0], temp_c=1.0)
        assert log.late_messages == 0
    times = [t for _, t, _ in read_messages(path)]
    assert times == sorted(times)


def test_truncated_file_is_read_up_to_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    with SensorLog(path, flush_s=0.0) as log:
        for i in range(300):
            log.add("/weight/fused", i * 12_500_000, grams=1.0, stable=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 3])
    msgs = read_messages(cut)
    assert 0 < len(msgs) < len(read_messages(path))


def test_kill_loses_at_most_about_a_second(tmp_path: Path) -> None:
    path = tmp_path / "k.mcap"
    child = textwrap.dedent(f"""
        import sys, time
        from capsight_edge.sensors.sensorlog import SensorLog
        log = SensorLog({str(path)!r}, flush_s=1.0)
        start = time.monotonic()
        while True:
            t = time.monotonic_ns()
            log.add("/weight/raw", t, counts=[1, 2, 3, 4])
            log.add("/imu", t, accel_g=[0, 0, 1], gyro_dps=[0, 0, 0], temp_c=27.0)
            if time.monotonic() - start > 3:
                print(t, flush=True)
            time.sleep(0.01)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    last_t = int(proc.stdout.readline())  # the child has written for 3 s
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    msgs = read_messages(path)
    assert msgs, "nothing survived the kill"
    newest = max(max(m[2]["t_ns"]) for m in msgs if "t_ns" in m[2])
    assert last_t - newest < 1.6e9, (last_t - newest) / 1e9
