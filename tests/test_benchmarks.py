"""The benchmark runner: its smoke run (`--quick`, every benchmark, in the suite) writes its
reports and leaves nothing behind; the committed results are one run's."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli


def test_the_committed_results_and_the_readme_table_are_generated_from_one_run() -> None:
    from benchmarks.runner import readme_block, render_markdown

    folder = ROOT / "benchmarks"
    report = json.loads((folder / "results.json").read_text())
    assert not report["quick"] and report["machine"]["git"]["commit"]
    assert (folder / "RESULTS.md").read_text() == render_markdown(report)
    assert readme_block(report) in (ROOT / "README.md").read_text()


def gone(pid: int) -> bool:
    """No such process, or only its zombie (its parent was killed; init reaps it)."""
    from capsight_edge.hygiene import proc_stat

    stat = proc_stat(pid)
    return stat is None or stat[1][0] == "Z"


def test_each_benchmark_runs_in_a_process_of_its_own_and_takes_what_it_left_with_it(
    tmp_path: Path,
) -> None:
    """A benchmark runs in a fresh process, not the runner's (whose heap held what earlier
    benchmarks loaded); a process it leaves running is killed and named in its notes; a
    benchmark that raises or whose process is killed is a FAILED result with the reason, and
    the runner goes on."""
    from benchmarks.isolated import run_isolated
    from benchmarks.registry import BenchContext

    ctx = BenchContext(quick=True, profile_path="hw_profiles/sim.toml", out_dir=str(tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    helpers = "tests.isolation_helpers"

    res = run_isolated("test_leaves_a_process", helpers, ctx, str(scratch))
    (pid,) = [m.value for m in res.metrics if m.name == "pid"]
    assert pid != os.getpid()
    sleeper = int((tmp_path / "sleeper.pid").read_text())
    (note,) = [n for n in res.notes if n.startswith("left 1 process")]
    assert f"{sleeper} (sleep)" in note
    assert gone(sleeper)

    killed = run_isolated("test_kills_itself", helpers, ctx, str(scratch))
    assert killed.description == "FAILED" and killed.metrics[0].met is False
    assert killed.notes[:-1] == [
        "failed: its process ended with signal 9 (SIGKILL) and wrote no result"
    ]
    raised = run_isolated("test_raises", helpers, ctx, str(scratch))
    assert raised.notes[:-1] == ["failed: RuntimeError: the sink did not start"]
    assert all(r.notes[-1].startswith("ran in ") for r in (killed, raised))
    # The last note: its wall time and the CPU of its process and of what it waited for
    burnt = run_isolated("test_burns_cpu", helpers, ctx, str(scratch))
    wall, cpu = re.fullmatch(
        r"ran in ([\d.]+) s in a process of its own, which used ([\d.]+) s of CPU with the "
        r"processes it waited for \(--quick\)",
        burnt.notes[-1],
    ).groups()  # type: ignore[union-attr]
    assert 0.5 <= float(cpu) <= float(wall) + 0.2, burnt.notes
    assert list(scratch.iterdir()) == []  # no result file left behind


def test_an_interrupted_runner_leaves_no_process_of_the_benchmark_it_was_running(
    tmp_path: Path,
) -> None:
    """Ctrl-C of the runner while a benchmark runs: the benchmark's process and what it started
    go with the runner (its process group is killed), rather than running on unseen."""
    import signal
    import subprocess

    from tests.conftest import wait_until

    script = (
        "import sys, tempfile\n"
        "from benchmarks.isolated import run_isolated\n"
        "from benchmarks.registry import BenchContext\n"
        f"ctx = BenchContext(True, 'hw_profiles/sim.toml', {str(tmp_path)!r})\n"
        "run_isolated('test_hangs', 'tests.isolation_helpers', ctx, tempfile.mkdtemp())\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        assert wait_until(lambda: (tmp_path / "pids").exists(), timeout_s=60)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=30) != 0
    finally:
        runner.kill()
    assert all(gone(pid) for pid in pids)  # the sweep waits for them: no time to wait here


def test_the_disk_bound_writes_past_the_page_cache_where_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sink_upload's disk bound: on a disk file system it writes with O_DIRECT (a burst of
    buffered writes measured the VM's memory, not the disk) and leaves nothing behind; where
    O_DIRECT is refused it still measures, through the page cache, and says which."""
    from benchmarks.bench_sink import _disk_once

    spent, direct = _disk_once(tmp_path, 8 * 2**20)
    assert spent > 0 and direct is True  # the suite's temporary folder is on ext4 here
    assert list(tmp_path.iterdir()) == []
    if hasattr(os, "O_DIRECT"):
        real_open = os.open

        def refuse_direct(path: Any, flags: int, *a: Any) -> int:
            if flags & os.O_DIRECT:
                raise OSError(22, "Invalid argument")
            return real_open(path, flags, *a)

        monkeypatch.setattr(os, "open", refuse_direct)
        spent, direct = _disk_once(tmp_path, 8 * 2**20)
        assert spent > 0 and direct is False
        assert list(tmp_path.iterdir()) == []


