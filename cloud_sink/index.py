"""The bundle index: ``index.db`` (SQLite, the embedded default) or the sink's PostgreSQL
database (``serve --db``), through the same seam as the sink's own tables
(:mod:`cloud_sink.sql`), with full-text search (SQLite's FTS5; PostgreSQL's own text search).

Its tables are created by numbered migrations (:data:`MIGRATIONS`), as the sink's own database's
are; on PostgreSQL they are recorded in ``index_schema_migrations`` (the sink's tables share the
database).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

from capsight_edge.bundle.manifest import Manifest
from cloud_sink.sql import Database, DatabaseUnavailable, Migration, SinkError, copy_tables

#: The bundles table as migration 1 made it (never edited: later columns are later steps).
_COLUMNS_1 = {
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
COLUMNS = {
    **_COLUMNS_1,
    #: every rule that fired in the bundle, space-separated: the one that opened it first
    "rules": str,
}


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}
_FTS = ("rule", "device_id", "store_id", "barcodes", "reason")
_FTS_COLS = ", ".join(f'"{c}"' for c in _FTS)
_NEW = ", ".join(f'new."{c}"' for c in _FTS)
_OLD = ", ".join(f'old."{c}"' for c in _FTS)

_BUNDLES_TABLE = (
    "CREATE TABLE IF NOT EXISTS bundles ("
    + ", ".join(f'"{k}" {_SQL_TYPES[t]}' for k, t in _COLUMNS_1.items())
    + ', PRIMARY KEY ("device_id", "id"))'
)
_BUNDLES_INDEXES = (
    'CREATE INDEX IF NOT EXISTS "idx_bundles_store_id_start_utc" ON bundles (store_id, start_utc)',
    'CREATE INDEX IF NOT EXISTS "idx_bundles_rule" ON bundles (rule)',
)
#: SQLite's full-text search: an FTS5 table over the searched columns, kept by triggers.
_SQLITE_FTS = (
    f'CREATE VIRTUAL TABLE IF NOT EXISTS bundles_fts USING FTS5 ({_FTS_COLS}, content="bundles")',
    f"CREATE TRIGGER IF NOT EXISTS bundles_ai AFTER INSERT ON bundles BEGIN "
    f"INSERT INTO bundles_fts (rowid, {_FTS_COLS}) VALUES (new.rowid, {_NEW}); END",
    f"CREATE TRIGGER IF NOT EXISTS bundles_ad AFTER DELETE ON bundles BEGIN "
    f"INSERT INTO bundles_fts (bundles_fts, rowid, {_FTS_COLS}) VALUES "
    f"('delete', old.rowid, {_OLD}); END",
    f"CREATE TRIGGER IF NOT EXISTS bundles_au AFTER UPDATE ON bundles BEGIN "
    f"INSERT INTO bundles_fts (bundles_fts, rowid, {_FTS_COLS}) VALUES "
    f"('delete', old.rowid, {_OLD}); "
    f"INSERT INTO bundles_fts (rowid, {_FTS_COLS}) VALUES (new.rowid, {_NEW}); END",
)
#: PostgreSQL's: a stored text-search vector over the same columns and its GIN index (the
#: ``simple`` configuration: names and codes, not English words).
_PG_FTS = (
    "ALTER TABLE bundles ADD COLUMN fts tsvector GENERATED ALWAYS AS (to_tsvector('simple', "
    + " || ' ' || ".join(f"coalesce(\"{c}\", '')" for c in _FTS)
    + ")) STORED",
    "CREATE INDEX IF NOT EXISTS bundles_fts ON bundles USING gin (fts)",
)


def _bundles(db: Database) -> None:
    fts = _PG_FTS if db.server else _SQLITE_FTS
    for statement in (_BUNDLES_TABLE, *fts, *_BUNDLES_INDEXES):
        db.execute(db.ddl(statement))


#: The index's schema, one step per number (IF NOT EXISTS: indexes made before migrations have
#: these already). Never edit a step that has shipped: add one.
MIGRATIONS: list[Migration] = [
    # 1: bundles, their full-text index (and in SQLite its triggers)
    _bundles,
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
    # 3: an item's track: the other frames of its moment that show the same product (JSON:
    #    time, frame key, sha256, box each); they take the item's label when it is exported
    "ALTER TABLE label_items ADD COLUMN track TEXT NOT NULL DEFAULT '[]'",
    # 4: every rule that fired in a bundle (the manifest's trigger and its ``also``); bundles
    #    indexed before know the one that opened them
    (
        "ALTER TABLE bundles ADD COLUMN rules TEXT NOT NULL DEFAULT ''",
        "UPDATE bundles SET rules = rule",
    ),
]


#: Where each backend records the index's migrations (on PostgreSQL the sink's own tables share
#: the database, and its ``schema_migrations``).
MIGRATIONS_TABLE = {"sqlite": "schema_migrations", "postgresql": "index_schema_migrations"}


class QueryError(ValueError):
    """A query the index cannot run (a malformed full-text query); the message is ours, not
    SQLite's."""


