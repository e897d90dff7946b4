"""`capsight-sink doctor` and `capsight-sink migrate`: what an operator checks before and after
an upgrade.

The doctor only reads: each database is opened read-only, so a sink whose schema is behind the
code is reported, not upgraded. ``migrate`` applies what each database lacks, every step in the
transaction that records it (SQLite's DDL is transactional): a step that fails leaves that
database's schema as it was, and the error names the database and the step.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsight_edge.doctor.report import FAIL, PASS, SKIP, WARN, Check
from cloud_sink.db import SinkError
from cloud_sink.index import MIGRATIONS_TABLE as INDEX_MIGRATIONS_TABLE

#: Free space under which the data folder is a warning: a few clips of a fleet's uploads.
LOW_FREE_BYTES = 2 * 2**30


def databases() -> dict[str, list[Any]]:
    """The sink's databases (file name: its migrations)."""
    from cloud_sink import db, index

    return {"sink.db": db.MIGRATIONS, "index.db": index.MIGRATIONS}


def schema_version(path: Path) -> int:
    """The highest migration recorded in ``path`` (0: none), read without writing."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        con.close()
    return int(row[0] or 0)


def _timed(name: str, probe: Callable[..., Check], *args: Any) -> Check:
    start = time.perf_counter()
    try:
        check = probe(*args)
    except Exception as exc:  # a probe that breaks is a failed check, not a crashed doctor
        check = Check(name, FAIL, f"{type(exc).__name__}: {exc}"[:300], required=True)
    check.duration_s = round(time.perf_counter() - start, 4)
    return check


def _data_folder(data: Path) -> Check:
    if not data.is_dir():
        return Check(
            "data folder",
            FAIL,
            f"{data} does not exist",
            "capsight-sink serve --data DIR makes it; or give the right --data",
            required=True,
        )
    if not os.access(data, os.W_OK | os.X_OK):
        return Check("data folder", FAIL, f"{data} is not writable by this user", required=True)
    free = shutil.disk_usage(data).free
    status = WARN if free < LOW_FREE_BYTES else PASS
    return Check(
        "data folder",
        status,
        f"{data}: {free / 2**30:.1f} GiB free",
        "free space, or move the data folder to a bigger disk" if status == WARN else "",
        required=True,
    )


def _database(data: Path, name: str, migrations: list[Any]) -> Check:
    path = data / name
    want = len(migrations)
    if not path.is_file():
        return Check(
            name, WARN, f"{path} does not exist yet", "capsight-sink migrate --data DIR creates it"
        )
    have = schema_version(path)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        con.close()
    if integrity != "ok":
        return Check(
            name,
            FAIL,
            f"quick_check: {integrity}"[:300],
            "restore the file from a backup; the sink must not serve from it",
            required=True,
        )
    return _schema(name, "", have, want, "--data DIR") or Check(
        name, PASS, f"schema version {have}, integrity ok", required=True
    )


def _schema(check: str, where: str, have: int, want: int, args: str) -> Check | None:
    """A failed check when the schema is not this code's (None when it is); ``where`` prefixes
    the detail, ``args`` name the database in the remedy."""
    if have > want:
        return Check(
            check,
            FAIL,
            f"{where}schema version {have}, newer than this capsight-sink's {want}",
            "run the capsight-sink that wrote it (a downgrade does not undo migrations)",
            required=True,
        )
    if have < want:
        return Check(
            check,
            FAIL,
            f"{where}schema version {have}, this capsight-sink needs {want}",
            f"capsight-sink migrate {args} (serve also migrates when it starts)",
            required=True,
        )
    return None


#: On a database server: (check name, its migrations' table) per database of the sink.
SERVER_DATABASES = {
    "sink.db": ("sink database", "schema_migrations"),
    "index.db": ("index database", INDEX_MIGRATIONS_TABLE["postgresql"]),
}


def _server_database(url: str, name: str, migrations: list[Any]) -> Check:
    """One of the sink's databases on a server: reachable, and its schema this code's."""
    from cloud_sink.sql import Database

    check, table = SERVER_DATABASES[name]
    want = len(migrations)
    db = Database(url)
    try:
        have = db.schema_version(table)
    finally:
        db.close()
    return _schema(check, f"{db.name}: ", have, want, "--db URL --data DIR") or Check(
        check, PASS, f"{db.name}: reachable, schema version {have}", required=True
    )


def _server_ingest_queue(url: str) -> Check:
    from cloud_sink.sql import Database

    db = Database(url)
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM ingest_queue GROUP BY state").rows
    finally:
        db.close()
    return _queue_check({r[0]: int(r[1]) for r in rows})


def _ingest_queue(data: Path) -> Check:
    path = data / "sink.db"
    if not path.is_file():
        return Check("ingest queue", SKIP, "no sink.db yet")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        counts = dict(con.execute("SELECT state, COUNT(*) FROM ingest_queue GROUP BY state"))
    except sqlite3.OperationalError as exc:
        return Check("ingest queue", SKIP, f"not readable yet ({exc})")
    finally:
        con.close()
    return _queue_check(counts)


def _queue_check(counts: dict[str, int]) -> Check:
    pending, failed = counts.get("pending", 0), counts.get("failed", 0)
    detail = f"{pending} pending, {counts.get('done', 0)} done, {failed} failed"
    if failed:
        return Check(
            "ingest queue",
            WARN,
            detail,
            "GET /api/ingest and the sink's log name each failure (a corrupt bundle is indexed "
            "as corrupt with its reason)",
        )
    return Check("ingest queue", PASS, detail)


def _blob_store(data: Path, s3: dict[str, Any] | None) -> Check:
    if s3:
        from cloud_sink.blobs import S3BlobStore

        store = S3BlobStore(
            s3["bucket"], endpoint_url=s3.get("endpoint"), prefix=s3.get("prefix", "")
        )
        where = f"s3://{s3['bucket']}/{s3.get('prefix', '')}"
        try:
            store.s3.head_bucket(Bucket=s3["bucket"])
            key = store._key(f".doctor/{uuid.uuid4().hex}")
            store.s3.put_object(Bucket=s3["bucket"], Key=key, Body=b"capsight-sink doctor")
            store.s3.delete_object(Bucket=s3["bucket"], Key=key)
        except Exception as exc:
            return Check(
                "blob store",
                FAIL,
                f"{where}: {type(exc).__name__}: {exc}"[:300],
                "check the bucket's name, the endpoint and the AWS credentials in the environment",
                required=True,
            )
        return Check(
            "blob store",
            PASS,
            f"{where}: reachable, a probe object written and removed",
            required=True,
        )
    folder = data / "blobs" / "store"
    if not folder.exists():
        return Check("blob store", WARN, f"{folder} does not exist yet (nothing ingested)")
    probe = folder / f".doctor-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"capsight-sink doctor")
        probe.unlink()
    except OSError as exc:
        return Check("blob store", FAIL, f"{folder}: {exc.strerror or exc}", required=True)
    return Check("blob store", PASS, f"{folder}: writable", required=True)


def _catalogue(data: Path) -> Check:
    from cloud_sink.catalogue import Catalogue, catalogue_path

    path = catalogue_path(data)
    if not path.is_file():
        return Check(
            "catalogue",
            WARN,
            "none imported: pre-labelling has no barcode-as-label",
            "capsight-sink catalogue import catalogue.json --data DIR",
        )
    return Check("catalogue", PASS, f"{len(Catalogue.load(path).products)} products")


def _registry(data: Path, db: str | None) -> Check:
    """The registry where ``serve`` keeps it: the server's database with ``db``, else
    ``DATA/registry/``."""
    from cloud_sink.registry import DatabaseStore, FolderStore, Registry, registry_dir
    from cloud_sink.sql import Database, redact

    server = Database(db) if db else None
    try:
        store = DatabaseStore(server) if server else FolderStore(registry_dir(data))
        reg = Registry(data, store)
        remedy = (
            "capsight-sink model keygen --data DIR; capsight-train registry-init --registry "
            + (
                "ml-registry ...; capsight-sink model import ml-registry --data DIR "
                f"--db {redact(db)}"
                if db
                else "DATA/registry ..."
            )
        )
        if not reg.ready:
            return Check(
                "model registry",
                WARN,
                f"not set up in {store.name}: the sink serves no models",
                remedy,
            )
        if not (reg.folder / "online.json").is_file():
            return Check(
                "model registry",
                WARN,
                f"no online key in {reg.folder}: this instance cannot sign what carts poll",
                "capsight-sink model keygen --data DIR (once; then copy registry/online.json "
                "to every instance)",
            )
        return Check(
            "model registry", PASS, f"{len(reg.models())} published models in {store.name}"
        )
    finally:
        if server is not None:
            server.close()


def run_doctor(
    data_dir: str | Path, *, s3: dict[str, Any] | None = None, db: str | None = None
) -> list[Check]:
    """``db``: the sink's database server (``serve --db``), checked instead of ``sink.db``."""
    data = Path(data_dir).expanduser()
    checks = [_timed("data folder", _data_folder, data)]
    if checks[0].status == FAIL:
        return checks
    for name, migrations in databases().items():
        if db:
            check = SERVER_DATABASES[name][0]
            checks.append(_timed(check, _server_database, db, name, migrations))
        else:
            checks.append(_timed(name, _database, data, name, migrations))
    if db:
        checks.append(_timed("ingest queue", _server_ingest_queue, db))
    else:
        checks.append(_timed("ingest queue", _ingest_queue, data))
    checks.append(_timed("blob store", _blob_store, data, s3))
    checks.append(_timed("catalogue", _catalogue, data))
    checks.append(_timed("model registry", _registry, data, db))
    return checks


