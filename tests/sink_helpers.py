"""A real sink on 127.0.0.1 for the tests (`capsight-sink serve` as a child process), and the
sink's CLI, on either database: SQLite files (the embedded default), or, in a module that uses
the ``sink_backend`` fixture's ``postgresql`` pass, one fresh database per data folder on the
run's PostgreSQL server (``--db`` added wherever a command takes it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from capsight_edge.localsink import LocalSink, free_port, wait_http
from tests.conftest import ROOT

__all__ = [
    "BACKEND",
    "Sink",
    "free_port",
    "sink_cli",
    "sink_db",
    "sink_index",
    "tus_headers",
    "wait_http",
]

#: The commands of capsight-sink that open the sink's database (and take ``--db``).
DB_COMMANDS = {("serve",), ("doctor",), ("migrate",), ("device", "add"), ("device", "list"),
               ("device", "revoke")}  # fmt: skip


class Backend:
    """Which database the tests' sinks use now."""

    def __init__(self) -> None:
        self.server: Any = None  # a LocalPostgres, or None: SQLite files
        self.urls: dict[str, str] = {}

    @property
    def name(self) -> str:
        return "postgresql" if self.server is not None else "sqlite"

    def use(self, server: Any) -> None:
        self.server, self.urls = server, {}

    def db_for(self, data: Path | str) -> str:
        """The database of the sink in ``data`` ("" for its own sink.db)."""
        if self.server is None:
            return ""
        key = str(Path(data).resolve())
        if key not in self.urls:
            self.urls[key] = self.server.database()
        return self.urls[key]


BACKEND = Backend()


class Sink(LocalSink):
    def __init__(self, data: Path, *serve_args: str, db: str = "", **kwargs: Any) -> None:
        super().__init__(data, *serve_args, db=db or BACKEND.db_for(data), **kwargs)


def sink_db(data: Path) -> Any:
    """The SinkDB of the sink in ``data``, on the backend in use."""
    from cloud_sink.db import SinkDB

    return SinkDB(BACKEND.db_for(data) or Path(data) / "sink.db")


def sink_index(data: Path) -> Any:
    """The Index of the sink in ``data``, on the backend in use."""
    from cloud_sink.index import Index

    return Index(BACKEND.db_for(data) or Path(data) / "index.db")


def sink_cli(*args: str) -> subprocess.CompletedProcess[str]:
    opens_db = args[:1] in DB_COMMANDS or args[:2] in DB_COMMANDS
    if BACKEND.server is not None and opens_db and "--data" in args and "--db" not in args:
        args = (*args, "--db", BACKEND.db_for(args[args.index("--data") + 1]))
    return subprocess.run(
        [sys.executable, "-m", "cloud_sink.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tus_headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", **extra}


def api_json(response: object) -> dict:  # type: ignore[type-arg]
    """A sink API response's body, held against its schema in ``schemas/api/`` (by ``type``)."""
    from tests.conftest import json_records

    (record,) = json_records(response.text, folder="schemas/api")  # type: ignore[attr-defined]
    return record
