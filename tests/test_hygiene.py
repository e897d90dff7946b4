"""A cart that cleans up after crashes: `kill -9` of `capsight run`, twenty times, leaves no
orphan process and no shared-memory segment behind; one run per data folder; stop twice;
onnxruntime leaves nothing in the temporary folder and reports nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from capsight_edge.errors import DeviceBusy
from capsight_edge.hygiene import RunRecord
from tests.conftest import SIM, start_run, wait_until

pytestmark = pytest.mark.whole_machine  # counts this machine's orphans and shared-memory segments


def segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("capsight-fb-*")}


def mcu_links() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("capsight-mcu-*")}


def orphans() -> list[int]:
    """Processes whose parent is gone (reparented to init) that are ours: an encoder, or a
    resource tracker of a capsight process."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == 1 and ("capsight" in cmdline or "resource_tracker" in cmdline):
            out.append(int(proc.name))
    return out


def run(data: Path) -> subprocess.Popen[str]:
    return start_run(data, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_twenty_kills_leave_no_orphans_and_no_segments(tmp_path: Path) -> None:
    """Nor the simulated MCU's pty folders in the temporary folder: each start removes the one
    the killed run before it left."""
    before_segments, before_orphans = segments(), set(orphans())
    before_links = mcu_links()
    for _ in range(20):
        proc = run(tmp_path)
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())  # the encoder process runs by now
        assert started["type"] == "run_started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert wait_until(lambda: set(orphans()) <= before_orphans, timeout_s=20), orphans()
    assert wait_until(lambda: segments() <= before_segments, timeout_s=20), segments()
    # And a start after a kill cleans up what it can find of the dead run.
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["children"] and record["segments"] and record["temp_dirs"]
    RunRecord(tmp_path).claim().release()  # the start after the last kill
    assert mcu_links() <= before_links, mcu_links() - before_links


def test_a_run_killed_with_its_process_group_leaves_no_semaphores(tmp_path: Path) -> None:
    """Killed as systemd kills a service whose stop timed out: every process of its group at
    once, multiprocessing's resource tracker too, which would have unlinked the named
    semaphores behind the encoder's queues. The run records them with its segments, and the
    next start unlinks them (each such kill left six in /dev/shm before)."""
    before_orphans = set(orphans())
    proc = start_run(tmp_path, stderr=subprocess.DEVNULL, new_session=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["type"] == "run_started"
        record = json.loads((tmp_path / "run.json").read_text())
    finally:  # killed whatever is asserted: a failing check leaves no run behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    sems = [s for s in record["segments"] if s.startswith("sem.mp-")]
    assert len(sems) == 6, record  # two queues: two locks and a counter each
    assert wait_until(lambda: set(orphans()) <= before_orphans, timeout_s=20), orphans()

    def left() -> list[str]:
        return [s for s in sems if (Path("/dev/shm") / s).exists()]

    assert left() == sems  # no one else removes them
    RunRecord(tmp_path).claim().release()  # the next start
    assert left() == []


def test_one_run_per_data_folder_and_a_dead_runs_leftovers_go(tmp_path: Path) -> None:
    first = RunRecord(tmp_path).claim()
    with pytest.raises(DeviceBusy, match=f"pid {os.getpid()}"):
        RunRecord(tmp_path).claim()
    # A "run" that died and left a child and a segment behind.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    seg = Path("/dev/shm") / "capsight-fb-testleftover"
    seg.write_bytes(b"x")
    first.add_child(child.pid)
    first.add_segment(seg.name)
    link = Path(tempfile.mkdtemp(prefix="capsight-mcu-"))
    (link / "ttyCART0").symlink_to("/dev/null")
    not_ours = tmp_path / "somebody-elses"  # a recorded folder not named as ours stays
    not_ours.mkdir()
    first.add_temp_dir(link)
    first.add_temp_dir(not_ours)
    first.record["pid"] = 999_999_999  # not alive
    first._write()
    os.close(first._fd)  # type: ignore[arg-type]  # the lock goes as the process would
    first._fd = None
    second = RunRecord(tmp_path).claim()
    try:
        assert child.wait(5) == -signal.SIGKILL
        assert not seg.exists() and not link.exists() and not_ours.is_dir()
        assert second.cleaned == {
            "processes": [child.pid],
            "segments": [seg.name],
            "temp_dirs": [str(link)],
        }
    finally:
        second.release()


def test_a_cart_stops_twice_without_complaint(tmp_path: Path) -> None:
    from capsight_edge.cart import Cart
    from capsight_edge.profile import load_profile

    cart = Cart(load_profile(SIM, data_dir=tmp_path), record=False)
    cart.start()
    cart.stop()
    cart.stop()
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("package", ["capsight_edge", "cloud_sink", "trainer", "benchmarks"])
def test_onnxruntime_neither_phones_home_nor_writes_to_tmp(package: str, tmp_path: Path) -> None:
    """onnxruntime 1.32 for Linux starts Microsoft's telemetry when imported, and leaves its
    session file ``.ses`` in $TMPDIR; importing any of the project's packages first turns that
    off (a cart's temporary folder stays as it was, and nothing is reported anywhere)."""
    from benchmarks.teachers import make_teacher

    model = make_teacher(tmp_path, ["", "sku-1"])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    code = (
        f"import {package}, os, onnxruntime\n"
        f"onnxruntime.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
        "print(os.environ['ORT_DISABLE_TELEMETRY'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "TMPDIR": str(scratch)},
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "1"
    assert list(scratch.iterdir()) == []


def test_a_spawn_waits_until_opencvs_loader_has_put_sys_path_back() -> None:
    """``settle_imports`` (called before the encoder process is spawned) returns only once no
    OpenCV loader is in flight in another thread and the loader's folder is off ``sys.path``:
    a child spawned in that window took ``cv2/typing`` for the standard library's ``typing``
    and died before running a line of ours. Here a thread plays the loader's window (its flag
    and its folder first on ``sys.path``) for 0.3 s; and a folder that never goes gets a clear
    error instead of a child that dies."""
    import threading
    import time

    import cv2

    from capsight_edge.errors import CapsightError
    from capsight_edge.hygiene import settle_imports

    loader_dir = os.path.dirname(os.path.realpath(cv2.__file__))
    inside, done = threading.Event(), threading.Event()

    def loader_window() -> None:
        saved = list(sys.path)
        sys.OpenCV_LOADER = True  # type: ignore[attr-defined]
        sys.path.insert(1, loader_dir)
        inside.set()
        time.sleep(0.3)
        sys.path[:] = saved
        del sys.OpenCV_LOADER  # type: ignore[attr-defined]
        done.set()

    thread = threading.Thread(target=loader_window)
    thread.start()
    try:
        assert inside.wait(10)
        settle_imports()
        assert done.is_set() and loader_dir not in sys.path
    finally:
        thread.join()

    sys.path.insert(1, loader_dir)
    try:
        with pytest.raises(CapsightError, match=r"still on sys\.path"):
            settle_imports(timeout_s=0.2)
    finally:
        sys.path.remove(loader_dir)