def migrate(
    data_dir: str | Path, *, db: str | None = None, from_sqlite: str | Path | None = None
) -> list[tuple[str, int, int]]:
    """Bring every database of the sink in ``data_dir`` up to this code's schema: (file, version
    before, version after) each. SinkError names the database whose step failed; that step
    left its schema unchanged. ``db``: the sink's database server, migrated instead of
    ``sink.db``; ``from_sqlite``: an embedded sink's folder whose ``sink.db`` is then copied
    into it (:meth:`SinkDB.copy_from`)."""
    from cloud_sink.db import SinkDB
    from cloud_sink.index import Index

    data = Path(data_dir).expanduser()
    if not data.is_dir():
        raise SinkError(f"{data} does not exist")
    out = []
    if db:
        return _migrate_server(db, from_sqlite)

    def open_sink(path: Path) -> None:
        SinkDB(path).close()

    def open_index(path: Path) -> None:
        Index(path).close()

    for name, opener in (("sink.db", open_sink), ("index.db", open_index)):
        path = data / name
        before = schema_version(path) if path.is_file() else 0
        try:
            opener(path)
        except (sqlite3.Error, SinkError) as exc:
            now = schema_version(path) if path.is_file() else 0
            raise SinkError(
                f"{path}: migration {now + 1} failed and was rolled back; the schema stays at "
                f"version {now}: {exc}"
            ) from None
        out.append((name, before, schema_version(path)))
    return out


