"""A real sink on 127.0.0.1 for the tests (`capsight-sink serve` as a child process), and the
sink's CLI, on either database: SQLite files (the embedded default), or, in a module that uses
the ``sink_backend`` fixture's ``postgresql`` pass, one fresh database per data folder on the
run's PostgreSQL server (``--db`` added wherever a command takes it)."""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from capsight_edge.localsink import LocalSink, free_port, wait_http
from tests.conftest import ROOT

__all__ = [
    "BACKEND",
    "OCTETS",
    "Sink",
    "TusClient",
    "bundle_metadata",
    "chunk_checksum",
    "free_port",
    "half_sent_patch",
    "kill_holding_the_upload",
    "sink_cli",
    "sink_db",
    "sink_index",
    "tus_headers",
    "wait_http",
]

#: The commands of capsight-sink that open the sink's database (and take ``--db``).
DB_COMMANDS = {("serve",), ("doctor",), ("migrate",), ("device", "add"), ("device", "list"),
               ("device", "revoke"), ("prelabel",), ("audit",), ("export",), ("model", "promote"),
               ("model", "rollback"), ("model", "ls"), ("model", "import")}  # fmt: skip


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


# -- a tus client of the sink's own, for tests across instances -------------------------------
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def bundle_metadata(bundle_id: str, name: str) -> str:
    """Upload-Metadata naming a bundle's file."""
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in (("bundle_id", bundle_id), ("filename", name))
    )


def chunk_checksum(data: bytes) -> str:
    """Upload-Checksum for ``data`` (sha256)."""
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


class TusClient:
    """A tus client whose every request goes to the next of ``urls`` (one URL: always it), on a
    new connection each; ``seen`` records where each went."""

    def __init__(self, urls: list[str], token: str) -> None:
        self.urls, self.token, self.n = urls, token, 0
        self.seen: list[str] = []

    def next(self) -> str:
        url = self.urls[self.n % len(self.urls)]
        self.n += 1
        self.seen.append(url)
        return url

    def create(self, bundle_id: str, name: str, length: int) -> str:
        import httpx

        r = httpx.post(
            self.next() + "/files/",
            headers=tus_headers(
                self.token,
                **{
                    "Upload-Length": str(length),
                    "Upload-Metadata": bundle_metadata(bundle_id, name),
                },
            ),
        )
        assert r.status_code == 201, r.text
        return str(r.headers["Location"]).rsplit("/", 1)[1]

    def head(self, upload_id: str) -> int:
        import httpx

        r = httpx.head(self.next() + f"/files/{upload_id}", headers=tus_headers(self.token))
        assert r.status_code == 200, r.text
        return int(r.headers["Upload-Offset"])

    def patch(self, upload_id: str, offset: int, chunk: bytes, checksum: str = "") -> Any:
        """A checksummed PATCH (``checksum``: another Upload-Checksum than the chunk's)."""
        import httpx

        return httpx.patch(
            self.next() + f"/files/{upload_id}",
            headers=tus_headers(
                self.token,
                **OCTETS,
                **{
                    "Upload-Offset": str(offset),
                    "Upload-Checksum": checksum or chunk_checksum(chunk),
                },
            ),
            content=chunk,
            timeout=60,
        )

    def send(self, upload_id: str, data: bytes, chunk: int) -> None:
        """The rest of ``data`` from the offset HEAD gives, in checksummed chunks."""
        offset = self.head(upload_id)
        while offset < len(data):
            r = self.patch(upload_id, offset, data[offset : offset + chunk])
            assert r.status_code == 204, r.text
            offset = int(r.headers["Upload-Offset"])


def half_sent_patch(
    url: str, token: str, upload_id: str, offset: int, chunk: bytes
) -> socket.socket:
    """A checksummed PATCH whose body stops halfway (the connection stays open)."""
    s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    head = (
        f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: {offset}\r\nUpload-Checksum: {chunk_checksum(chunk)}\r\n"
        f"Content-Length: {len(chunk)}\r\n\r\n"
    )
    s.sendall(head.encode() + chunk[: len(chunk) // 2])
    return s


def kill_holding_the_upload(
    victim: Sink, other_url: str, token: str, upload_id: str, offset: int, chunk: bytes
) -> None:
    """SIGKILL ``victim`` halfway through a checksummed PATCH of ``chunk`` at ``offset``; while
    it holds the upload, a write through the instance at ``other_url`` waits, then answers 423."""
    import httpx

    cut = half_sent_patch(victim.url, token, upload_id, offset, chunk)
    busy = httpx.patch(
        other_url + f"/files/{upload_id}",
        headers=tus_headers(token, **OCTETS, **{"Upload-Offset": str(offset)}),
        content=b"x",
    )
    assert busy.status_code == 423, busy.text
    victim.kill()
    cut.close()