def test_the_user_space_wire_loses_paces_and_delays_packets_as_asked() -> None:
    """benchmarks/tunwire.py's shaping, on pipes in place of the TUN devices: upload packets
    leave the bottleneck one after another at the link's rate, then the one-way delay; a queue
    that would hold one longer than its limit drops it; the seeded loss drops the share asked;
    answers take the delay alone; a side that cannot take a packet loses it, counted."""
    from benchmarks.tunwire import Wire

    host_r, host_w = os.pipe()
    ns_r, ns_w = os.pipe()
    os.set_blocking(host_r, False)  # a packet not written fails the read, not hangs it
    os.set_blocking(ns_r, False)
    try:
        # 10 Mbit/s: a 1250-byte packet takes 1 ms; RTT 40 ms: 20 ms each way; queue 5.5 ms.
        wire = Wire(host_w, ns_w, 10.0, 40.0, 0.0, 5.5, seed=1)
        for i in range(8):
            wire.arrive(True, bytes([i]) * 1250, now=0.0)
        # six start within 5.5 ms (at 0 to 5 ms) and arrive 1 ms after their start plus 20 ms;
        # the 7th and 8th would wait 6 ms: dropped
        assert [w[0] for w in wire.due] == pytest.approx([0.020 + 0.001 * k for k in range(1, 7)])
        assert wire.counts["up_queue_drops"] == 2
        wire.arrive(False, b"ack", now=0.0)  # an answer: the delay alone
        assert wire.deliver(0.0205) == pytest.approx(0.0005)  # the 1st upload is due at 21 ms
        assert os.read(host_r, 10) == b"ack"
        assert wire.deliver(0.0215) == pytest.approx(0.0005)
        assert os.read(ns_r, 65536) == bytes([0]) * 1250
        assert wire.deliver(1.0) is None and len(os.read(ns_r, 65536)) == 5 * 1250
        lossy = Wire(host_w, ns_w, 1000.0, 0.0, 1.0, 400.0, seed=7)
        for _ in range(100_000):
            lossy.arrive(True, b"x", now=0.0)
        assert 900 <= lossy.counts["up_lost"] <= 1100  # 1 % of 100,000, seeded
        os.close(ns_r)
        lossy.due = lossy.due[:1]
        os.close(ns_w)  # that side is gone: the packet is lost, counted
        assert lossy.deliver(1.0) is None and lossy.counts["undeliverable"] == 1
    finally:
        for fd in (host_r, host_w):
            os.close(fd)


def assert_wifi_ran_or_said_why(wifi: dict[str, Any]) -> None:
    """upload_wifi ran (as root with iproute2) or says why not, and left no namespace, veth or
    TUN device behind either way. Where TUN devices can be made, the link had its delay and loss
    (the kernel's netem, or the user-space wire where the kernel has none)."""
    import subprocess

    from benchmarks.bench_wifi import why_not

    if why_not():
        assert wifi["notes"][0] == f"skipped: {why_not()}"
        return
    names = {m["name"]: m for m in wifi["metrics"]}
    assert names["bundles delivered"]["met"], wifi
    assert names["goodput while the link is up, as a share of the shaped rate"]["value"] > 0
    if Path("/dev/net/tun").exists():  # the kernel's netem or the user-space wire: either way
        assert "10 Mbit/s, 40 ms RTT and 1% loss" in wifi["description"], wifi["description"]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert "capsight-wifi" not in namespaces.stdout and "csw" not in links and "cst" not in links


