"""The capture bundle's manifest: defined here once, imported by the edge and the cloud sink.

A bundle is a folder ``<bundle_id>/`` holding ``clip.mp4``, ``sensors.mcap`` and
``manifest.json``. The manifest names the device, the store, the trigger that fired and the
signals behind it, the time range (host monotonic ns and UTC), the codec and encoder, and the
sha256 and size of every other file, so a receiver can verify what arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CLIP = "clip.mp4"
SENSORS = "sensors.mcap"
BUNDLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """A manifest is malformed, or a bundle does not match its manifest."""


@dataclass
class TriggerInfo:
    rule: str
    priority: int
    fired_ns: int
    signals: dict[str, bool]
    reason: str = ""
    also: list[str] = field(default_factory=list)  # other rules that fired within this clip


@dataclass
class VideoInfo:
    codec: str
    encoder: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    dropped_frames: int = 0
    complete: bool = True  # False: the encoder failed mid-clip; the clip holds what came before
    note: str = ""


@dataclass
class FileInfo:
    sha256: str
    bytes: int


@dataclass
class Manifest:
    bundle_id: str
    device_id: str
    store_id: str
    profile: str
    trigger: TriggerInfo
    start_ns: int  # host CLOCK_MONOTONIC
    end_ns: int
    start_utc: str
    end_utc: str
    video: VideoInfo | None
    files: dict[str, FileInfo]
    created_utc: str
    software: str
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise ManifestError("manifest must be a JSON object")
        try:
            if raw.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(
                    f"schema_version {raw.get('schema_version')!r} is not {SCHEMA_VERSION}"
                )
            bundle_id = str(raw["bundle_id"])
            if not BUNDLE_ID.match(bundle_id):
                raise ManifestError(f"bundle_id {bundle_id!r} is not a safe name")
            files = {}
            for name, info in dict(raw["files"]).items():
                if name not in (CLIP, SENSORS):
                    raise ManifestError(f"files: unexpected file {name!r}")
                sha, size = str(info["sha256"]), int(info["bytes"])
                if not re.fullmatch(r"[0-9a-f]{64}", sha) or size < 0:
                    raise ManifestError(f"files.{name}: bad sha256 or size")
                files[name] = FileInfo(sha, size)
            video = VideoInfo(**raw["video"]) if raw.get("video") else None
            trigger = TriggerInfo(**raw["trigger"])
            start, end = int(raw["start_ns"]), int(raw["end_ns"])
            if end < start:
                raise ManifestError(f"end_ns {end} before start_ns {start}")
            return cls(
                bundle_id=bundle_id,
                device_id=str(raw["device_id"]),
                store_id=str(raw["store_id"]),
                profile=str(raw["profile"]),
                trigger=trigger,
                start_ns=start,
                end_ns=end,
                start_utc=str(raw["start_utc"]),
                end_utc=str(raw["end_utc"]),
                video=video,
                files=files,
                created_utc=str(raw["created_utc"]),
                software=str(raw["software"]),
                schema_version=SCHEMA_VERSION,
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest field missing or malformed: {exc}") from exc


def sha256_file(path: str | os.PathLike[str]) -> FileInfo:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return FileInfo(h.hexdigest(), size)


def verify_bundle(folder: str | os.PathLike[str]) -> Manifest:
    """Read a bundle's manifest and check every file's size and sha256; ManifestError if not."""
    folder = Path(folder)
    try:
        manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
    except OSError as exc:
        raise ManifestError(f"{folder}: no readable {MANIFEST}: {exc}") from exc
    for name, info in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{folder}: {name} is missing")
        got = sha256_file(path)
        if got.bytes != info.bytes or got.sha256 != info.sha256:
            raise ManifestError(f"{folder}: {name} does not match its manifest entry")
    return manifest
