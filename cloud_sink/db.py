"""The sink's own SQLite file: devices (tokens stored only as hashes) and uploads.

An upload's offset is never stored here: it is the durable size of its data file (see
:mod:`cloud_sink.tus`), so a crash can never make the two disagree.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.errors import CapsightError

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_utc TEXT NOT NULL,
    revoked_utc TEXT
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    length INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_utc TEXT NOT NULL,
    expires_ts REAL NOT NULL,
    completed_utc TEXT,
    terminated INTEGER NOT NULL DEFAULT 0
);
"""
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SinkError(CapsightError):
    """A sink operation failed (bad device name, unknown device, database error)."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Upload:
    id: str
    device: str
    length: int | None
    metadata: dict[str, str]
    created_utc: str
    expires_ts: float
    completed_utc: str | None
    terminated: bool


class SinkDB:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=30, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: {exc}") from exc

    # -- devices --------------------------------------------------------------------------------
    def add_device(self, name: str, *, admin: bool = False) -> str:
        """Create a device and return its token; only the token's hash is kept."""
        import re

        if not re.match(NAME, name):
            raise SinkError(f"device name {name!r} must match {NAME}")
        token = secrets.token_urlsafe(32)
        try:
            self._exec(
                "INSERT INTO devices VALUES (?, ?, ?, ?, NULL)",
                (name, token_hash(token), int(admin), utc_now()),
            )
        except SinkError as exc:
            raise SinkError(f"device {name!r} exists already") from exc
        return token

    def devices(self) -> list[dict[str, Any]]:
        return [
            dict(r) | {"token_sha256": None}
            for r in self._exec("SELECT * FROM devices ORDER BY name")
        ]

    def revoke(self, name: str) -> None:
        cur = self._exec(
            "UPDATE devices SET revoked_utc = ? WHERE name = ? AND revoked_utc IS NULL",
            (utc_now(), name),
        )
        if cur.rowcount != 1:
            raise SinkError(f"no active device named {name!r}")

    def authenticate(self, token: str) -> tuple[str, bool] | None:
        r = self._exec(
            "SELECT name, admin FROM devices WHERE token_sha256 = ? AND revoked_utc IS NULL",
            (token_hash(token),),
        ).fetchone()
        return (r[0], bool(r[1])) if r else None

    # -- uploads --------------------------------------------------------------------------------
    def create_upload(
        self,
        upload_id: str,
        device: str,
        length: int | None,
        metadata: dict[str, str],
        expires_ts: float,
    ) -> None:
        self._exec(
            "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
            (upload_id, device, length, json.dumps(metadata), utc_now(), expires_ts),
        )

    def get_upload(self, upload_id: str) -> Upload | None:
        r = self._exec("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if r is None:
            return None
        return Upload(
            r["id"],
            r["device"],
            r["length"],
            json.loads(r["metadata"]),
            r["created_utc"],
            r["expires_ts"],
            r["completed_utc"],
            bool(r["terminated"]),
        )

    def set_length(self, upload_id: str, length: int) -> None:
        self._exec(
            "UPDATE uploads SET length = ? WHERE id = ? AND length IS NULL", (length, upload_id)
        )

    def complete(self, upload_id: str) -> bool:
        """Mark complete; True only the first time (ingest runs once per upload)."""
        cur = self._exec(
            "UPDATE uploads SET completed_utc = ? WHERE id = ? AND completed_utc IS NULL",
            (utc_now(), upload_id),
        )
        return cur.rowcount == 1

    def terminate(self, upload_id: str) -> None:
        self._exec("UPDATE uploads SET terminated = 1 WHERE id = ?", (upload_id,))

    def expired(self, now: float) -> list[str]:
        return [
            r[0]
            for r in self._exec(
                "SELECT id FROM uploads WHERE completed_utc IS NULL AND "
                "terminated = 0 AND expires_ts < ?",
                (now,),
            )
        ]

    def close(self) -> None:
        self._db.close()