def test_an_inference_steps_wait_for_a_core_is_what_a_busy_neighbour_adds() -> None:
    """inference_regression splits a step's time into its own CPU and its wait for a core
    (the kernel's scheduler statistics): a thread spinning beside a busy process on one core
    waits for a good part of the time, never for longer than the time that went by, and alone
    on it hardly at all."""
    import subprocess
    import time

    from benchmarks.bench_recorder import RunqueueWait

    wait = RunqueueWait()
    if wait.ns() is None:
        pytest.skip("this kernel keeps no scheduler statistics (/proc/thread-self/schedstat)")
    cpu = min(os.sched_getaffinity(0))
    allowed = os.sched_getaffinity(0)

    def spin(seconds: float) -> tuple[int, float]:
        before, t0 = wait.ns(), time.monotonic()
        while time.monotonic() < t0 + seconds:
            pass
        after, t1 = wait.ns(), time.monotonic()
        assert before is not None and after is not None
        return after - before, t1 - t0

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpu})
        os.sched_setaffinity(0, {cpu})  # this thread only
        time.sleep(0.2)  # the busy process is running on that core
        shared, went_by = spin(0.6)
        busy.kill()
        busy.wait()
        alone, _ = spin(0.3)
    finally:
        os.sched_setaffinity(0, allowed)
        busy.kill()
        busy.wait()
        wait.close()
    assert 0.1e9 < shared <= went_by * 1e9
    assert alone < shared


def test_the_gpu_benchmarks_reference_cnn_is_the_cart_models_network(tmp_path: Path) -> None:
    """Where onnxruntime has no CUDA provider, GPU inference runs the reference CNN in PyTorch:
    the same network and weights, read from the ONNX file, giving onnxruntime's answers."""
    import numpy as np
    import onnxruntime as ort

    from benchmarks.gpu import TorchReference
    from capsight_edge.runtime.inference import build_reference_cnn

    model = build_reference_cnn(tmp_path / "reference_cnn.onnx")
    x = np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": x})[0]
    got = TorchReference(model, "cpu")(x)
    assert got.shape == want.shape == (1, 10)
    assert np.abs(got - want).max() < 1e-4 and np.abs(want).max() > 0.01


GPU_HOST_SITE = """
import sys
sys.path[:] = [{filtered!r} if p == {site!r} else p for p in sys.path]
"""


def gpu_host_env(tmp_path: Path) -> dict[str, str]:
    """This machine as the GPU host sees it: site-packages replaced by a folder holding only
    the host's image (`benchmarks.wheelhouse.HOST` with what it requires), the wheelhouse and
    the project (each distribution's files linked in, its metadata too), by a `sitecustomize`
    on PYTHONPATH, so in every Python process started from here, the sink's too. Anything else
    is not there to import, as it would not be there."""
    import importlib.metadata as metadata
    import sysconfig

    from benchmarks.wheelhouse import HOST, canonical, closure, wheelhouse

    here = f"{sys.version_info.major}.{sys.version_info.minor}"  # the host's Python, played here
    allowed = closure(HOST, here, strict=False) | set(wheelhouse(here)) | {"capsight"}
    site = Path(sysconfig.get_paths()["purelib"])
    filtered = tmp_path / "gpu-host" / "site-packages"
    filtered.mkdir(parents=True)
    for dist in metadata.distributions():
        if canonical(dist.metadata["Name"]) not in allowed:
            continue
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            if (site / top).exists() and not (filtered / top).exists():
                (filtered / top).symlink_to(site / top)
    custom = tmp_path / "gpu-host" / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        GPU_HOST_SITE.format(filtered=str(filtered), site=str(site))
    )
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{custom}:{ROOT}" + (f":{path}" if path else "")}


def test_the_device_wheelhouse_is_what_the_device_benchmarks_require_beyond_the_hosts_image() -> (
    None
):
    """Resolved, not listed by hand: what the packages the device path imports require in turn
    (uvicorn's click, python-tuf's urllib3, cryptography's cffi) is in it, and nothing the
    host's image has is fetched again; every wheel has its pin."""
    from benchmarks.wheelhouse import HOST, closure, pins, wheelhouse

    names = wheelhouse("3.12")
    assert {"click", "urllib3", "cffi", "pycparser", "prometheus-client", "av", "tuf"} <= set(names)
    assert not set(names) & closure(HOST, "3.12", strict=False)
    assert {"numpy", "torch", "h11", "anyio", "typing-extensions"} <= closure(
        HOST, "3.12", strict=False
    )
    assert len(pins(names)) == len(names)


