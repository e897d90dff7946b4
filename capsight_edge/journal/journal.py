"""The journal: one SQLite row per bundle, and only the journal decides what exists.

States and the transitions allowed between them::

    recording -> sealed -> uploading -> uploaded -> evicted
        |          |  ^        |  |
        |          |  +--------+  +--> quarantined   (repeated permanent upload errors)
        |          +----------------> evicted / quarantined (storage pressure / bad bundle)
        |                                quarantined -> sealed (retry) | evicted (purge)
        +--> discarded   (the clip never completed: removed at recovery)

Every transition is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), recorded in the
``transitions`` table beside the row it changes. The database runs in WAL mode with
``synchronous=FULL``: a committed transition survives a power cut, and a kill at any instruction
leaves the previous committed state. Schema changes go through numbered migrations, each applied
in the transaction that records it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsight_edge.durable import data_folder, fsync_dir
from capsight_edge.errors import JournalError

STATES = ("recording", "sealed", "uploading", "uploaded", "evicted", "quarantined", "discarded")
TRANSITIONS: dict[str, set[str]] = {
    "recording": {"sealed", "discarded"},
    "sealed": {"uploading", "evicted", "quarantined"},
    "uploading": {"uploading", "sealed", "uploaded", "quarantined"},
    "uploaded": {"evicted"},
    "evicted": set(),
    "quarantined": {"sealed", "evicted"},  # `capsight queue retry`, `queue purge --yes`
    "discarded": set(),
}

MIGRATIONS: list[str] = [
    # 1: bundles, transitions, key-value settings
    """
    CREATE TABLE bundles (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 1,
        rule TEXT NOT NULL DEFAULT '',
        bytes INTEGER NOT NULL DEFAULT 0,
        files TEXT NOT NULL DEFAULT '{}',
        created_ns INTEGER NOT NULL,
        created_utc TEXT NOT NULL,
        sealed_utc TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        upload_url TEXT NOT NULL DEFAULT '',
        upload_offset INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        updated_utc TEXT NOT NULL
    );
    CREATE INDEX bundles_state ON bundles(state, priority, created_ns);
    CREATE TABLE transitions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        bundle_id TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        utc TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: seconds of video per bundle, for the storage guard's measured bitrate
    """
    ALTER TABLE bundles ADD COLUMN duration_s REAL NOT NULL DEFAULT 0;
    """,
    # 3: one tus upload per file of a bundle: what is sent (encoding, bytes), where, how far
    """
    CREATE TABLE upload_files (
        bundle_id TEXT NOT NULL,
        name TEXT NOT NULL,
        encoding TEXT NOT NULL DEFAULT '',
        wire_bytes INTEGER NOT NULL,
        url TEXT NOT NULL DEFAULT '',
        offset INTEGER NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (bundle_id, name)
    );
    """,
]


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class UploadFileRow:
    """One file's tus upload: ``offset`` is what the server confirmed of ``wire_bytes``."""

    bundle_id: str
    name: str
    encoding: str
    wire_bytes: int
    url: str
    offset: int
    done: bool


