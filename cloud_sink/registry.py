"""The model registry in the sink: a TUF repository (:mod:`capsight_edge.runtime.trust` says who
signs what), kept in ``DATA/registry/`` (the embedded default) or, when the sink runs on a
database server (``serve --db postgresql://...``), in that database, where every instance serves
and signs the same one.

The ML team creates it (``capsight-train registry-init``, root and targets signed offline) and
adds models to it (``capsight-train publish``), in a folder: the sink's own, or, for a sink on a
database server, a folder of the ML team's that ``capsight-sink model import`` verifies and
takes in (:func:`import_registry`).
The sink holds only its online key (``registry/online.json``, made by ``capsight-sink model
keygen``; each instance has a copy): with it the sink points a channel at a published model for a
share of the fleet (``promote``), points it back at the previous one (``rollback``: a new signed
channel file, never an old one replayed), and keeps snapshot and timestamp signed and fresh.
Every change is audited (who, when, what). Carts read ``/registry/metadata/*`` and
``/registry/targets/*``.

Where it is kept is a :class:`FolderStore` or a :class:`DatabaseStore`: the same names
(``metadata/root.json``, ``targets/models/<name>/<version>/model.onnx``...), several files
written at once (all or none in the database), and one writer at a time across processes and
instances (a file lock, or PostgreSQL's advisory lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from capsight_edge.durable import fsync_dir, make_dirs
from capsight_edge.runtime.trust import (
    ROLLOUT,
    channel_path,
    expires,
    generate_key,
    load_signer,
    model_dir,
    pub_path,
    resign,
)

#: Online metadata is re-signed when less than this share of its life is left.
RESIGN_WHEN_LEFT = 0.5
#: The largest file a registry takes (a model, its self-test, its card): a database row holds it
#: whole, and the sink reads it whole once to cache it.
MAX_FILE_BYTES = 256 * 1024 * 1024


class RegistryError(ValueError):
    pass


def registry_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / "registry"


def keygen(data_dir: str | os.PathLike[str], *, next_key: bool = False) -> dict[str, Any]:
    """The sink's online key (``registry/online.json``, public half ``online.pub.json``), or
    with ``next_key`` its successor (``online.next.json``): the ML team names it in a new root
    (``capsight-train rotate-keys --online-key``), and the sink signs with it from the moment
    that root is in the registry."""
    path = registry_dir(data_dir) / ("online.next.json" if next_key else "online.json")
    if path.exists():
        raise RegistryError(
            f"{path} exists: rotate with keygen --next and capsight-train rotate-keys"
        )
    make_dirs(path.parent)
    return generate_key(path)


def _checked_name(rel: str) -> str:
    """A name inside the registry (``metadata/...`` or ``targets/...``), or RegistryError."""
    parts = rel.split("/")
    if (
        len(parts) < 2
        or parts[0] not in ("metadata", "targets")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in rel
        or "\0" in rel
    ):
        raise RegistryError(f"{rel!r} is not a name in the registry")
    return rel


class RegistryStore(Protocol):
    """Where a registry's files are kept."""

    name: str

    def read(self, rel: str) -> bytes | None: ...

    def write(self, files: dict[str, bytes]) -> None: ...

    def local_file(self, rel: str) -> Path | None: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def add_audit(self, line: dict[str, Any]) -> None: ...

    def audit(self) -> list[dict[str, Any]]: ...