def _migrate_server(db: str, from_sqlite: str | Path | None) -> list[tuple[str, int, int]]:
    """Both of the sink's databases on the server ``db``, then (``from_sqlite``) an embedded
    sink's two files and its model registry copied into it: (name, version before, version
    after) each."""
    from cloud_sink.db import SinkDB
    from cloud_sink.index import Index
    from cloud_sink.registry import DatabaseStore, FolderStore, copy_registry, registry_dir
    from cloud_sink.sql import Database, require_empty

    probe = Database(db)
    try:
        before = {
            name: probe.schema_version(table) for name, (_, table) in SERVER_DATABASES.items()
        }
    finally:
        probe.close()
    out = []
    sink, index = SinkDB(db), None  # SinkError names the step that failed (rolled back)
    try:
        index = Index(db)
        out.append((f"{sink.name} (sink)", before["sink.db"], sink.schema_version))
        out.append((f"{sink.name} (index)", before["index.db"], index.schema_version))
        if from_sqlite:
            folder = Path(from_sqlite).expanduser()
            if not (folder / "sink.db").is_file():
                raise SinkError(f"{folder / 'sink.db'} does not exist: no embedded sink to copy")
            old_sink = SinkDB(folder / "sink.db")
            # A sink that never served has no index yet: its devices alone move.
            old_index = Index(folder / "index.db") if (folder / "index.db").is_file() else None
            try:  # a second run is refused before anything is copied
                require_empty(index.db, index.db.name, index.TABLES)
                require_empty(sink.db, sink.name, ("registry_files", "registry_audit"))
                sink.copy_from(old_sink)
                if old_index is not None:
                    index.copy_from(old_index)
                copy_registry(FolderStore(registry_dir(folder)), DatabaseStore(sink.db))
            finally:
                old_sink.close()
                if old_index is not None:
                    old_index.close()
    finally:
        sink.close()
        if index is not None:
            index.close()
    return out
