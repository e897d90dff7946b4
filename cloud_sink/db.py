"""The sink's own SQLite file (``sink.db``): devices (tokens stored only as hashes), uploads,
the files of each bundle as they arrive, the durable ingest queue, and heartbeats.

Every table is created by a numbered migration, applied in the transaction that records it
(``schema_migrations``), as the cart's journal does. An upload's offset is never stored here:
it is the durable size of its data file (see :mod:`cloud_sink.tus`), so a crash can never make
the two disagree.

The ingest queue makes ingest independent of the request that completed an upload: completing
an upload and queueing its ingest are one transaction, a background worker claims items with
a lease, and an item is marked done in the transaction after its work. A sink killed in between
finds the item pending on restart and ingests it then; ingest is idempotent per bundle, so a
bundle is indexed exactly once.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.durable import data_folder, fsync_dir
from capsight_edge.errors import CapsightError

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: A migration: SQL statements separated by ``;``, or a tuple of whole statements (those with
#: ``;`` inside, such as triggers), or a function of the connection.
Migration = str | tuple[str, ...] | Callable[[sqlite3.Connection], None]

#: The sink's schema, one step per number; never edit a step that has shipped: add one.
MIGRATIONS: list[Migration] = [
    # 1: devices and uploads (IF NOT EXISTS: sinks made before migrations had these already)
    """
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
    """,
    # 2: the files of each bundle as they arrive, and the fleet's heartbeats
    """
    CREATE TABLE IF NOT EXISTS bundle_files (
        device TEXT NOT NULL,
        bundle_id TEXT NOT NULL,
        filename TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (device, bundle_id, filename)
    );
    CREATE TABLE IF NOT EXISTS heartbeats (
        device TEXT PRIMARY KEY,
        received_utc TEXT NOT NULL,
        body TEXT NOT NULL
    );
    """,
    # 3: the durable ingest queue: one item per completed upload
    """
    CREATE TABLE ingest_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        upload_id TEXT NOT NULL UNIQUE,
        device TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_until REAL NOT NULL DEFAULT 0,
        enqueued_utc TEXT NOT NULL,
        done_utc TEXT,
        result TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX ingest_pending ON ingest_queue(state, seq);
    """,
    # 4: quotas need times as numbers; data files are removed (expired, or their bundle stored);
    #    a bundle's files remember how they were encoded on the wire
    """
    ALTER TABLE uploads ADD COLUMN created_ts REAL NOT NULL DEFAULT 0;
    ALTER TABLE uploads ADD COLUMN completed_ts REAL;
    ALTER TABLE uploads ADD COLUMN removed_utc TEXT;
    CREATE INDEX uploads_device ON uploads(device, completed_utc, terminated);
    ALTER TABLE bundle_files ADD COLUMN encoding TEXT NOT NULL DEFAULT '';
    """,
    # 5: the sha256 the sink verified for a whole upload sent in one checksummed request (ingest
    #    need not read the file again to know it)
    """
    ALTER TABLE uploads ADD COLUMN sha256 TEXT;
    """,
    # 6: when an ingest finished, as a number (done_utc has whole seconds): how long after its
    #    upload a bundle was verified and indexed
    """
    ALTER TABLE ingest_queue ADD COLUMN done_ts REAL;
    """,
]


class SinkError(CapsightError):
    """A sink operation failed (bad device name, unknown device, database error)."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def apply_migrations(db: sqlite3.Connection, migrations: list[Migration]) -> None:
    """Apply what ``db`` lacks of ``migrations``, each in the transaction that records it."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "applied_utc TEXT NOT NULL)"
    )
    done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
    for version, step in enumerate(migrations, start=1):
        if version in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if callable(step):
                step(db)
            else:
                statements = step if isinstance(step, tuple) else step.split(";")
                for statement in (s for s in statements if s.strip()):
                    db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


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
    removed_utc: str | None = None  # its data file is gone (expired, or its bundle is stored)
    sha256: str | None = None  # hex; verified by the sink over the whole upload in one request


@dataclass(frozen=True)
class BundleFile:
    upload_id: str
    path: Path
    encoding: str


@dataclass(frozen=True)
class DeviceUsage:
    """What a device has in progress now, for its quotas."""

    uploads: int
    bytes: int
    created_last_minute: int
    oldest_create_ts: float


@dataclass(frozen=True)
class IngestItem:
    seq: int
    upload_id: str
    device: str
    attempts: int


@dataclass(frozen=True)
class _Result:
    """A statement's rows, read whole, and how many rows it changed."""

    rows: list[sqlite3.Row]
    rowcount: int

    def fetchone(self) -> Any:  # a Row, or None: as sqlite3's own cursor types it
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[sqlite3.Row]:
        return self.rows

    def __iter__(self) -> Iterator[sqlite3.Row]:
        return iter(self.rows)


