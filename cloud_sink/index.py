"""The bundle index (``index.db``): SQLite through sqlite-utils, with full-text search.

The schema is plain SQL types so it moves to PostgreSQL unchanged when a fleet outgrows SQLite.
Its tables are created by numbered migrations (:data:`MIGRATIONS`), as the sink's own database's
are.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import Manifest
from cloud_sink.sql import Database, Migration

COLUMNS = {
    "id": str,
    "device_id": str,
    "store_id": str,
    "rule": str,
    "priority": int,
    "start_utc": str,
    "end_utc": str,
    "duration_s": float,
    "frames": int,
    "codec": str,
    "encoder": str,
    "bytes": int,
    "status": str,
    "reason": str,
    "barcodes": str,
    "label_status": str,
    "sensors": str,
    "keyframes": int,
    "empty_background": int,
    "indexed_utc": str,
}


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}
_FTS = ("rule", "device_id", "store_id", "barcodes", "reason")
_FTS_COLS = ", ".join(f'"{c}"' for c in _FTS)
_NEW = ", ".join(f'new."{c}"' for c in _FTS)
_OLD = ", ".join(f'old."{c}"' for c in _FTS)

#: The index's schema, one step per number (IF NOT EXISTS: indexes made before migrations have
#: these already). Never edit a step that has shipped: add one.
MIGRATIONS: list[Migration] = [
    # 1: bundles, their full-text index and its triggers
    (
        "CREATE TABLE IF NOT EXISTS bundles ("
        + ", ".join(f'"{k}" {_SQL_TYPES[t]}' for k, t in COLUMNS.items())
        + ', PRIMARY KEY ("device_id", "id"))',
        "CREATE VIRTUAL TABLE IF NOT EXISTS bundles_fts USING FTS5 "
        f'({_FTS_COLS}, content="bundles")',
        f"CREATE TRIGGER IF NOT EXISTS bundles_ai AFTER INSERT ON bundles BEGIN "
        f"INSERT INTO bundles_fts (rowid, {_FTS_COLS}) VALUES (new.rowid, {_NEW}); END",
        f"CREATE TRIGGER IF NOT EXISTS bundles_ad AFTER DELETE ON bundles BEGIN "
        f"INSERT INTO bundles_fts (bundles_fts, rowid, {_FTS_COLS}) VALUES "
        f"('delete', old.rowid, {_OLD}); END",
        f"CREATE TRIGGER IF NOT EXISTS bundles_au AFTER UPDATE ON bundles BEGIN "
        f"INSERT INTO bundles_fts (bundles_fts, rowid, {_FTS_COLS}) VALUES "
        f"('delete', old.rowid, {_OLD}); "
        f"INSERT INTO bundles_fts (rowid, {_FTS_COLS}) VALUES (new.rowid, {_NEW}); END",
        'CREATE INDEX IF NOT EXISTS "idx_bundles_store_id_start_utc" ON bundles '
        "(store_id, start_utc)",
        'CREATE INDEX IF NOT EXISTS "idx_bundles_rule" ON bundles (rule)',
    ),
    # 2: labels: one item per frame worth labelling, its pre-labels, its review state and
    #    version (optimistic locking), and every change made to it (who, when, seconds)
    """
    CREATE TABLE label_items (
        item_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        bundle_id TEXT NOT NULL,
        store_id TEXT NOT NULL,
        t_ns INTEGER NOT NULL,
        t_utc TEXT NOT NULL,
        frame_key TEXT NOT NULL,
        frame_sha256 TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        sku TEXT,
        box TEXT,
        source TEXT NOT NULL DEFAULT '',
        model_version TEXT NOT NULL DEFAULT '',
        score REAL NOT NULL DEFAULT 0,
        candidates TEXT NOT NULL DEFAULT '[]',
        moment TEXT NOT NULL DEFAULT '{}',
        reviewer TEXT NOT NULL DEFAULT '',
        review_s REAL NOT NULL DEFAULT 0,
        flagged TEXT NOT NULL DEFAULT '',
        updated_utc TEXT NOT NULL
    );
    CREATE INDEX label_items_state ON label_items(state, store_id);
    CREATE INDEX label_items_bundle ON label_items(device_id, bundle_id);
    CREATE TABLE label_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id TEXT NOT NULL,
        at_utc TEXT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        seconds REAL NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX label_events_item ON label_events(item_id, seq);
    """,
]


class QueryError(ValueError):
    """A query the index cannot run (a malformed full-text query); the message is ours, not
    SQLite's."""


