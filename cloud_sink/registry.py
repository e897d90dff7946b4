"""The model registry in the sink: a TUF repository (:mod:`capsight_edge.runtime.trust` says who
signs what) in ``DATA/registry/``.

The ML team creates it (``capsight-train registry-init``, root and targets signed offline) and
adds models to it (``capsight-train publish``). The sink holds only its online key
(``registry/online.json``, made by ``capsight-sink model keygen``): with it the sink points a
channel at a published model for a share of the fleet (``promote``), points it back at the
previous one (``rollback``: a new signed channel file, never an old one replayed), and keeps
snapshot and timestamp signed and fresh. Every change is appended to ``registry/audit.jsonl``
(who, when, what). Carts read ``/registry/metadata/*`` and ``/registry/targets/*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

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
    return generate_key(path)


class Registry:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.folder = registry_dir(data_dir)
        self.meta = self.folder / "metadata"
        self.targets_dir = self.folder / "targets"
        self._lock = threading.Lock()
        self._signer_cache: tuple[tuple[int, int], Any] | None = None

    @property
    def ready(self) -> bool:
        return (self.meta / "root.json").is_file() and (self.meta / "targets.json").is_file()

    def _signer(self) -> Any:
        """The online key, read again only when it or root changed (every cart's poll of
        timestamp.json comes through here)."""
        path = self.folder / "online.json"
        if not path.is_file():
            raise RegistryError("the sink has no online key: capsight-sink model keygen")
        stamp = (path.stat().st_mtime_ns, (self.meta / "root.json").stat().st_mtime_ns)
        if self._signer_cache is None or self._signer_cache[0] != stamp:
            signer = self._trusted_signer(path)
            stamp = (path.stat().st_mtime_ns, stamp[1])  # a rotation replaced the key file
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
        from tuf.api.metadata import Metadata

        return Metadata.from_file(str(self.meta / f"{role}.json"))

    def _write(self, md: Any, role: str) -> None:
        from tuf.api.serialization.json import JSONSerializer

        path = self.meta / f"{role}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(md.to_bytes(JSONSerializer(compact=False)))
        os.replace(tmp, path)

    def _stale(self, role: str) -> bool:
        from datetime import UTC, datetime

        from capsight_edge.runtime.trust import EXPIRY_DAYS

        path = self.meta / f"{role}.json"
        if not path.is_file():
            return True
        left = (self._load(role).signed.expires - datetime.now(UTC)).total_seconds()
        return left < EXPIRY_DAYS[role] * 86400 * RESIGN_WHEN_LEFT

    # -- the online roles -------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> bool:
        """Re-sign rollout, snapshot and timestamp where they changed or age; True when
        anything was written."""
        from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp

        if not self.ready:
            raise RegistryError("no registry yet: capsight-train registry-init")
        with self._lock:
            signer = self._signer()
            wrote = False
            if not (self.meta / f"{ROLLOUT}.json").is_file():
                rollout = Metadata(Targets(expires=expires(ROLLOUT)))
                rollout.sign(signer)
                self._write(rollout, ROLLOUT)
                wrote = True
            rollout = self._load(ROLLOUT)
            if signer.public_key.keyid not in rollout.signatures:  # after a key rotation
                resign(rollout, ROLLOUT, signer)
                self._write(rollout, ROLLOUT)
                wrote = True
            versions = {
                "targets.json": self._load("targets").signed.version,
                f"{ROLLOUT}.json": self._load(ROLLOUT).signed.version,
            }
            snap_path = self.meta / "snapshot.json"
            snapshot = self._load("snapshot") if snap_path.is_file() else None
            pinned = {k: v.version for k, v in snapshot.signed.meta.items()} if snapshot else {}
            if snapshot is None or pinned != versions or force or self._stale("snapshot"):
                if snapshot is None:
                    snapshot = Metadata(Snapshot(expires=expires("snapshot")))
                else:
                    snapshot.signed.version += 1
                snapshot.signed.meta = {k: MetaFile(version=v) for k, v in versions.items()}
                snapshot.signed.expires = expires("snapshot")
                snapshot.signatures.clear()
                snapshot.sign(signer)
                self._write(snapshot, "snapshot")
                wrote = True
            snap_version = self._load("snapshot").signed.version
            ts_path = self.meta / "timestamp.json"
            timestamp = self._load("timestamp") if ts_path.is_file() else None
            if (
                timestamp is None
                or timestamp.signed.snapshot_meta.version != snap_version
                or wrote
                or self._stale("timestamp")
            ):
                if timestamp is None:
                    timestamp = Metadata(Timestamp(expires=expires("timestamp")))
                else:
                    timestamp.signed.version += 1
                timestamp.signed.snapshot_meta = MetaFile(version=snap_version)
                timestamp.signed.expires = expires("timestamp")
                timestamp.signatures.clear()
                timestamp.sign(signer)
                self._write(timestamp, "timestamp")
                wrote = True
            return wrote

    def models(self) -> list[dict[str, Any]]:
        """Every published model (from the ML team's signed targets)."""
        out = []
        for path, target in sorted(self._load("targets").signed.targets.items()):
            if path.endswith("/model.onnx"):
                custom = target.unrecognized_fields.get("custom", {})
                out.append({"path": path, "length": target.length, **custom})
        return out

    def channel(self, channel: str) -> dict[str, Any] | None:
        path = self.targets_dir / channel_path(channel)
        return json.loads(path.read_text()) if path.is_file() else None

    def promote(
        self, channel: str, name: str, version: str, *, rollout_pct: int = 100, who: str = ""
    ) -> dict[str, Any]:
        """Point ``channel`` at a published model for ``rollout_pct``% of the fleet (by device
        name, :func:`~capsight_edge.runtime.trust.bucket`)."""
        from tuf.api.metadata import TargetFile

        if not 0 <= rollout_pct <= 100:
            raise RegistryError("the rollout share must be 0..100 %")
        rel = f"{model_dir(name, version)}/model.onnx"
        targets = self._load("targets").signed.targets
        if rel not in targets:
            raise RegistryError(f"{name} {version} is not published (capsight-train publish)")
        self.refresh()
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
        with self._lock:
            cpath = self.targets_dir / channel_path(channel)
            cpath.parent.mkdir(parents=True, exist_ok=True)
            tmp = cpath.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry, indent=1))
            os.replace(tmp, cpath)
            rollout = self._load(ROLLOUT)
            rollout.signed.targets[channel_path(channel)] = TargetFile.from_file(
                channel_path(channel), str(cpath), ["sha256"]
            )
            resign(rollout, ROLLOUT, self._signer())
            self._write(rollout, ROLLOUT)
        self.refresh(force=True)
        self._audit(who, "promote", entry)
        return entry

    def rollback(self, channel: str, *, who: str = "") -> dict[str, Any]:
        """Point ``channel`` back at the model it offered before (a new signed channel file)."""
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
            channel, before["name"], before["version"], rollout_pct=before["rollout_pct"], who=who
        )
        self._audit(who, "rollback", {"channel": channel, "to": before["version"]})
        return entry

    def _audit(self, who: str, action: str, what: dict[str, Any]) -> None:
        line = {
            "t_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "who": who,
            "action": action,
            "what": {k: v for k, v in what.items() if k != "history"},
        }
        with (self.folder / "audit.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")

    def audit(self) -> list[dict[str, Any]]:
        path = self.folder / "audit.jsonl"
        if not path.is_file():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    # -- serving ------------------------------------------------------------------------------
    def file(self, kind: str, rel: str) -> Path | None:
        """The file a cart asks for (``metadata`` or ``targets``), None when there is none or
        the path leaves the registry."""
        base = self.meta if kind == "metadata" else self.targets_dir
        if kind == "metadata" and rel in ("timestamp.json", "snapshot.json"):
            # Never serve expired online metadata while the key is here; without the key,
            # serve what there is: the cart judges its expiry.
            with contextlib.suppress(RegistryError):
                self.refresh()
        path = (base / rel).resolve()
        if not path.is_relative_to(base.resolve()) or not path.is_file():
            return None
        return path


