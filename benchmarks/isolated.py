"""Each benchmark in a process of its own.

A benchmark run used to run all of them in the runner's process, one after another. A late
benchmark then inherited what the earlier ones left: a heap of 1 to 3 GB (frames, images,
models), threads of libraries they loaded, and the garbage collector walking all of it. The
upload benchmark's clients run in that process, so its figures depended on what ran before it.
Now :func:`run_isolated` starts ``python -m benchmarks.isolated`` for one benchmark, in a
session (process group) of its own, which imports only that benchmark's module and writes its
result to a file. When it ends, whatever it left running in its group is killed and named in
the result's notes. When the runner dies, the benchmark's process dies with it
(``PR_SET_PDEATHSIG``); when the runner is interrupted, it kills the benchmark's group first.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.registry import BENCHMARKS, BenchContext, BenchResult, Metric

#: How long what the benchmark's process leaves in its group may take to end by itself: the
#: resource tracker of a multiprocessing user ends when it reads the end of its pipe, and
#: unlinks the shared memory its process leaked as it goes; a SIGKILL before that would leave
#: the segments in /dev/shm.
GRACE_S = 3.0
#: How long the killed processes may take to go before the runner stops waiting for them.
SWEEP_TIMEOUT_S = 10.0


def failed(name: str, why: str) -> BenchResult:
    result = BenchResult(name, "FAILED")
    result.metrics.append(Metric("benchmark ran", 0, "", target="ran", met=False))
    result.notes.append(f"failed: {why}"[:500])
    return result


def run_isolated(name: str, module: str, ctx: BenchContext, scratch: str) -> BenchResult:
    """Run benchmark ``name`` (registered by ``module``) in a fresh process; ``scratch`` is the
    run's temporary folder, the process's TMPDIR."""
    result_file = Path(scratch) / f".{name}.result.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.isolated",
        name,
        "--module",
        module,
        "--profile",
        ctx.profile_path,
        "--out",
        ctx.out_dir,
        "--result",
        str(result_file),
        "--parent",
        str(os.getpid()),
    ]
    cmd += (["--quick"] if ctx.quick else []) + (["--shared", ctx.shared] if ctx.shared else [])
    env = dict(os.environ, TMPDIR=scratch)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        # wait4, not wait: the CPU it used comes back with it (its own and that of the
        # processes it waited for)
        _pid, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # an interrupt of the runner: nothing of the benchmark outlives it
        sweep_group(proc.pid, grace_s=0)
        raise
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    left = sweep_group(proc.pid)
    try:
        result = BenchResult.from_dict(json.loads(result_file.read_text()))
        result_file.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        how = f"signal {-rc}{_signal_name(-rc)}" if rc < 0 else f"exit status {rc}"
        result = failed(name, f"its process ended with {how} and wrote no result")
    if left:
        result.notes.append(
            f"left {len(left)} process(es) running when it ended, killed by the runner: "
            + ", ".join(f"{pid} ({comm})" for pid, comm in left)
        )
    result.notes.append(
        f"ran in {wall:.1f} s in a process of its own, which used {cpu:.1f} s of CPU with the "
        "processes it waited for" + (" (--quick)" if ctx.quick else "")
    )
    return result


def _signal_name(number: int) -> str:
    try:
        return f" ({signal.Signals(number).name})"
    except ValueError:  # a real-time signal has no name of its own
        return ""


def group_members(pgid: int) -> list[tuple[int, str]]:
    """Live processes (zombies excluded) in process group ``pgid``: (pid, command name)."""
    from capsight_edge.hygiene import proc_stat

    found = []
    for entry in Path("/proc").iterdir():
        stat = proc_stat(entry.name) if entry.name.isdigit() else None
        if stat and stat[1][0] != "Z" and int(stat[1][2]) == pgid:
            found.append((int(entry.name), stat[0]))
    return found


def _wait_empty(pgid: int, seconds: float) -> list[tuple[int, str]]:
    """Wait up to ``seconds`` for process group ``pgid`` to empty; returns who is still in it."""
    deadline = time.monotonic() + seconds
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)  # no handle on processes that are not our children: look again
    return members


def sweep_group(pgid: int, grace_s: float = GRACE_S) -> list[tuple[int, str]]:
    """What is left in process group ``pgid`` after ``grace_s``, killed, and waited for;
    returns what had to be killed."""
    left = _wait_empty(pgid, grace_s)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_empty(pgid, SWEEP_TIMEOUT_S)
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolated")
    parser.add_argument("name")
    parser.add_argument("--module", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shared", default="")
    args = parser.parse_args(argv)
    from capsight_edge.hygiene import die_with_parent

    die_with_parent(args.parent)
    ctx = BenchContext(args.quick, args.profile, args.out, shared=args.shared)
    try:
        importlib.import_module(args.module)
        result = BENCHMARKS[args.name](ctx)
    except Exception as exc:  # the runner records it; the other benchmarks still run
        traceback.print_exc()
        result = failed(args.name, f"{type(exc).__name__}: {exc}")
    tmp = Path(args.result + ".tmp")
    tmp.write_text(json.dumps(result.as_dict()))
    tmp.rename(args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