def test_the_model_runtime_pair_runs_on_what_the_gpu_host_and_the_wheelhouse_hold(
    tmp_path: Path,
) -> None:
    """The part of `inference_regression` that `--quick` leaves out, under the GPU host's
    imports (`gpu_host_env`): a real sink starts, serves a signed registry, and the cart's
    ModelRuntime pulls, verifies and self-tests the model. The device run on the H200 lost this
    benchmark to an import the wheelhouse did not hold."""
    import subprocess

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import cloud_sink.server, cloud_sink.tus  # the sink's: here first, for a clear error\n"
        "from benchmarks.push import served_registry\n"
        "root = Path(sys.argv[1])\n"
        "with served_registry(root) as served:\n"
        "    rt = served.runtime(root / 'cart')\n"
        "    print(rt.pull().status)\n"
        "    rt.close()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "pair")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=gpu_host_env(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["updated"], res.stdout
    # and the gate does hold back what the host lacks
    blocked = subprocess.run(
        [sys.executable, "-c", "import ray"],
        capture_output=True, text=True, timeout=60, env=gpu_host_env(tmp_path / "b"),
    )  # fmt: skip
    assert "No module named 'ray'" in blocked.stderr, blocked.stderr[-2000:]


def test_a_sink_that_exits_at_start_is_reported_at_once_with_its_status(tmp_path: Path) -> None:
    """`LocalSink.start` (the benchmarks', the demo's and the tests' sink) stops waiting when the
    sink's process is gone: an import missing on a GPU host costs a second, not the minute of
    the start timeout, and the error says the sink exited."""
    import time

    from capsight_edge.localsink import LocalSink

    sink = LocalSink(tmp_path / "sink", "--max-size", "lots")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"the sink exited with status 2 before it answered"):
        sink.start()
    assert time.monotonic() - t0 < 30 and sink.proc is None