def add_registry(routes: list[Any], db: Any, data_dir: Path) -> list[Any]:
    """``GET /registry/metadata/{file}`` and ``GET /registry/targets/{path}`` for any device
    (or admin) token. What is served needs no trust in the sink's transport: the cart verifies
    every byte against the signed metadata. Metadata carries a strong ETag (a cart's poll of an
    unchanged registry costs one request and no body); targets answer Range requests."""
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    from cloud_sink.auth import bearer_identity

    registry = Registry(data_dir)

    def serve(kind: str) -> Any:
        async def handler(request: Any) -> Response:
            if bearer_identity(request, db) is None:
                return JSONResponse(
                    {"error": "a Bearer token is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            path = registry.file(kind, request.path_params["path"])
            if path is None:
                return JSONResponse({"error": "no such file in the registry"}, status_code=404)
            media = "application/json" if path.suffix == ".json" else "application/octet-stream"
            headers = {"Cache-Control": "no-cache"}
            if kind == "metadata":  # small: a strong ETag from the bytes, and 304 when unchanged
                etag = '"' + hashlib.sha256(path.read_bytes()).hexdigest()[:32] + '"'
                headers["ETag"] = etag
                if etag in request.headers.get("if-none-match", ""):
                    return Response(status_code=304, headers=headers)
            # Targets: Starlette answers Range requests (206), so a cut download resumes.
            return FileResponse(path, media_type=media, headers=headers)

        return handler

    return [
        *routes,
        Route("/registry/metadata/{path:path}", serve("metadata")),
        Route("/registry/targets/{path:path}", serve("targets")),
    ]
