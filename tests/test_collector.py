"""The Collector with real threads, the frame bus and the simulated cart, as a technician
runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from capsight_edge.collector import Collector, send_manual_trigger
from capsight_edge.devices import SimFactory, fleet_catalogue
from capsight_edge.profile import load_profile
from capsight_edge.scene.conditions import CLEAN
from capsight_edge.sensors.hub import SensorHub
from capsight_edge.sensors.sensorlog import SensorLog, read_messages
from tests.camera_helpers import scripted
from tests.conftest import ROOT, SIM, json_records, wait_until


def test_collector_fires_on_a_scanned_item_and_logs_it(tmp_path: Path) -> None:
    profile = load_profile(SIM, data_dir=tmp_path)
    scenario = scripted("scanned", fleet_catalogue(profile))
    log = SensorLog(tmp_path / "s.mcap")
    factory = SimFactory(profile, scenario=scenario, seed=1, conditions=CLEAN)
    hub = SensorHub(profile, factory=factory).start()
    try:
        with Collector(
            profile, factory=factory, hub=hub, sensor_log=log, control_dir=tmp_path
        ) as collector:
            assert wait_until(lambda: collector.stats["decision_fire"] >= 1, timeout_s=20)
            send_manual_trigger(tmp_path, "test")
            assert wait_until(lambda: collector.stats["manual"] == 1, timeout_s=5)
            assert wait_until(lambda: "manual" in collector.engine.active_rules, timeout_s=5)
            fired = [d.rule for d in collector.engine.decisions if d.kind == "fire"]
            assert fired[0] == "scanned_item" and "manual" in fired
            assert collector.stats["frames"] > 20 and collector.stats["barcodes"] >= 1
    finally:
        hub.stop()
        factory.close()
        log.close()
    topics = [m[0] for m in read_messages(tmp_path / "s.mcap")]
    assert "/triggers" in topics and "/camera/barcodes" in topics and "/camera/motion" in topics
    truth = [m[2] for m in read_messages(tmp_path / "s.mcap") if m[0] == "/sim/truth"]
    assert truth and any(p["sku"] == scenario.items[0].sku for t in truth for p in _rows(t))


def _rows(batch: dict) -> list[dict]:  # type: ignore[type-arg]
    """The samples of a batched sensor-log message."""
    return [{k: batch[k][i] for k in batch} for i in range(len(batch["t_ns"]))]


def test_the_control_socket_works_in_a_data_folder_deeper_than_a_socket_path_holds(
    tmp_path: Path,
) -> None:
    """A Unix socket's path holds 107 bytes; a data folder deep in a tree (a test's, a
    benchmark's, an integrator's) still gets its control socket and its manual triggers."""
    import socket

    from capsight_edge.collector import CONTROL_SOCKET
    from capsight_edge.unixsock import unix_socket_path

    deep = tmp_path / ("a" * 70) / ("b" * 70)
    deep.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        with unix_socket_path(deep / CONTROL_SOCKET) as where:
            assert where.startswith("/proc/self/fd/") and len(where) < 100
            server.bind(where)
        assert (deep / CONTROL_SOCKET).exists()
        send_manual_trigger(deep, "deep")
        assert server.recv(300) == b"manual deep"
    (deep / CONTROL_SOCKET).unlink()
    # The Collector's own: it takes a manual trigger there and removes its socket when it stops
    # (it had unlinked the /proc/self/fd/N/ name it was bound through, long closed, and left a
    # socket behind that a copy of the data folder then failed on).
    profile = load_profile(SIM, data_dir=deep)
    factory = SimFactory(profile, seed=1, conditions=CLEAN)
    with Collector(profile, factory=factory, control_dir=deep) as collector:
        assert (deep / CONTROL_SOCKET).exists()
        send_manual_trigger(deep, "deep")
        assert wait_until(lambda: collector.stats["manual"] == 1, timeout_s=10)
    assert not (deep / CONTROL_SOCKET).exists()


def test_manual_trigger_without_a_collector_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "capsight_edge.cli.main",
            "trigger",
            "manual",
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2 and "no collector is running" in res.stderr


def test_cli_trigger_test_prints_decisions_live(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capsight_edge.cli.main",
            "trigger",
            "test",
            "--json",
            "--duration",
            "60",
            "--data",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    sent = stopped = False
    rows = []
    for line in proc.stdout:  # until the summary: at Ctrl-C below, or after --duration
        (row,) = json_records(line)
        rows.append(row)
        if not sent and row["type"] == "trigger_decision":
            send_manual_trigger(tmp_path)
            sent = True
        kinds = [(r.get("kind"), r.get("rule")) for r in rows]
        product = any(k == "fire" and r in ("scanned_item", "unscanned_item") for k, r in kinds)
        if not stopped and ("fire", "manual") in kinds and product:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: it stops and prints its summary
            stopped = True
        if row["type"] == "trigger_summary":
            break
    proc.wait(60)
    kinds = [(r.get("kind"), r.get("rule")) for r in rows]
    assert ("fire", "manual") in kinds
    assert any(k == "fire" and r in ("scanned_item", "unscanned_item") for k, r in kinds)
    summary = rows[-1]
    assert summary["frames"] > 30 and summary["manual"] == 1  # stopped once both fired