def test_the_device_script_runs_here_and_says_what_it_could_not_measure(tmp_path: Path) -> None:
    """benchmarks/device/run.sh is for a GPU host; on a machine without a GPU (this one, CI) it
    still writes the same report, and each GPU figure it cannot take is skipped with why. It
    runs under the GPU host's imports (`gpu_host_env`)."""
    import subprocess

    from benchmarks.gpu import gpu_backend

    out = tmp_path / "device"
    res = subprocess.run(
        [str(ROOT / "benchmarks" / "device" / "run.sh"), str(out), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**gpu_host_env(tmp_path), "DEVICE_BENCHMARKS": "gpu_inference encoders",
             "DEVICE_WHEELS": "", "PYTHON": sys.executable, "CAPSIGHT_SOURCE_COMMIT": "ab" * 20},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    by_name = {b["name"]: b for b in report["benchmarks"]}
    assert set(by_name) == {"gpu_inference", "encoders"}
    assert by_name["encoders"]["metrics"], by_name["encoders"]
    backend, why = gpu_backend()
    if backend:
        assert by_name["gpu_inference"]["metrics"]
    else:
        assert by_name["gpu_inference"]["notes"][0] == f"skipped: no GPU inference here ({why})"
    assert (out / "RESULTS.md").exists() and (out / "targets.png").exists()
    # the device tool's copy may carry a .git older than its files: the commit it was sent at
    assert report["machine"]["git"] == {"commit": "ab" * 20, "dirty": None, "changed_files": []}


def test_a_hardware_profile_runs_what_it_can_and_says_why_the_rest_is_skipped(
    tmp_path: Path,
) -> None:
    """`--profile hw_profiles/jetson-orin.toml`: the benchmarks that run whole simulated carts
    are skipped with the reason (the profile's real camera and MCU); the others run on this
    host, and the report's header says what was and was not measured."""
    res = run_cli(
        "--quick", "--profile", "hw_profiles/jetson-orin.toml", "--only", "profile",
        "--only", "prelabel", "--only", "fleet_cost", "--out", str(tmp_path),
        prog="benchmarks", timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    by_name = {b["name"]: b for b in report["benchmarks"]}
    for name in ("prelabel", "fleet_cost"):
        (note,) = by_name[name]["notes"][:1]
        assert note.startswith("skipped: it runs whole simulated carts"), note
        assert "camera (v4l2)" in note and "mcu (serial)" in note and not by_name[name]["metrics"]
    assert by_name["profile"]["metrics"]
    assert report["profile"]["path"] == "hw_profiles/jetson-orin.toml"
    assert "real camera, imu, mcu" in report["profile"]["note"]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "- Profile: `hw_profiles/jetson-orin.toml`: real camera, imu, mcu." in md
    assert "skipped: it runs whole simulated carts" in md


def test_the_run_names_each_changed_file_whole(tmp_path: Path) -> None:
    """git status's first line begins with a space (" M file"): it is not cut short."""
    import subprocess

    from capsight_edge.machine import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "alpha.txt").write_text("a\n")
    (tmp_path / "beta.txt").write_text("b\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    (tmp_path / "alpha.txt").write_text("a2\n")
    (tmp_path / "beta.txt").write_text("b2\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed_files"] == ["alpha.txt", "beta.txt"]


@dataclass
class QuickRun:
    out: Path
    scratch: Path
    returncode: int
    stderr: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def quick_run(request: pytest.FixtureRequest) -> QuickRun:
    """`python -m benchmarks --quick`, all of it, once per session (about 4 minutes of its own),
    with every temporary folder under a scratch folder of its own. It started when the tests were
    collected and ran beside the others (tests/conftest.py: ``QuickRunProcess``)."""
    from tests.conftest import QUICK_RUN

    run = request.config.stash[QUICK_RUN]
    returncode, stderr = run.wait(timeout_s=900)
    results = run.out / "results.json"
    report = json.loads(results.read_text()) if results.is_file() else {}
    return QuickRun(run.out, run.scratch, returncode, stderr, report)


@pytest.mark.timeout(1200)
def test_every_benchmark_runs_in_quick_form_and_leaves_nothing_behind(quick_run: QuickRun) -> None:
    """Every registered benchmark produces metrics (or says why it was skipped), none fails; the
    report names the machine and the commit, and RESULTS.md is what results.json renders to.
    Targets are not asserted: a smoke run's figures are not the full run's. No benchmark leaves
    a process running after it (the runner would kill it and say so). Every temporary folder
    goes, and the benchmark that needs network namespaces leaves no namespace or veth behind."""
    from benchmarks.runner import BENCHMARKS, _load

    _load()
    out = quick_run.out
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    assert list(quick_run.scratch.iterdir()) == []
    report = quick_run.report
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["os"] and report["quick"]
    assert len(machine["git"]["commit"]) == 40 and isinstance(machine["git"]["dirty"], bool)
    assert machine["packages"]["numpy"] and "onnxruntime" in machine["packages"]
    by_name = {b["name"]: b for b in report["benchmarks"]}
    assert set(by_name) == set(BENCHMARKS)
    for name, bench in by_name.items():
        assert not any(n.startswith("failed:") for n in bench["notes"]), (
            name,
            bench["notes"],
            quick_run.stderr[-3000:],  # a child's traceback goes there, not into the notes
        )
        assert not any(n.startswith("left ") for n in bench["notes"]), (name, bench["notes"])
        if not bench["notes"][0].startswith("skipped:"):
            assert bench["metrics"], name
    load = next(m for m in by_name["profile"]["metrics"] if m["name"].startswith("profile load"))
    assert load["baseline"] > 0 and load["ratio"] > 0
    for png in ("targets", "journal_batch", "upload_rate_over_time", "inference_latency_cdf"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    md = (out / "RESULTS.md").read_text()
    assert "| profile load (median) |" in md and machine["git"]["commit"][:12] in md
    # RESULTS.md is generated from results.json alone: rendering again gives the same file
    (out / "RESULTS.md").unlink()
    res = run_cli("--render", str(out), prog="benchmarks", timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / "RESULTS.md").read_text() == md
    assert_wifi_ran_or_said_why(by_name["upload_wifi"])


@pytest.mark.timeout(1200)
def test_the_upload_benchmark_gives_every_throughput_trial_beside_its_medians(
    quick_run: QuickRun,
) -> None:
    """`upload` judges ours against tuspy on pairs of trials taken back to back (the median of
    the pairs' ratios) and gives each series' trials in the order taken (a quick run takes one
    of each), so the spread behind a median can be read from the report."""
    (bench,) = [b for b in quick_run.report["benchmarks"] if b["name"] == "upload"]
    (note,) = [n for n in bench["notes"] if n.startswith("per trial, on the wire")]
    series = {
        label.strip(): [float(v) for v in values.split(", ")]
        for label, values in re.findall(r"([^;:\[]+) \[([^\]]*)\]", note)
    }
    assert set(series) == {
        "tuspy 1 at a time",
        "ours 1",
        "tuspy 2 at once",
        "ours 2",
        "ours' first starts",
    }
    assert all(len(v) == 1 and v[0] > 0 for v in series.values()), note
    medians = {m["name"]: m for m in bench["metrics"]}
    one = medians["uncapped throughput, one upload at a time vs tuspy one at a time"]
    assert series["ours 1"][0] == pytest.approx(one["value"], abs=0.5)
    assert series["tuspy 1 at a time"][0] == pytest.approx(one["baseline"], abs=0.5)
    # The targets: ours against tuspy in the same pair of trials, the median of the pairs
    paired = medians[
        "ours vs tuspy, one upload at a time, on the wire: median of the paired trials"
    ]
    assert paired["baseline"] == 1.0 and paired["met"] is not None and paired["target"]
    assert paired["value"] == pytest.approx(one["value"] / one["baseline"])
    assert [n for n in bench["notes"] if n.startswith("paired ratios, ours / tuspy")]
    targets = [m["name"] for m in bench["metrics"] if m["met"] is not None and "tuspy" in m["name"]]
    assert len(targets) == 4 and all("paired trials" in name for name in targets), targets


@pytest.mark.timeout(1200)
def test_the_fleet_cost_benchmark_reports_every_stage_per_capture_at_each_size(
    quick_run: QuickRun,
) -> None:
    """`fleet_cost` in quick form (2 and 4 carts): every stage's CPU per capture, the bytes and
    the reviewer's seconds at each size, the two targets against the smallest fleet, the plot."""
    (bench,) = [b for b in quick_run.report["benchmarks"] if b["name"] == "fleet_cost"]
    assert not any(n.startswith("failed:") for n in bench["notes"]), bench["notes"]
    values = {m["name"]: m for m in bench["metrics"]}
    for n in (2, 4):
        assert values[f"{n} carts: captures"]["value"] > 0
        assert values[f"{n} carts: bytes uploaded per capture"]["value"] > 0
        for stage in ("ingest", "pre-label", "export", "training"):
            assert values[f"{n} carts: {stage} CPU per capture"]["value"] > 0, (n, stage)
        assert values[f"{n} carts: reviewer seconds per capture"]["value"] > 0
    for name in ("cloud CPU per capture, 4 carts", "reviewer seconds per capture, 4 carts"):
        assert values[name]["baseline"] > 0 and values[name]["met"] is not None
    assert (quick_run.out / "fleet_cost.png").read_bytes()[:4] == b"\x89PNG"
    # prelabel, after it in the run, pre-labels the fleet's first three carts fleet_cost recorded
    (pre,) = [b for b in quick_run.report["benchmarks"] if b["name"] == "prelabel"]
    assert "3 carts x 12 s" in pre["notes"][0], pre["notes"]
    assert "3 of them recorded earlier in this run by another benchmark" in pre["notes"][0]


def test_a_cart_recorded_once_in_a_run_is_copied_to_the_next_benchmark_that_asks(
    tmp_path: Path,
) -> None:
    """``record_carts``: a cart recorded with the same profile, seed and seconds in the same run
    is copied from the run's shared folder, whole; a recording that a killed benchmark left
    half made is recorded again, not taken."""
    from benchmarks.registry import BenchContext, SimCart, record_carts
    from capsight_edge.journal.journal import Journal

    ctx = BenchContext(True, "hw_profiles/sim.toml", str(tmp_path), shared=str(tmp_path / "sh"))
    shared = tmp_path / "sh" / "carts"
    cart, other = SimCart("fleet-00", "store-00", 41), SimCart("fleet-01", "store-01", 42)
    assert record_carts(ctx, [cart], 1.0, tmp_path / "a", at_once=1) == 0
    (kept,) = shared.iterdir()
    assert kept.name.startswith("fleet-00-")
    assert record_carts(ctx, [cart], 1.0, tmp_path / "b", at_once=1) == 1

    def files(folder: Path) -> dict[str, int]:
        return {str(f.relative_to(folder)): f.stat().st_size for f in folder.rglob("*")}

    assert files(tmp_path / "b" / "fleet-00") == files(tmp_path / "a" / "fleet-00") != {}
    assert (tmp_path / "b" / "fleet-00.toml").read_text() == (
        tmp_path / "a" / "fleet-00.toml"
    ).read_text()
    Journal(tmp_path / "b" / "fleet-00" / "journal.db", readonly=True).close()  # a journal
    kept.rename(shared / f"{kept.name}.part")  # as a benchmark killed while recording leaves it
    assert record_carts(ctx, [cart, other], 1.0, tmp_path / "c", at_once=2) == 0
    assert sorted(p.name[:8] for p in shared.iterdir()) == ["fleet-00", "fleet-01"]
    assert not any(p.name.endswith(".part") for p in shared.iterdir())
    assert (tmp_path / "c" / "fleet-00" / "journal.db").is_file()