class Index:
    def __init__(self, path: str | Path) -> None:
        import sqlite_utils

        plain = Database(path)  # made 0600, its folder synced when new
        try:
            plain.migrate(MIGRATIONS)
        finally:
            plain.close()
        # One connection shared by the server's threads, serialised by the lock.
        self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
        self._lock = threading.RLock()

    def get(self, bundle_id: str, device: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM bundles WHERE id = ? AND device_id = ?", [bundle_id, device]
                )
            )
        return rows[0] if rows else None

    def set_label_status(self, bundle_id: str, device: str, status: str) -> None:
        with self._lock:
            self.db.execute(
                "UPDATE bundles SET label_status = ? WHERE id = ? AND device_id = ?",
                [status, bundle_id, device],
            )
            self.db.conn.commit()

    def _upsert(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.db.table("bundles").upsert(row, pk=("device_id", "id"))

    def add(
        self,
        m: Manifest,
        device: str,
        status: str,
        reason: str,
        clip: dict[str, Any],
        sensors: dict[str, Any],
    ) -> None:
        self._upsert(
            {
                "id": m.bundle_id,
                "device_id": device,
                "store_id": m.store_id,
                "rule": m.trigger.rule,
                "priority": m.trigger.priority,
                "start_utc": m.start_utc,
                "end_utc": m.end_utc,
                "duration_s": clip.get("duration_s", 0.0),
                "frames": clip.get("frames", 0),
                "codec": clip.get("codec", ""),
                "encoder": m.video.encoder if m.video else "",
                "bytes": sum(f.bytes for f in m.files.values()),
                "status": status,
                "reason": reason,
                "barcodes": " ".join(sensors.get("barcodes", [])),
                "label_status": "unlabelled",
                "keyframes": clip.get("keyframes", 0),
                "empty_background": int(clip.get("background", {}).get("all_empty", False)),
                "sensors": json.dumps(sensors),
                "indexed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )

    def add_corrupt(self, bundle_id: str, device: str, m: Manifest | None, reason: str) -> None:
        self._upsert(
            {
                "id": bundle_id,
                "device_id": device,
                "store_id": m.store_id if m else "",
                "rule": m.trigger.rule if m else "",
                "priority": m.trigger.priority if m else 0,
                "start_utc": m.start_utc if m else "",
                "end_utc": m.end_utc if m else "",
                "duration_s": 0.0,
                "frames": 0,
                "codec": "",
                "encoder": "",
                "bytes": 0,
                "status": "corrupt",
                "reason": reason,
                "barcodes": "",
                "label_status": "unlabelled",
                "sensors": "{}",
                "indexed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )

    def query(
        self,
        *,
        store: str | None = None,
        device: str | None = None,
        rule: str | None = None,
        since: str | None = None,
        until: str | None = None,
        barcode: str | None = None,
        label_status: str | None = None,
        status: str | None = None,
        empty_background: bool | None = None,
        q: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for col, value in (
            ("store_id", store),
            ("device_id", device),
            ("rule", rule),
            ("label_status", label_status),
            ("status", status),
        ):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if empty_background is not None:
            where.append("empty_background = ?")
            args.append(int(empty_background))
        if since:
            where.append("start_utc >= ?")
            args.append(since)
        if until:
            where.append("start_utc <= ?")
            args.append(until)
        if barcode:
            escaped = barcode.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(' ' || barcodes || ' ') LIKE ? ESCAPE '\\'")
            args.append(f"% {escaped} %")
        if q:
            where.append("rowid IN (SELECT rowid FROM bundles_fts WHERE bundles_fts MATCH ?)")
            args.append(q)
        sql = "SELECT * FROM bundles" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY start_utc DESC LIMIT ?"
        args.append(max(1, min(limit, 1000)))
        with self._lock:
            try:
                rows = list(self.db.query(sql, args))
            except sqlite3.OperationalError:
                if q:  # the only text of the caller's that SQLite parses
                    raise QueryError("not a valid full-text query") from None
                raise
        for r in rows:
            r["sensors"] = json.loads(r["sensors"] or "{}")
        return rows
