"""A sink on this machine: ``capsight-sink serve`` as a child process on 127.0.0.1.

What ``capsight demo`` starts, and what the tests and benchmarks run against. It drives the sink
only through its CLI and HTTP, as any operator would: the edge never imports the sink.
:class:`TcpProxy` puts a round-robin proxy in front of several (or in front of a bucket, to take
it away and bring it back).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

SINK_CLI = (sys.executable, "-m", "cloud_sink.cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None) -> bool:
    """True once ``url`` answers at all (any status) within ``timeout_s``; False at the
    deadline, or as soon as ``alive()`` says the server is gone."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            if alive is not None and not alive():
                return False
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
        proc = self.proc
        assert proc is not None
        if not wait_http(self.url + "/healthz", timeout_s, alive=lambda: proc.poll() is None):
            code = proc.poll()
            self.stop()
            where = f"; see {self.log}" if self.log else ""
            how = (
                "did not start" if code is None else f"exited with status {code} before it answered"
            )
            raise RuntimeError(f"the sink {how} on {self.url}{where}")
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


class TcpProxy:
    """A round-robin TCP proxy on 127.0.0.1, for tests and benchmarks: each connection goes to
    the next backend that accepts it (a dead one is passed over), and ``used`` records which.
    ``down()`` cuts every connection and refuses new ones until ``up()`` (a service that went
    away); ``bytes_up`` counts what clients sent through it."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.n = 0
        self.accepting = True
        self.used: list[int] = []
        self.bytes_up = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            with self._lock:
                self._socks |= {client, upstream}
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for _ in range(len(self.backends)):
            i = self.n % len(self.backends)
            self.n += 1
            try:
                s = socket.create_connection(self.backends[i], timeout=2)
            except OSError:
                continue
            s.settimeout(None)
            self.used.append(i)
            return s
        return None

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while block := src.recv(1 << 16):
                dst.sendall(block)
                if up:
                    with self._lock:
                        self.bytes_up += len(block)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._socks -= {src, dst}

    def down(self) -> None:
        self.accepting = False
        with self._lock:
            socks, self._socks = set(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.down()
        self._listener.close()
