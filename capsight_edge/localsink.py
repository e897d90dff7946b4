"""A sink on this machine: ``capsight-sink serve`` as a child process on 127.0.0.1.

What ``capsight demo`` starts, and what the tests and benchmarks run against. It drives the sink
only through its CLI and HTTP, as any operator would: the edge never imports the sink.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

SINK_CLI = (sys.executable, "-m", "cloud_sink.cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60.0) -> bool:
    """True once ``url`` answers at all (any status) within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


class LocalSink:
    """``serve_args`` go to ``capsight-sink serve`` (``--max-size``, ``--expire-hours``, ...);
    the port stays the same across restarts; ``log`` takes the sink's output (default: none).
    ``host``: the address it listens on; ``wrap``: a command the server runs under (``ip netns
    exec NS`` for a sink in its own network namespace); ``db``: a database server's URL
    (``serve --db``) instead of the data folder's ``sink.db``."""

    def __init__(
        self,
        data: Path,
        *serve_args: str,
        port: int = 0,
        log: Path | None = None,
        host: str = "127.0.0.1",
        wrap: tuple[str, ...] = (),
        db: str = "",
    ):
        self.data = Path(data)
        self.db = db
        self.port = port or free_port()
        self.host, self.wrap = host, wrap
        self.url = f"http://{host}:{self.port}"
        self.serve_args = serve_args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""

    def add_device(self, name: str, *, admin: bool = False) -> str:
        """A device (or admin) token, from ``capsight-sink device add``."""
        res = subprocess.run(
            [*SINK_CLI, "device", "add", name, "--data", str(self.data), "--json"]
            + (["--admin"] if admin else [])
            + (["--db", self.db] if self.db else []),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise RuntimeError(f"capsight-sink device add {name}: {res.stderr.strip()}")
        return str(json.loads(res.stdout)["token"])

    def wait_ingested(self, timeout_s: float = 120.0) -> bool:
        """The sink ingests completed uploads in the background: wait until its ingest queue
        holds nothing pending (``GET /api/ingest`` with an admin token, made on first use)."""
        import httpx

        if not self.admin:
            self.admin = self.add_device(f"localsink-admin-{os.getpid()}", admin=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = httpx.get(
                self.url + "/api/ingest",
                headers={"Authorization": f"Bearer {self.admin}"},
                timeout=30,
            )
            if r.status_code == 200 and r.json()["pending"] == 0:
                return True
            time.sleep(0.2)
        return False

    def start(self, timeout_s: float = 60.0) -> LocalSink:
        self.data.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] | int = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            serve = (
                "serve",
                "--data",
                str(self.data),
                "--host",
                self.host,
                "--port",
                str(self.port),
                *(("--db", self.db) if self.db else ()),
            )
            self.proc = subprocess.Popen(
                [*self.wrap, *SINK_CLI, *serve, *self.serve_args],
                stdout=out,
                stderr=out,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child holds its own copy
        if not wait_http(self.url + "/healthz", timeout_s):
            self.stop()
            where = f"; see {self.log}" if self.log else ""
            raise RuntimeError(f"the sink did not start on {self.url}{where}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