_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in COLUMNS) + " FROM bundles"


class Index:
    """The index of a sink: ``target`` a path (``index.db``) or the sink's ``postgresql://``
    URL. Thread-safe (one connection, one lock: :class:`cloud_sink.sql.Database`)."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.db = Database(target)  # a new file: made 0600, its folder synced
        try:
            self.db.migrate(MIGRATIONS, MIGRATIONS_TABLE[self.db.dialect])
        except SinkError:
            self.db.close()
            raise

    @property
    def schema_version(self) -> int:
        return self.db.schema_version(MIGRATIONS_TABLE[self.db.dialect])

    def close(self) -> None:
        self.db.close()

    #: What :meth:`copy_from` moves (name: its identity column).
    TABLES: ClassVar[dict[str, str | None]] = {
        "bundles": None,
        "label_items": None,
        "label_events": "seq",
    }

    def copy_from(self, source: Index) -> dict[str, int]:
        """Copy an embedded sink's index (bundles, labels and their history) into this one,
        which must hold none yet: one transaction, all or nothing."""
        if source.schema_version != self.schema_version:
            raise SinkError(
                f"{source.db.name} is at schema version {source.schema_version}, "
                f"{self.db.name} at {self.schema_version}: migrate both first"
            )
        return copy_tables(source.db, self.db, self.TABLES)

    def get(self, bundle_id: str, device: str) -> dict[str, Any] | None:
        row = self.db.execute(
            _SELECT + " WHERE id = ? AND device_id = ?", (bundle_id, device)
        ).fetchone()
        return dict(row) if row is not None else None

    def set_label_status(self, bundle_id: str, device: str, status: str) -> None:
        self.db.execute(
            "UPDATE bundles SET label_status = ? WHERE id = ? AND device_id = ?",
            (status, bundle_id, device),
        )

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM bundles").fetchone()[0])

    def _upsert(self, row: dict[str, Any]) -> None:
        """Insert the bundle, or update the columns ``row`` names of the one indexed."""
        names = list(row)
        keys = ("device_id", "id")
        quoted = ", ".join(f'"{n}"' for n in names)
        updates = ", ".join(f'"{n}" = excluded."{n}"' for n in names if n not in keys)
        self.db.execute(
            f"INSERT INTO bundles ({quoted}) VALUES ({', '.join('?' * len(names))}) "
            f'ON CONFLICT ("device_id", "id") DO UPDATE SET {updates}',
            tuple(row.values()),
        )

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
                "rules": " ".join(dict.fromkeys([m.trigger.rule, *m.trigger.also])),
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
                "rules": m.trigger.rule if m else "",
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
        fired: str | None = None,
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
        if fired:  # opened the bundle or fired while it was open
            escaped = fired.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(' ' || rules || ' ') LIKE ? ESCAPE '\\'")
            args.append(f"% {escaped} %")
        if barcode:
            escaped = barcode.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(' ' || barcodes || ' ') LIKE ? ESCAPE '\\'")
            args.append(f"% {escaped} %")
        if q and self.db.server:  # PostgreSQL's web-search syntax: any text is a query
            where.append("fts @@ websearch_to_tsquery('simple', ?)")
            args.append(q)
        elif q:
            where.append("rowid IN (SELECT rowid FROM bundles_fts WHERE bundles_fts MATCH ?)")
            args.append(q)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY start_utc DESC LIMIT ?"
        args.append(max(1, min(limit, 1000)))
        try:
            rows = [dict(r) for r in self.db.execute(sql, args)]
        except DatabaseUnavailable:
            raise
        except SinkError:
            if q:  # the only text of the caller's that the database parses
                raise QueryError("not a valid full-text query") from None
            raise
        for r in rows:
            r["sensors"] = json.loads(r["sensors"] or "{}")
        return rows