@dataclass(frozen=True)
class BundleRow:
    id: str
    state: str
    priority: int
    rule: str
    bytes: int
    files: dict[str, Any]
    created_ns: int
    created_utc: str
    sealed_utc: str | None
    attempts: int
    last_error: str
    upload_url: str
    upload_offset: int
    reason: str
    updated_utc: str
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Journal:
    """Thread-safe (one connection, one lock). ``path`` is the SQLite file. ``readonly``: for
    the commands that only look (``status``, ``queue``): nothing is created or written, and a
    missing journal is a JournalError."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise JournalError(
                f"no journal at {self.path}: nothing has run on this data folder (check --data)"
            )
        try:
            if readonly:
                # With no -wal beside it, nobody is writing: read it as immutable, so that
                # SQLite does not create its -wal and -shm files for a reader.
                live = self.path.with_name(self.path.name + "-wal").exists()
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro" + ("" if live else "&immutable=1"),
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                data_folder(self.path.parent)
                created = not self.path.exists()
                self._db = sqlite3.connect(
                    str(self.path), timeout=30, isolation_level=None, check_same_thread=False
                )
            self._db.row_factory = sqlite3.Row
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc
        self._lock = threading.RLock()
        self._depth = 0
        if readonly:
            self._check_version()
        else:
            self._migrate()
            if created:
                # SQLite syncs the directory when it creates a WAL, never for the database
                # file itself: without this a power cut could take the whole journal
                fsync_dir(self.path.parent)

    def _check_version(self) -> None:
        try:
            version = self.schema_version
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: not a capsight journal ({exc})") from exc
        if version < len(MIGRATIONS):
            raise JournalError(
                f"{self.path}: the journal is from an older capsight (schema {version}, this "
                f"one reads {len(MIGRATIONS)}): run `capsight run` once to bring it up to date"
            )

    # -- transactions ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested uses join the outer one (``batch`` groups many)."""
        with self._lock:
            outer = self._depth == 0
            try:
                if outer:
                    self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                if outer:
                    self._db.execute("COMMIT")
            except BaseException as exc:
                if outer and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JournalError(f"{self.path}: {exc}") from exc
                raise

    batch = transaction

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY "
                "KEY, applied_utc TEXT NOT NULL)"
            )
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version in done:
                    continue
                for statement in (s for s in sql.split(";") if s.strip()):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now()))

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transitions ----------------------------------------------------------------------------
    def _move(
        self, db: sqlite3.Connection, bundle_id: str, to: str, detail: str = "", **fields: Any
    ) -> None:
        row = db.execute("SELECT state FROM bundles WHERE id = ?", (bundle_id,)).fetchone()
        if row is None:
            raise JournalError(f"bundle {bundle_id} is not in the journal")
        current = row[0]
        if to not in TRANSITIONS[current]:
            raise JournalError(f"bundle {bundle_id}: {current} -> {to} is not allowed")
        sets = ", ".join(f"{k} = ?" for k in fields)
        now = utc_now()
        db.execute(
            f"UPDATE bundles SET state = ?, updated_utc = ?{', ' if sets else ''}{sets} "
            "WHERE id = ?",
            (to, now, *fields.values(), bundle_id),
        )
        db.execute(
            "INSERT INTO transitions (bundle_id, from_state, to_state, utc, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            (bundle_id, current, to, now, detail),
        )

    def add_recording(
        self, bundle_id: str, *, priority: int, rule: str, created_ns: int | None = None
    ) -> None:
        now = utc_now()
        with self.transaction() as db:
            try:
                db.execute(
                    "INSERT INTO bundles (id, state, priority, rule, created_ns, "
                    "created_utc, updated_utc) VALUES (?, 'recording', ?, ?, ?, ?, ?)",
                    (bundle_id, priority, rule, created_ns or time.monotonic_ns(), now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"bundle {bundle_id} is already in the journal") from exc
            db.execute(
                "INSERT INTO transitions (bundle_id, from_state, to_state, utc) "
                "VALUES (?, NULL, 'recording', ?)",
                (bundle_id, now),
            )

    def mark_sealed(
        self,
        bundle_id: str,
        files: dict[str, Any],
        *,
        priority: int | None = None,
        rule: str | None = None,
        duration_s: float = 0.0,
        adopt: bool = False,
    ) -> None:
        """``adopt``: the bundle is sealed on disk but the journal never saw it (a crash
        between the rename and this commit): insert it as sealed."""
        size = sum(int(f["bytes"]) for f in files.values())
        with self.transaction() as db:
            if adopt and self.get(bundle_id) is None:
                self.add_recording(bundle_id, priority=priority or 1, rule=rule or "")
            extra: dict[str, Any] = {
                "files": json.dumps(files),
                "bytes": size,
                "sealed_utc": utc_now(),
                "duration_s": duration_s,
            }
            if priority is not None:
                extra["priority"] = priority
            if rule is not None:
                extra["rule"] = rule
            self._move(db, bundle_id, "sealed", "adopted at recovery" if adopt else "", **extra)

    def start_upload(self, bundle_id: str, upload_url: str = "") -> None:
        with self.transaction() as db:
            row = self.get(bundle_id)
            url = upload_url or (row.upload_url if row else "")
            self._move(
                db,
                bundle_id,
                "uploading",
                "",
                upload_url=url,
                attempts=(row.attempts if row else 0) + 1,
            )

    def set_offset(self, bundle_id: str, offset: int, upload_url: str | None = None) -> None:
        with self.transaction() as db:
            fields: dict[str, Any] = {"upload_offset": offset}
            if upload_url is not None:
                fields["upload_url"] = upload_url
            sets = ", ".join(f"{k} = ?" for k in fields)
            cur = db.execute(
                f"UPDATE bundles SET {sets}, updated_utc = ? WHERE id = ? AND state = 'uploading'",
                (*fields.values(), utc_now(), bundle_id),
            )
            if cur.rowcount != 1:
                raise JournalError(f"bundle {bundle_id} is not uploading")

    def plan_upload(self, bundle_id: str, files: list[tuple[str, str, int]]) -> None:
        """Record what will be sent for each file: ``(name, encoding, wire_bytes)``. A file's
        earlier plan (and its upload URL) is replaced only when what is sent changed."""
        with self.transaction() as db:
            for name, encoding, wire_bytes in files:
                db.execute(
                    "INSERT INTO upload_files (bundle_id, name, encoding, wire_bytes) VALUES "
                    "(?, ?, ?, ?) ON CONFLICT(bundle_id, name) DO UPDATE SET "
                    "encoding = excluded.encoding, wire_bytes = excluded.wire_bytes, url = '', "
                    "offset = 0, done = 0 WHERE encoding != excluded.encoding OR "
                    "wire_bytes != excluded.wire_bytes",
                    (bundle_id, name, encoding, wire_bytes),
                )

    def upload_plan(self, bundle_id: str) -> list[UploadFileRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM upload_files WHERE bundle_id = ? ORDER BY name", (bundle_id,)
            ).fetchall()
        return [UploadFileRow(**{**dict(r), "done": bool(r["done"])}) for r in rows]

    def file_progress(
        self, bundle_id: str, name: str, *, url: str, offset: int, done: bool = False
    ) -> None:
        """One file's confirmed offset; the bundle's ``upload_offset`` becomes the sum over its
        files (bytes the sink holds), in the same transaction."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE upload_files SET url = ?, offset = ?, done = ? WHERE bundle_id = ? "
                "AND name = ?",
                (url, offset, int(done), bundle_id, name),
            )
            if cur.rowcount != 1:
                raise JournalError(f"bundle {bundle_id}: no upload planned for {name}")
            total = db.execute(
                "SELECT SUM(offset) FROM upload_files WHERE bundle_id = ?", (bundle_id,)
            ).fetchone()[0]
            self.set_offset(bundle_id, int(total or 0), url)

    def abandoned_uploads(self) -> list[UploadFileRow]:
        """Unfinished uploads of bundles that will not be sent any more (evicted,
        quarantined): the uploader terminates them on the server."""
        with self._lock:
            rows = self._db.execute(
                "SELECT u.* FROM upload_files u JOIN bundles b ON b.id = u.bundle_id WHERE "
                "b.state NOT IN ('sealed', 'uploading') AND u.done = 0 AND u.url != ''"
            ).fetchall()
        return [UploadFileRow(**{**dict(r), "done": bool(r["done"])}) for r in rows]

    def forget_upload_plan(self, bundle_id: str, name: str | None = None) -> None:
        """Drop the bundle's upload rows; with ``name``, that file's row and the rows of files
        whose upload never started (a finished file's row stays: the sink holds it)."""
        with self.transaction() as db:
            if name is None:
                db.execute("DELETE FROM upload_files WHERE bundle_id = ?", (bundle_id,))
            else:
                db.execute(
                    "DELETE FROM upload_files WHERE bundle_id = ? AND (name = ? OR "
                    "(url = '' AND done = 0))",
                    (bundle_id, name),
                )

    def upload_failed(
        self, bundle_id: str, error: str, *, permanent: bool, quarantine_after: int = 3
    ) -> str:
        """Back to sealed (to retry later), or quarantined after repeated permanent errors.
        Returns the new state."""
        with self.transaction() as db:
            row = self.get(bundle_id)
            if row is None:
                raise JournalError(f"bundle {bundle_id} is not in the journal")
            permanent_count = int(self.kv_get(f"permanent:{bundle_id}") or 0) + int(permanent)
            self.kv_set(f"permanent:{bundle_id}", str(permanent_count))
            if permanent and permanent_count >= quarantine_after:
                self._move(
                    db,
                    bundle_id,
                    "quarantined",
                    error,
                    last_error=error,
                    reason=f"{permanent_count} permanent upload errors; last: {error}",
                )
                return "quarantined"
            self._move(db, bundle_id, "sealed", error, last_error=error)
            return "sealed"

    def mark_uploaded(self, bundle_id: str) -> None:
        with self.transaction() as db:
            self._move(db, bundle_id, "uploaded", "")

    def mark_evicted(self, bundle_id: str, reason: str) -> None:
        with self.transaction() as db:
            self._move(db, bundle_id, "evicted", reason, reason=reason)

    def quarantine(self, bundle_id: str, reason: str) -> None:
        with self.transaction() as db:
            self._move(db, bundle_id, "quarantined", reason, reason=reason)

    def discard(self, bundle_id: str, reason: str) -> None:
        with self.transaction() as db:
            self._move(db, bundle_id, "discarded", reason, reason=reason)

    def retry(self, bundle_id: str) -> None:
        """A quarantined bundle goes back to the upload queue (its files must still exist)."""
        with self.transaction() as db:
            self._move(db, bundle_id, "sealed", "retry requested", reason="", last_error="")
            self.kv_set(f"permanent:{bundle_id}", "0")

    # -- queries --------------------------------------------------------------------------------
    def _row(self, r: sqlite3.Row) -> BundleRow:
        d = dict(r)
        d["files"] = json.loads(d["files"] or "{}")
        return BundleRow(**d)

    def get(self, bundle_id: str) -> BundleRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM bundles WHERE id = ?", (bundle_id,)).fetchone()
        return self._row(r) if r else None

    def bundles(self, states: tuple[str, ...] | None = None) -> list[BundleRow]:
        q = "SELECT * FROM bundles"
        args: tuple[Any, ...] = ()
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(states)
        q += " ORDER BY priority DESC, created_ns ASC"
        with self._lock:
            return [self._row(r) for r in self._db.execute(q, args)]

    def upload_queue(self) -> list[BundleRow]:
        """What waits to go: higher priority first, oldest first within a priority."""
        return self.bundles(("uploading", "sealed"))

    def counts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, priority, COUNT(*), SUM(bytes), MIN(created_utc) FROM bundles "
                "GROUP BY state, priority ORDER BY state, priority DESC"
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for state, prio, n, size, oldest in rows:
            s = out.setdefault(
                state, {"count": 0, "bytes": 0, "oldest_utc": oldest, "by_priority": {}}
            )
            s["count"] += n
            s["bytes"] += size or 0
            s["oldest_utc"] = min(s["oldest_utc"], oldest) if s["oldest_utc"] else oldest
            s["by_priority"][str(prio)] = n
        return out

    def last_error(self) -> tuple[str, str] | None:
        with self._lock:
            r = self._db.execute(
                "SELECT id, last_error FROM bundles WHERE last_error != '' "
                "ORDER BY updated_utc DESC LIMIT 1"
            ).fetchone()
        return (r[0], r[1]) if r else None

    def kv_get(self, key: str) -> str | None:
        with self._lock:
            r = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return r[0] if r else None

    def kv_set(self, key: str, value: str | None) -> None:
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO kv VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value",
                    (key, value),
                )

    def transitions(self, bundle_id: str) -> list[tuple[str | None, str, str]]:
        with self._lock:
            return [
                (r[0], r[1], r[2])
                for r in self._db.execute(
                    "SELECT from_state, to_state, detail FROM transitions WHERE bundle_id = ? "
                    "ORDER BY seq",
                    (bundle_id,),
                )
            ]