class FolderStore:
    """A registry's files in a folder (``DATA/registry/``, the embedded default): each file
    replaced whole (a temporary file, fsynced, renamed), and one writer at a time across
    processes by a lock on ``.lock`` (the sink and ``capsight-sink model promote``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()
        self.name = str(self.folder)

    def _path(self, rel: str) -> Path:
        return self.folder / _checked_name(rel)

    def read(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write(self, files: dict[str, bytes]) -> None:
        for rel, body in files.items():
            if len(body) > MAX_FILE_BYTES:
                raise RegistryError(f"{rel}: {len(body)} bytes, over {MAX_FILE_BYTES}")
            path = self._path(rel)
            make_dirs(path.parent)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)

    def local_file(self, rel: str) -> Path | None:
        path = self._path(rel)
        return path if path.is_file() else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        make_dirs(self.folder)
        with (self.folder / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add_audit(self, line: dict[str, Any]) -> None:
        with (self.folder / "audit.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def audit(self) -> list[dict[str, Any]]:
        path = self.folder / "audit.jsonl"
        if not path.is_file():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class DatabaseStore:
    """A registry's files in the sink's database (tables ``registry_files`` and
    ``registry_audit``, migration 9): several files written in one transaction, one writer at a
    time across instances (PostgreSQL's advisory lock), and a target a cart downloads served
    from a local copy named by its sha256 (``cache``), so Range requests resume as from a
    folder."""

    LOCK = "capsight-registry"

    def __init__(self, db: Any, cache: str | os.PathLike[str] | None = None) -> None:
        self.db = db  # a cloud_sink.sql.Database
        self.cache = Path(cache).expanduser() if cache is not None else None
        self.name = f"{db.name} (registry)"

    def read(self, rel: str) -> bytes | None:
        row = self.db.execute(
            "SELECT body FROM registry_files WHERE path = ?", (_checked_name(rel),)
        ).fetchone()
        return bytes(row[0]) if row else None

    def write(self, files: dict[str, bytes]) -> None:
        from cloud_sink.sql import utc_now

        for rel, body in files.items():
            _checked_name(rel)
            if len(body) > MAX_FILE_BYTES:
                raise RegistryError(f"{rel}: {len(body)} bytes, over {MAX_FILE_BYTES}")
        now = utc_now()
        with self.db.transaction() as tx:
            for rel, body in files.items():
                tx.execute(
                    "INSERT INTO registry_files (path, body, sha256, length, updated_utc) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET body = excluded.body, "
                    "sha256 = excluded.sha256, length = excluded.length, "
                    "updated_utc = excluded.updated_utc",
                    (rel, body, hashlib.sha256(body).hexdigest(), len(body), now),
                )

    def local_file(self, rel: str) -> Path | None:
        row = self.db.execute(
            "SELECT sha256 FROM registry_files WHERE path = ?", (_checked_name(rel),)
        ).fetchone()
        if row is None:
            return None
        if self.cache is None:
            raise RegistryError("this registry store has no folder to serve files from")
        path = self.cache / row[0]
        if path.is_file():
            return path
        body = self.read(rel)
        if body is None or hashlib.sha256(body).hexdigest() != row[0]:
            return None  # replaced meanwhile: the cart asks again
        make_dirs(self.cache)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        self._prune()
        return path

    def _prune(self) -> None:
        """Drop cached copies of files the registry no longer holds (a replaced channel)."""
        assert self.cache is not None
        wanted = {r[0] for r in self.db.execute("SELECT sha256 FROM registry_files").rows}
        for f in self.cache.iterdir():
            if f.name not in wanted and not f.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self.db.advisory_lock(self.LOCK):
            yield

    def add_audit(self, line: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO registry_audit (t_utc, who, action, what) VALUES (?, ?, ?, ?)",
            (line["t_utc"], line["who"], line["action"], json.dumps(line["what"])),
        )

    def audit(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT t_utc, who, action, what FROM registry_audit ORDER BY seq"
        ).rows
        return [
            {"t_utc": r[0], "who": r[1], "action": r[2], "what": json.loads(r[3])} for r in rows
        ]


def copy_registry(source: FolderStore, target: DatabaseStore) -> int:
    """An embedded sink's registry (``DATA/registry/``: metadata, targets, audit) into the
    database of a sink on a server, which must hold no registry yet: the files in one
    transaction. The online key stays a file: copy it to each instance. Returns the files
    copied."""
    from cloud_sink.sql import require_empty

    require_empty(target.db, target.db.name, ("registry_files", "registry_audit"))
    files = {}
    for kind in ("metadata", "targets"):
        base = source.folder / kind
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(source.folder).as_posix()
            if path.is_file() and not path.name.endswith(".tmp") and not path.name.startswith("."):
                files[rel] = path.read_bytes()
    if files:
        target.write(files)
    for line in source.audit():
        target.add_audit(line)
    return len(files)


def import_registry(source: str | os.PathLike[str], store: RegistryStore) -> dict[str, Any]:
    """What the ML team signed offline in the registry folder ``source``
    (``capsight-train registry-init`` and ``publish`` write it) into ``store``, the sink's:
    every root version the store lacks, targets, and the files targets names. Nothing is
    taken on trust: each new root must be signed by the one before it and by itself (TUF's
    root chain), targets by the keys the newest root names for it, and every file must match
    its length and hashes in targets; neither root nor targets may go back a version. The
    sink's own roles (rollout, snapshot, timestamp, the channels) are never touched: the sink
    signs them again at the next poll. Returns what was imported."""
    from tuf.api.exceptions import RepositoryError
    from tuf.api.metadata import Metadata

    src = FolderStore(source)

    def load(body: bytes | None, what: str) -> Any:
        if body is None:
            raise RegistryError(f"{src.name} has no {what}: not a registry folder")
        try:
            return Metadata.from_bytes(body)
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"{src.name}: {what} is not TUF metadata: {exc}") from None

    try:
        root_body = src.read("metadata/root.json")
        targets_body = src.read("metadata/targets.json")
        root = load(root_body, "metadata/root.json")
        targets = load(targets_body, "metadata/targets.json")
        root.verify_delegate("targets", targets)
        with store.lock():
            files: dict[str, bytes] = {}
            have = store.read("metadata/root.json")
            if have is None:
                first = src.read("metadata/1.root.json")
                previous = load(first, "metadata/1.root.json")
                previous.verify_delegate("root", previous)
                files["metadata/1.root.json"] = first  # type: ignore[assignment]
            else:
                previous = load(have, "the sink's root")
                if root.signed.version < previous.signed.version:
                    raise RegistryError(
                        f"{src.name} holds root v{root.signed.version}, older than the sink's "
                        f"v{previous.signed.version}"
                    )
                now = store.read("metadata/targets.json")
                if now is not None and targets.signed.version < load(now, "").signed.version:
                    raise RegistryError(
                        f"{src.name} holds targets v{targets.signed.version}, older than the sink's"
                    )
            for version in range(previous.signed.version + 1, root.signed.version + 1):
                body = src.read(f"metadata/{version}.root.json")
                nxt = load(body, f"metadata/{version}.root.json")
                previous.verify_delegate("root", nxt)  # the old keys vouch for the new root
                nxt.verify_delegate("root", nxt)  # and the new keys for themselves
                files[f"metadata/{version}.root.json"] = body  # type: ignore[assignment]
                previous = nxt
            if previous.signed.version != root.signed.version or _digest(previous) != _digest(root):
                raise RegistryError(f"{src.name}: root.json is not its newest N.root.json")
            new_files = 0
            for path, target in sorted(targets.signed.targets.items()):
                rel = f"targets/{path}"
                body = store.read(rel)
                if body is not None and _matches(target, body):
                    continue
                body = src.read(rel)
                if body is None or not _matches(target, body):
                    raise RegistryError(f"{src.name}: {rel} is missing or does not match targets")
                files[rel] = body
                new_files += 1
            files["metadata/root.json"] = root_body  # type: ignore[assignment]
            files["metadata/targets.json"] = targets_body  # type: ignore[assignment]
            store.write(files)
    except RepositoryError as exc:
        raise RegistryError(f"{src.name}: {type(exc).__name__}: {exc}") from None
    return {
        "root_version": root.signed.version,
        "targets_version": targets.signed.version,
        "models": sorted(p for p in targets.signed.targets if p.endswith("/model.onnx")),
        "files_copied": new_files,
    }


def _matches(target: Any, body: bytes) -> bool:
    from tuf.api.exceptions import LengthOrHashMismatchError

    try:
        target.verify_length_and_hashes(body)
    except LengthOrHashMismatchError:
        return False
    return True


def _digest(md: Any) -> str:
    return hashlib.sha256(_bytes(md)).hexdigest()


def _bytes(md: Any) -> bytes:
    from tuf.api.serialization.json import JSONSerializer

    return bytes(md.to_bytes(JSONSerializer(compact=False)))


def sink_store(data_dir: str | os.PathLike[str], sink_db: Any = None) -> RegistryStore:
    """Where the sink in ``data_dir`` keeps its registry: in its database when that is a server
    that other instances share, else in ``DATA/registry/``."""
    if sink_db is not None and sink_db.shared:
        return DatabaseStore(sink_db.db, registry_dir(data_dir) / "cache")
    return FolderStore(registry_dir(data_dir))


class Registry:
    """The sink's side of the registry in ``data_dir``: kept in ``store`` (by default the
    folder ``DATA/registry/``; :func:`sink_store` picks it for a sink), signed with the online
    key in ``DATA/registry/``."""

    def __init__(
        self, data_dir: str | os.PathLike[str], store: RegistryStore | None = None
    ) -> None:
        self.folder = registry_dir(data_dir)  # the online key (and, by default, the files)
        self.store: RegistryStore = store if store is not None else FolderStore(self.folder)
        self._lock = threading.RLock()
        self._depth = 0
        self._signer_cache: tuple[tuple[int, str], Any] | None = None

    @property
    def ready(self) -> bool:
        return (
            self.store.read("metadata/root.json") is not None
            and self.store.read("metadata/targets.json") is not None
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time: this process's threads, then other processes and instances
        (the store's lock, taken once however deep the calls nest)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with self.store.lock():
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    def _signer(self) -> Any:
        """The online key, read again only when it or root changed (every cart's poll of
        timestamp.json comes through here)."""
        path = self.folder / "online.json"
        if not path.is_file():
            raise RegistryError("the sink has no online key: capsight-sink model keygen")
        root = hashlib.sha256(self.store.read("metadata/root.json") or b"").hexdigest()
        stamp = (path.stat().st_mtime_ns, root)
        if self._signer_cache is None or self._signer_cache[0] != stamp:
            signer = self._trusted_signer(path)
            stamp = (path.stat().st_mtime_ns, root)  # a rotation replaced the key file
            self._signer_cache = (stamp, signer)
        return self._signer_cache[1]

    def _trusted_signer(self, path: Path) -> Any:
        """The online key root names for timestamp. When a new root names the next key
        (``online.next.json``), it becomes the key and the old one is destroyed."""
        signer = load_signer(path)
        trusted = self._load("root").signed.roles["timestamp"].keyids
        if signer.public_key.keyid in trusted:
            return signer
        nxt = self.folder / "online.next.json"
        if nxt.is_file() and load_signer(nxt).public_key.keyid in trusted:
            with contextlib.suppress(FileNotFoundError):  # another process did it first
                os.replace(nxt, path)
                os.replace(pub_path(nxt), pub_path(path))
            self._audit("sink", "online key rotated", {"keyid": trusted[0]})
            return load_signer(path)
        raise RegistryError(
            "root trusts neither online.json nor online.next.json for timestamp: "
            "the online key was rotated elsewhere"
        )

    def _load(self, role: str) -> Any:
        md = self._maybe(role)
        if md is None:
            raise RegistryError(f"the registry has no {role}.json")
        return md

    def _maybe(self, role: str) -> Any:
        """The role's metadata, or None when the registry has none yet (one read)."""
        from tuf.api.metadata import Metadata

        body = self.store.read(f"metadata/{role}.json")
        return None if body is None else Metadata.from_bytes(body)

    @staticmethod
    def _stale(md: Any, role: str) -> bool:
        from datetime import UTC, datetime

        from capsight_edge.runtime.trust import EXPIRY_DAYS

        left = (md.signed.expires - datetime.now(UTC)).total_seconds()
        return bool(left < EXPIRY_DAYS[role] * 86400 * RESIGN_WHEN_LEFT)

    # -- the online roles -------------------------------------------------------------------
    def _due(self) -> bool:
        """Whether rollout, snapshot or timestamp need signing (read without the lock: every
        poll asks, and almost every answer is no)."""
        try:
            snapshot, timestamp = self._load("snapshot"), self._load("timestamp")
            rollout, targets = self._load(ROLLOUT), self._load("targets")
        except RegistryError:
            return True
        pinned = {k: v.version for k, v in snapshot.signed.meta.items()}
        return (
            pinned
            != {"targets.json": targets.signed.version, f"{ROLLOUT}.json": rollout.signed.version}
            or timestamp.signed.snapshot_meta.version != snapshot.signed.version
            or self._stale(snapshot, "snapshot")
            or self._stale(timestamp, "timestamp")
            or self._signer().public_key.keyid not in timestamp.signatures
        )

    def refresh(self, *, force: bool = False) -> bool:
        """Re-sign rollout, snapshot and timestamp where they changed or age, written together;
        True when anything was written."""
        if not force and not self._due():  # first: a poll's usual answer, in the fewest reads
            return False
        if not self.ready:
            raise RegistryError("no registry yet: capsight-train registry-init")
        with self._writing():
            out = self._signed(force)
            if out:
                self.store.write(out)  # together: never a timestamp that names a missing snapshot
            return bool(out)

    def _rollout(self) -> Any:
        """The rollout role as it is, or a new empty one (not written)."""
        from tuf.api.metadata import Metadata, Targets

        rollout = self._maybe(ROLLOUT)
        if rollout is not None:
            return rollout
        rollout = Metadata(Targets(expires=expires(ROLLOUT)))
        rollout.signed.version = 0  # the first signing makes it version 1
        return rollout

    def _signed(self, force: bool, rollout: Any = None) -> dict[str, bytes]:
        """What must be written for rollout (``rollout`` when the caller changed it), snapshot
        and timestamp to be signed with the online key, fresh and consistent."""
        from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

        signer = self._signer()
        out: dict[str, bytes] = {}
        if rollout is None:
            rollout = self._rollout()
            if rollout.signed.version == 0 or signer.public_key.keyid not in rollout.signatures:
                resign(rollout, ROLLOUT, signer)  # new, or after a key rotation
                out[f"metadata/{ROLLOUT}.json"] = _bytes(rollout)
        else:
            out[f"metadata/{ROLLOUT}.json"] = _bytes(rollout)
        versions = {
            "targets.json": self._load("targets").signed.version,
            f"{ROLLOUT}.json": rollout.signed.version,
        }
        snapshot = self._maybe("snapshot")
        pinned = {k: v.version for k, v in snapshot.signed.meta.items()} if snapshot else {}
        if snapshot is None or pinned != versions or force or self._stale(snapshot, "snapshot"):
            if snapshot is None:
                snapshot = Metadata(Snapshot(expires=expires("snapshot")))
            else:
                snapshot.signed.version += 1
            snapshot.signed.meta = {k: MetaFile(version=v) for k, v in versions.items()}
            snapshot.signed.expires = expires("snapshot")
            snapshot.signatures.clear()
            snapshot.sign(signer)
            out["metadata/snapshot.json"] = _bytes(snapshot)
        timestamp = self._maybe("timestamp")
        if (
            timestamp is None
            or timestamp.signed.snapshot_meta.version != snapshot.signed.version
            or out
            or self._stale(timestamp, "timestamp")
            or signer.public_key.keyid not in timestamp.signatures
        ):
            if timestamp is None:
                timestamp = Metadata(Timestamp(expires=expires("timestamp")))
            else:
                timestamp.signed.version += 1
            timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
            timestamp.signed.expires = expires("timestamp")
            timestamp.signatures.clear()
            timestamp.sign(signer)
            out["metadata/timestamp.json"] = _bytes(timestamp)
        return out

    def models(self) -> list[dict[str, Any]]:
        """Every published model (from the ML team's signed targets)."""
        out = []
        for path, target in sorted(self._load("targets").signed.targets.items()):
            if path.endswith("/model.onnx"):
                custom = target.unrecognized_fields.get("custom", {})
                out.append({"path": path, "length": target.length, **custom})
        return out

    def channel(self, channel: str) -> dict[str, Any] | None:
        body = self.store.read(f"targets/{channel_path(channel)}")
        return json.loads(body) if body is not None else None

    def promote(
        self, channel: str, name: str, version: str, *, rollout_pct: int = 100, who: str = ""
    ) -> dict[str, Any]:
        """Point ``channel`` at a published model for ``rollout_pct``% of the fleet (by device
        name, :func:`~capsight_edge.runtime.trust.bucket`)."""
        if not 0 <= rollout_pct <= 100:
            raise RegistryError("the rollout share must be 0..100 %")
        rel = f"{model_dir(name, version)}/model.onnx"
        if not self.ready:
            raise RegistryError("no registry yet: capsight-train registry-init")
        if rel not in self._load("targets").signed.targets:
            raise RegistryError(f"{name} {version} is not published (capsight-train publish)")
        with self._writing():
            entry = self._point(channel, name, version, rel, rollout_pct, who)
        self._audit(who, "promote", entry)
        return entry

    def _point(
        self, channel: str, name: str, version: str, rel: str, rollout_pct: int, who: str
    ) -> dict[str, Any]:
        from tuf.api.metadata import TargetFile

        previous = self.channel(channel)
        history = (previous or {}).get("history", [])
        if previous:
            history = [*history, {k: previous[k] for k in ("name", "version", "rollout_pct")}]
        entry = {
            "channel": channel,
            "name": name,
            "version": version,
            "model": rel,
            "rollout_pct": rollout_pct,
            "sequence": (previous or {}).get("sequence", 0) + 1,
            "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "by": who,
            "history": history[-20:],
        }
        body = json.dumps(entry, indent=1).encode()
        rollout = self._rollout()
        rollout.signed.targets[channel_path(channel)] = TargetFile.from_data(
            channel_path(channel), body, ["sha256"]
        )
        resign(rollout, ROLLOUT, self._signer())
        # The channel file, the rollout that signs it, snapshot and timestamp written together
        # (in a database, one transaction: a cart never finds one without the others).
        self.store.write({f"targets/{channel_path(channel)}": body, **self._signed(True, rollout)})
        return entry

    def rollback(self, channel: str, *, who: str = "") -> dict[str, Any]:
        """Point ``channel`` back at the model it offered before (a new signed channel file)."""
        with self._writing():
            current = self.channel(channel)
            if not current or not current.get("history"):
                raise RegistryError(f"channel {channel} has nothing to roll back to")
            before = next(
                (
                    h
                    for h in reversed(current["history"])
                    if (h["name"], h["version"]) != (current["name"], current["version"])
                ),
                None,
            )
            if before is None:
                raise RegistryError(f"channel {channel} has offered only {current['version']}")
            entry = self.promote(
                channel,
                before["name"],
                before["version"],
                rollout_pct=before["rollout_pct"],
                who=who,
            )
        self._audit(who, "rollback", {"channel": channel, "to": before["version"]})
        return entry

    def _audit(self, who: str, action: str, what: dict[str, Any]) -> None:
        self.store.add_audit(
            {
                "t_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "who": who,
                "action": action,
                "what": {k: v for k, v in what.items() if k != "history"},
            }
        )

    def audit(self) -> list[dict[str, Any]]:
        return self.store.audit()

    # -- serving ------------------------------------------------------------------------------
    def metadata(self, name: str) -> bytes | None:
        """The metadata file a cart asks for (``timestamp.json``...), None when there is none."""
        if name in ("timestamp.json", "snapshot.json"):
            # Never serve expired online metadata while the key is here; without the key,
            # serve what there is: the cart judges its expiry.
            with contextlib.suppress(RegistryError):
                self.refresh()
        try:
            return self.store.read(f"metadata/{name}")
        except RegistryError:
            return None

    def target(self, rel: str) -> Path | None:
        """A local file with the target a cart asks for, None when there is none."""
        try:
            return self.store.local_file(f"targets/{rel}")
        except RegistryError:
            return None


