"""A Ray cluster on this machine, for the demo and the tests: ``ray start --head`` with 2 CPUs,
a bounded object store and no dashboard, and ``ray stop`` when done (Ctrl-C included). Needs the
``train`` extras (Ray); the edge itself never uses Ray."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from capsight_edge.localsink import free_port
from capsight_edge.unixsock import ray_temp_dir

RAY = Path(sys.executable).with_name("ray")


def niced(nice: int) -> Callable[[], None] | None:
    """For ``subprocess``'s ``preexec_fn``: the child runs at niceness ``nice`` (None for 0)."""
    if not nice:
        return None

    def lower() -> None:
        os.nice(nice)

    return lower


@contextlib.contextmanager
def ray_head(cpus: int = 2, object_store_bytes: int = 150_000_000, nice: int = 0) -> Iterator[str]:
    """Yields the cluster's address (``127.0.0.1:PORT``); RuntimeError when Ray is missing or
    does not start. ``nice``: the cluster's processes (its workers too) run at this niceness,
    so that work on it takes only the CPU that others leave."""
    if not RAY.exists():
        raise RuntimeError(f"Ray is not installed beside {sys.executable} (the train extras)")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    with ray_temp_dir() as temp_dir:
        started = subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                f"--port={port}",
                f"--num-cpus={cpus}",
                f"--object-store-memory={object_store_bytes}",
                "--include-dashboard=false",
                *([f"--temp-dir={temp_dir}"] if temp_dir else []),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            preexec_fn=niced(nice),
        )
        try:
            if started.returncode != 0:
                raise RuntimeError(f"ray start failed: {started.stderr[-1500:]}")
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120, env=env)