class SinkDB:
    """Thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data_folder(self.path.parent)
        created = not self.path.exists()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=30, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        os.chmod(self.path, 0o600)  # tokens' hashes, uploads: the sink's own (SQLite's -wal and
        # -shm files take the database file's mode)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        with self._lock:
            try:
                apply_migrations(self._db, MIGRATIONS)
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: cannot migrate: {exc}") from exc
        if created:  # SQLite syncs the folder for its -wal, never for the database file
            fsync_dir(self.path.parent)

    @property
    def schema_version(self) -> int:
        row = self._exec("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> _Result:
        """Run one statement and read all its rows under the lock: a cursor read later, while
        another thread writes through the same connection, can skip or repeat rows (SQLite
        leaves that undefined; it once made the ingest queue look empty while it was not)."""
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                return _Result(cur.fetchall() if cur.description else [], cur.rowcount)
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise SinkError(f"{self.path}: {exc}") from exc

    # -- devices --------------------------------------------------------------------------------
    def add_device(self, name: str, *, admin: bool = False) -> str:
        """Create a device and return its token; only the token's hash is kept."""
        if not re.match(NAME, name):
            raise SinkError(f"device name {name!r} must match {NAME}")
        token = secrets.token_urlsafe(32)
        with self.transaction() as db:
            row = db.execute("SELECT revoked_utc FROM devices WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise SinkError(f"device {name!r} exists already (revoke it first)")
            # A revoked name may come back: with a new token (the old one stays refused).
            db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?, NULL) ON CONFLICT(name) DO UPDATE SET "
                "token_sha256 = excluded.token_sha256, admin = excluded.admin, "
                "created_utc = excluded.created_utc, revoked_utc = NULL",
                (name, token_hash(token), int(admin), utc_now()),
            )
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

    def is_active_admin(self, name: str) -> bool:
        r = self._exec(
            "SELECT admin FROM devices WHERE name = ? AND revoked_utc IS NULL", (name,)
        ).fetchone()
        return bool(r and r[0])

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
            "INSERT INTO uploads (id, device, length, metadata, created_utc, expires_ts, "
            "completed_utc, terminated, created_ts) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, ?)",
            (upload_id, device, length, json.dumps(metadata), utc_now(), expires_ts, time.time()),
        )

    def forget_upload(self, upload_id: str) -> None:
        """Drop an upload that was never accepted (its creation failed)."""
        self._exec("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def usage(self, device: str, now: float) -> DeviceUsage:
        r = self._exec(
            "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM uploads WHERE device = ? AND "
            "completed_utc IS NULL AND terminated = 0 AND removed_utc IS NULL AND expires_ts >= ?",
            (device, now),
        ).fetchone()
        c = self._exec(
            "SELECT COUNT(*), MIN(created_ts) FROM uploads WHERE device = ? AND created_ts >= ?",
            (device, now - 60.0),
        ).fetchone()
        return DeviceUsage(int(r[0]), int(r[1]), int(c[0]), float(c[1] or now))

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
            r["removed_utc"],
            r["sha256"],
        )

    def set_length(self, upload_id: str, length: int) -> None:
        self._exec(
            "UPDATE uploads SET length = ? WHERE id = ? AND length IS NULL", (length, upload_id)
        )

    def complete(self, upload_id: str, sha256: str | None = None) -> bool:
        """Mark complete and queue its ingest, in one transaction; True only the first time
        (an upload is ingested once). ``sha256``: the whole upload's, when the sink verified
        it in one request."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE uploads SET completed_utc = ?, completed_ts = ?, sha256 = ? WHERE id = ? "
                "AND completed_utc IS NULL AND terminated = 0",
                (utc_now(), time.time(), sha256, upload_id),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT INTO ingest_queue (upload_id, device, enqueued_utc) "
                "SELECT id, device, ? FROM uploads WHERE id = ?",
                (utc_now(), upload_id),
            )
            return True

    def terminate(self, upload_id: str) -> None:
        self._exec("UPDATE uploads SET terminated = 1 WHERE id = ?", (upload_id,))

    def expired(self, now: float) -> list[str]:
        """Incomplete uploads past their expiry whose data is still on disk."""
        return [
            r[0]
            for r in self._exec(
                "SELECT id FROM uploads WHERE completed_utc IS NULL AND removed_utc IS NULL "
                "AND expires_ts < ?",
                (now,),
            )
        ]

    def completed_before(self, ts: float) -> list[Upload]:
        """Completed uploads whose data is still on disk, completed before ``ts``."""
        ids = [
            r[0]
            for r in self._exec(
                "SELECT id FROM uploads WHERE completed_utc IS NOT NULL AND removed_utc IS NULL "
                "AND completed_ts < ?",
                (ts,),
            )
        ]
        return [u for u in (self.get_upload(i) for i in ids) if u is not None]

    def completed_ts(self, upload_id: str) -> float | None:
        r = self._exec("SELECT completed_ts FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return float(r[0]) if r and r[0] is not None else None

    def mark_removed(self, upload_id: str) -> None:
        self._exec(
            "UPDATE uploads SET removed_utc = ? WHERE id = ? AND removed_utc IS NULL",
            (utc_now(), upload_id),
        )

    def terminated_with_data(self) -> list[str]:
        return [
            r[0]
            for r in self._exec(
                "SELECT id FROM uploads WHERE terminated = 1 AND removed_utc IS NULL"
            )
        ]

    # -- the ingest queue -----------------------------------------------------------------------
    def claim_ingest(self, lease_s: float = 300.0) -> IngestItem | None:
        """The oldest pending item nobody holds, leased for ``lease_s`` (a worker that dies
        lets it go when the lease ends)."""
        now = time.time()
        with self.transaction() as db:
            r = db.execute(
                "SELECT seq, upload_id, device, attempts FROM ingest_queue WHERE state = "
                "'pending' AND claimed_until < ? ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if r is None:
                return None
            db.execute(
                "UPDATE ingest_queue SET claimed_until = ?, attempts = attempts + 1 WHERE seq = ?",
                (now + lease_s, r[0]),
            )
            return IngestItem(r[0], r[1], r[2], r[3] + 1)

    def retry_ingest(self, seq: int, after_s: float, result: str) -> None:
        """Leave the item pending, not to be claimed again for ``after_s``."""
        self._exec(
            "UPDATE ingest_queue SET claimed_until = ?, result = ? WHERE seq = ?",
            (time.time() + after_s, result, seq),
        )

    def finish_ingest(self, seq: int, result: str, *, failed: bool = False) -> None:
        self._exec(
            "UPDATE ingest_queue SET state = ?, done_utc = ?, done_ts = ?, result = ?, "
            "claimed_until = 0 WHERE seq = ?",
            ("failed" if failed else "done", utc_now(), time.time(), result, seq),
        )

    def last_ingest_ts(self) -> float | None:
        """When the most recent ingest finished (seconds since the epoch), None if none has."""
        row = self._exec("SELECT max(done_ts) FROM ingest_queue").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def release_claims(self) -> int:
        """At start: claims held by a previous run of this sink are void (it is gone)."""
        cur = self._exec(
            "UPDATE ingest_queue SET claimed_until = 0 WHERE state = 'pending' AND "
            "claimed_until > 0"
        )
        return cur.rowcount

    def ingest_counts(self) -> dict[str, int]:
        rows = self._exec("SELECT state, COUNT(*) FROM ingest_queue GROUP BY state").fetchall()
        out = {"pending": 0, "done": 0, "failed": 0}
        out.update({r[0]: r[1] for r in rows})
        return out

    # -- the files of a bundle ------------------------------------------------------------------
    def put_bundle_file(
        self, device: str, bundle_id: str, filename: str, upload_id: str, path: str, encoding: str
    ) -> str | None:
        """Record an arrived file of a bundle (a newer upload of the same file replaces the
        older: a cart sends a file again only when something was wrong with it). Returns the
        upload it replaced, if any."""
        with self.transaction() as db:
            old = db.execute(
                "SELECT upload_id FROM bundle_files WHERE device = ? AND bundle_id = ? AND "
                "filename = ?",
                (device, bundle_id, filename),
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO bundle_files (device, bundle_id, filename, upload_id, "
                "path, encoding) VALUES (?, ?, ?, ?, ?, ?)",
                (device, bundle_id, filename, upload_id, path, encoding),
            )
        return old[0] if old and old[0] != upload_id else None

    def bundle_files(self, device: str, bundle_id: str) -> dict[str, BundleFile]:
        rows = self._exec(
            "SELECT filename, upload_id, path, encoding FROM bundle_files WHERE device = ? "
            "AND bundle_id = ?",
            (device, bundle_id),
        ).fetchall()
        return {r[0]: BundleFile(r[1], Path(r[2]), r[3]) for r in rows}

    def bundle_of(self, upload_id: str) -> tuple[str, str] | None:
        r = self._exec(
            "SELECT device, bundle_id FROM bundle_files WHERE upload_id = ?", (upload_id,)
        ).fetchone()
        return (r[0], r[1]) if r else None

    # -- heartbeats -----------------------------------------------------------------------------
    def record_heartbeat(self, device: str, body: dict[str, Any]) -> None:
        self._exec(
            "INSERT INTO heartbeats VALUES (?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
            "received_utc = excluded.received_utc, body = excluded.body",
            (device, utc_now(), json.dumps(body)),
        )

    def gauges(self) -> dict[str, float]:
        """What ``/metrics`` samples at each scrape: uploads in progress, the ingest queue's
        depth and the age of its oldest pending item, devices heard from (heartbeats) and
        devices registered (not revoked)."""
        in_progress = self._exec(
            "SELECT COUNT(*) FROM uploads WHERE completed_utc IS NULL AND terminated = 0 "
            "AND removed_utc IS NULL"
        ).fetchone()[0]
        depth, oldest = self._exec(
            "SELECT COUNT(*), MIN(enqueued_utc) FROM ingest_queue WHERE state = 'pending'"
        ).fetchone()
        age = 0.0
        if oldest:
            age = max(
                0.0, time.time() - calendar.timegm(time.strptime(oldest[:19], "%Y-%m-%dT%H:%M:%S"))
            )
        seen = self._exec("SELECT COUNT(*) FROM heartbeats").fetchone()[0]
        active = self._exec("SELECT COUNT(*) FROM devices WHERE revoked_utc IS NULL").fetchone()[0]
        return {
            "uploads_in_progress": in_progress,
            "ingest_queue_depth": depth,
            "ingest_oldest_age_s": age,
            "devices_seen": seen,
            "devices_active": active,
        }

    def heartbeats(self) -> list[dict[str, Any]]:
        rows = self._exec("SELECT device, received_utc, body FROM heartbeats ORDER BY device")
        return [{"device": r[0], "last_heartbeat_utc": r[1], **json.loads(r[2])} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
