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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION: Literal[1] = 1
MANIFEST = "manifest.json"
CLIP = "clip.mp4"
SENSORS = "sensors.mcap"
BUNDLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: A manifest larger than this is not one of ours (a cart's is about 2 KB).
MAX_MANIFEST_BYTES = 256 * 1024
MAX_FILE_BYTES = 1 << 40

# Every field has a type and a bound: the sink reads manifests a hostile device may write.
_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Text = Annotated[str, Field(max_length=256)]
Utc = Annotated[str, Field(max_length=40)]
Ns = Annotated[int, Field(ge=0, lt=1 << 63)]
Count = Annotated[int, Field(ge=0, le=1 << 31)]
Seconds = Annotated[float, Field(ge=0, le=7 * 86400)]
FileName = Annotated[str, Field(pattern=r"^(clip\.mp4|sensors\.mcap)$")]


class ManifestError(ValueError):
    """A manifest is malformed, or a bundle does not match its manifest."""


@dataclass
class TriggerInfo:
    rule: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
    priority: Annotated[int, Field(ge=0, le=9)]
    fired_ns: Ns
    signals: Annotated[dict[Annotated[str, Field(max_length=32)], bool], Field(max_length=64)]
    reason: Text = ""
    # other rules that fired within this clip
    also: Annotated[list[Annotated[str, Field(max_length=48)]], Field(max_length=32)] = field(
        default_factory=list
    )
    __pydantic_config__ = _STRICT


@dataclass
class VideoInfo:
    codec: Annotated[str, Field(max_length=16)]
    encoder: Annotated[str, Field(max_length=128)]
    width: Annotated[int, Field(ge=1, le=16384)]
    height: Annotated[int, Field(ge=1, le=16384)]
    fps: Annotated[float, Field(gt=0, le=1000)]
    frames: Count
    duration_s: Seconds
    dropped_frames: Count = 0
    complete: bool = True  # False: no encoder could go on; the clip holds what came before
    note: Annotated[str, Field(max_length=2048)] = ""
    __pydantic_config__ = _STRICT


@dataclass
class FileInfo:
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0, le=MAX_FILE_BYTES)]
    __pydantic_config__ = _STRICT


@dataclass
class Manifest:
    bundle_id: Annotated[str, Field(pattern=BUNDLE_ID.pattern)]
    device_id: Name
    store_id: Name
    profile: Annotated[str, Field(max_length=64)]
    trigger: TriggerInfo
    start_ns: Ns  # host CLOCK_MONOTONIC
    end_ns: Ns
    start_utc: Utc
    end_utc: Utc
    video: VideoInfo | None
    files: Annotated[dict[FileName, FileInfo], Field(max_length=2)]
    created_utc: Utc
    software: Text
    schema_version: Literal[1] = SCHEMA_VERSION
    __pydantic_config__ = _STRICT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate (types, bounds, nesting depth); ManifestError says why not."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        return _checked(lambda: _MANIFEST.validate_json(text))

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        return _checked(lambda: _MANIFEST.validate_python(raw))


def validation_problem(exc: ValidationError) -> str:
    """The first problem of a validation error, in one line, without echoing the input."""
    err = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "(document)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def _checked(parse: Callable[[], Manifest]) -> Manifest:
    try:
        m = parse()
    except ValidationError as exc:
        raise ManifestError(f"manifest malformed: {validation_problem(exc)}") from None
    if m.end_ns < m.start_ns:
        raise ManifestError(f"end_ns {m.end_ns} before start_ns {m.start_ns}")
    return m


_MANIFEST: TypeAdapter[Manifest] = TypeAdapter(Manifest)


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
