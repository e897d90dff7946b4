"""The sink's own SQLite file (``sink.db``): devices (tokens stored only as hashes), uploads,
the files of each bundle as they arrive, the durable ingest queue, and heartbeats.

Every table is created by a numbered migration, applied in the transaction that records it
(``schema_migrations``), as the cart's journal does. An upload's offset in the data folder is
never stored here: it is the durable size of its data file (see :mod:`cloud_sink.tus`), so a
crash can never make the two disagree. An upload staged in a bucket has no such file: its
parts are recorded here after S3 holds them, so the row is what the upload holds (see
:mod:`cloud_sink.staging`).

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cloud_sink.sql import (
    Database,
    DatabaseUnavailable,
    Migration,
    Result,
    SinkError,
    Transaction,
    copy_tables,
    utc_now,
)

__all__ = [
    "DatabaseUnavailable",
    "Migration",
    "SinkDB",
    "SinkError",
    "apply_migrations",
    "utc_now",
]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

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
    # 7: which sink instance holds a claim (several share one database server): an instance
    #    that restarts lets go of its own claims at once, never of another's
    """
    ALTER TABLE ingest_queue ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
    """,
    # 8: uploads in progress kept in a bucket (``serve --staging s3``): the S3 multipart upload,
    #    the parts it holds ([number, bytes, etag]), the object that holds the bytes too few for
    #    a part yet, and the offset (parts + tail) they add up to, written in one statement
    """
    CREATE TABLE staged_uploads (
        upload_id TEXT PRIMARY KEY,
        s3_upload_id TEXT NOT NULL,
        parts TEXT NOT NULL DEFAULT '[]',
        tail_key TEXT NOT NULL DEFAULT '',
        tail_bytes INTEGER NOT NULL DEFAULT 0,
        staged_bytes INTEGER NOT NULL DEFAULT 0,
        finished INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 9: the model registry, for a sink on a database server (cloud_sink.registry.DatabaseStore):
    #    its files (TUF metadata, channels, models) by name, and who changed what
    """
    CREATE TABLE registry_files (
        path TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        length INTEGER NOT NULL,
        updated_utc TEXT NOT NULL
    );
    CREATE TABLE registry_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        t_utc TEXT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        what TEXT NOT NULL
    );
    """,
]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def apply_migrations(db: sqlite3.Connection | Database, migrations: list[Migration]) -> None:
    """Apply what ``db`` lacks of ``migrations``, each in the transaction that records it
    (a plain sqlite3 connection: an older tool's file, as the tests make one)."""
    if isinstance(db, Database):
        db.migrate(migrations)
        return
    path = db.execute("PRAGMA database_list").fetchone()[2]
    database = Database(path)
    try:
        database.migrate(migrations)
    finally:
        database.close()


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
class Staged:
    """An upload in progress in a bucket (see :mod:`cloud_sink.staging`)."""

    s3_upload_id: str
    parts: list[tuple[int, int, str]]  # (part number, bytes, etag), in order
    tail_key: str  # the object with the bytes that are too few for a part yet ('' for none)
    tail_bytes: int
    offset: int  # the parts' bytes and the tail's: what the upload holds
    finished: bool  # its parts were joined into one object


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