def add_registry(routes: list[Any], db: Any, data_dir: Path) -> list[Any]:
    """``GET /registry/metadata/{file}`` and ``GET /registry/targets/{path}`` for any device
    (or admin) token, from the registry :func:`sink_store` picks. What is served needs no trust
    in the sink's transport: the cart verifies every byte against the signed metadata. Metadata
    carries a strong ETag (a cart's poll of an unchanged registry costs one request and no
    body); targets answer Range requests."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    from cloud_sink.auth import bearer_identity

    registry = Registry(data_dir, sink_store(data_dir, db))
    missing = {"error": "no such file in the registry"}

    async def metadata(request: Any) -> Response:
        if (denied := await run_in_threadpool(_denied, request)) is not None:
            return denied
        body = await run_in_threadpool(registry.metadata, request.path_params["path"])
        if body is None:
            return JSONResponse(missing, status_code=404)
        # Small: a strong ETag from the bytes, and 304 when unchanged.
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    async def target(request: Any) -> Response:
        if (denied := await run_in_threadpool(_denied, request)) is not None:
            return denied
        rel = request.path_params["path"]
        path = await run_in_threadpool(registry.target, rel)
        if path is None:
            return JSONResponse(missing, status_code=404)
        media = "application/json" if rel.endswith(".json") else "application/octet-stream"
        # Starlette answers Range requests (206), so a cut download resumes.
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    def _denied(request: Any) -> Response | None:
        if bearer_identity(request, db) is not None:
            return None
        return JSONResponse(
            {"error": "a Bearer token is required"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    return [
        *routes,
        Route("/registry/metadata/{path:path}", metadata),
        Route("/registry/targets/{path:path}", target),
    ]
