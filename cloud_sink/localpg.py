"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the benchmarks: ``initdb`` in a
temporary folder, ``pg_ctl start`` on a free port, one fresh database per caller, everything
removed at :meth:`LocalPostgres.stop`.

PostgreSQL refuses to run as root: as root the server runs as ``nobody`` (the folder is handed
to it). It is made for speed (``fsync=off``: a server that is stopped or killed keeps what it
committed, a machine that loses power would not); nothing it holds outlives the run that
started it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from cloud_sink.sql import SinkError


def pg_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _reachable_tmp() -> str:
    """A temporary folder the server's user can reach: as root, the server runs as ``nobody``,
    which cannot enter a private TMPDIR (the benchmark runner's is 0700)."""
    here = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0:
        return str(here)
    for folder in (here, *here.parents):
        if not os.stat(folder).st_mode & 0o001:  # others cannot pass through it
            return "/tmp"
    return str(here)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    USER = "capsight"

    def __init__(self) -> None:
        where = pg_bin()
        if where is None:
            raise SinkError(
                "no PostgreSQL server programs (initdb): install Debian's postgresql package"
            )
        self.bin = where
        self.folder = Path(tempfile.mkdtemp(prefix="capsight-pg-", dir=_reachable_tmp()))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.url = f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.folder, 65534, 65534)  # nobody
            self._as = ["runuser", "-u", "nobody", "--"]
        self.started = False

    def _run(self, *args: str) -> None:
        res = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if res.returncode != 0:
            raise SinkError(f"{Path(args[0]).name}: {(res.stderr or res.stdout).strip()[-600:]}")

    def start(self) -> LocalPostgres:
        """Make the cluster (the first time) and start the server; again after :meth:`halt`,
        on the same port, with what it held."""
        if not self.data.exists():
            self._initdb()
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )
        self.started = True
        return self

    def halt(self) -> None:
        """Stop the server at once, as a crash or an outage would (:meth:`start` again)."""
        if self.started:
            subprocess.run(
                [
                    *self._as,
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            self.started = False

    def _initdb(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.USER,
            "-E",
            "UTF8",
            "--no-sync",
        )

    def database(self, name: str = "") -> str:
        """A new, empty database: its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        """Stop the server and remove everything it held."""
        self.halt()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