class SinkDB:
    """The sink's own database: a SQLite file (``target`` a path, the embedded default) or a
    PostgreSQL server (``target`` a ``postgresql://`` URL) that several sink instances share.
    Thread-safe (one connection, one lock)."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.db = Database(target)
        self.name = self.db.name
        try:
            self.db.migrate(MIGRATIONS)
        except DatabaseUnavailable:
            self.db.close()
            raise
        except SinkError as exc:
            self.db.close()
            raise SinkError(f"{self.name}: cannot migrate: {exc}") from exc

    @property
    def shared(self) -> bool:
        """Whether other sink instances may use this database at the same time."""
        return self.db.server

    @property
    def schema_version(self) -> int:
        return self.db.schema_version()

    def ping(self) -> None:
        """DatabaseUnavailable unless the database answers now."""
        self._exec("SELECT 1")

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Result:
        return self.db.execute(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.db.transaction() as tx:
            yield tx

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
        """Uploads a client terminated before finishing them, whose data is still on disk. A
        finished one's data belongs to ingest (which removes it once its bundle is stored) and
        to the keep time of what is no bundle; its DELETE only forgets it."""
        return [
            r[0]
            for r in self._exec(
                "SELECT id FROM uploads WHERE terminated = 1 AND completed_utc IS NULL "
                "AND removed_utc IS NULL"
            )
        ]

    # -- the ingest queue -----------------------------------------------------------------------
    def claim_ingest(self, lease_s: float = 300.0, instance: str = "") -> IngestItem | None:
        """The oldest pending item nobody holds, leased for ``lease_s`` to ``instance`` (a
        worker that dies lets it go when the lease ends). On a database server, workers of
        several instances claim at once without waiting on each other or taking the same
        item (``FOR UPDATE SKIP LOCKED``)."""
        now = time.time()
        with self.transaction() as db:
            r = db.execute(
                "SELECT seq, upload_id, device, attempts FROM ingest_queue WHERE state = "
                "'pending' AND claimed_until < ? ORDER BY seq LIMIT 1"
                + self.db.for_update_skip_locked(),
                (now,),
            ).fetchone()
            if r is None:
                return None
            db.execute(
                "UPDATE ingest_queue SET claimed_until = ?, claimed_by = ?, "
                "attempts = attempts + 1 WHERE seq = ?",
                (now + lease_s, instance, r[0]),
            )
            return IngestItem(r[0], r[1], r[2], r[3] + 1)

    def retry_ingest(self, seq: int, after_s: float, result: str) -> None:
        """Leave the item pending, not to be claimed again for ``after_s``."""
        self._exec(
            "UPDATE ingest_queue SET claimed_until = ?, result = ? WHERE seq = ?",
            (time.time() + after_s, result, seq),
        )

    def release_ingest(self, seq: int, result: str) -> None:
        """Let go of a claim whose work never ran (the database went away under it): free at
        once, and not counted as an attempt."""
        self._exec(
            "UPDATE ingest_queue SET claimed_until = 0, claimed_by = '', "
            "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, result = ? "
            "WHERE seq = ? AND state = 'pending'",
            (result, seq),
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

    def release_claims(self, instance: str = "") -> int:
        """At start: claims held by a previous run of this instance are void (it is gone).
        Alone on its SQLite file, every claim was its own; on a shared database server, only
        those it made under the same ``instance`` name (another instance's expire with their
        lease)."""
        sql = (
            "UPDATE ingest_queue SET claimed_until = 0 WHERE state = 'pending' "
            "AND claimed_until > 0"
        )
        if self.shared:
            return self._exec(sql + " AND claimed_by = ?", (instance,)).rowcount
        return self._exec(sql).rowcount

    def ingest_counts(self) -> dict[str, int]:
        rows = self._exec("SELECT state, COUNT(*) FROM ingest_queue GROUP BY state").fetchall()
        out = {"pending": 0, "done": 0, "failed": 0}
        out.update({r[0]: r[1] for r in rows})
        return out

    def bundle_lock(self, device: str, bundle_id: str) -> contextlib.AbstractContextManager[None]:
        """Held while a bundle is assembled and stored: on a shared database server, two
        instances whose workers finish the last files of one bundle at once take turns (the
        second then finds it stored). Alone on a SQLite file, the caller's own lock is enough.
        SinkError when another instance holds it too long (the ingest is retried later)."""
        return self.db.advisory_lock(f"capsight-bundle:{device}/{bundle_id}")

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
                "INSERT INTO bundle_files (device, bundle_id, filename, upload_id, path, "
                "encoding) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, bundle_id, filename) "
                "DO UPDATE SET upload_id = excluded.upload_id, path = excluded.path, "
                "encoding = excluded.encoding",
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

    # -- uploads in progress in a bucket ---------------------------------------------------------
    def stage(self, upload_id: str, s3_upload_id: str) -> None:
        self._exec(
            "INSERT INTO staged_uploads (upload_id, s3_upload_id) VALUES (?, ?)",
            (upload_id, s3_upload_id),
        )

    def staged(self, upload_id: str) -> Staged | None:
        r = self._exec("SELECT * FROM staged_uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        if r is None:
            return None
        parts = [(int(n), int(b), str(e)) for n, b, e in json.loads(r["parts"])]
        return Staged(
            r["s3_upload_id"],
            parts,
            r["tail_key"],
            int(r["tail_bytes"]),
            int(r["staged_bytes"]),
            bool(r["finished"]),
        )

    def restage(
        self,
        upload_id: str,
        offset: int,
        parts: list[tuple[int, int, str]],
        tail_key: str,
        tail_bytes: int,
    ) -> bool:
        """Record what the upload holds now, in one statement, only if it still holds
        ``offset`` bytes (False: another writer got there first)."""
        staged = sum(p[1] for p in parts) + tail_bytes
        return (
            self._exec(
                "UPDATE staged_uploads SET parts = ?, tail_key = ?, tail_bytes = ?, "
                "staged_bytes = ? WHERE upload_id = ? AND staged_bytes = ? AND finished = 0",
                (json.dumps(parts), tail_key, tail_bytes, staged, upload_id, offset),
            ).rowcount
            == 1
        )

    def staged_finished(self, upload_id: str) -> None:
        self._exec("UPDATE staged_uploads SET finished = 1 WHERE upload_id = ?", (upload_id,))

    def unstage(self, upload_id: str) -> None:
        self._exec("DELETE FROM staged_uploads WHERE upload_id = ?", (upload_id,))

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

    # -- moving an embedded sink to a database server ------------------------------------------
    TABLES: ClassVar[dict[str, str | None]] = {
        "devices": None,
        "uploads": None,
        "bundle_files": None,
        "heartbeats": None,
        "ingest_queue": "seq",
        "staged_uploads": None,
    }

    def copy_from(self, source: SinkDB) -> dict[str, int]:
        """Copy every row of ``source`` (an embedded sink's file, at this code's schema) into
        this database, which must hold none yet: one transaction, all or nothing."""
        if source.schema_version != self.schema_version:
            raise SinkError(
                f"{source.name} is at schema version {source.schema_version}, "
                f"{self.name} at {self.schema_version}: migrate both first"
            )
        return copy_tables(source.db, self.db, self.TABLES)

    def close(self) -> None:
        self.db.close()
