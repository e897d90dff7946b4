"""The sink's profile: its limits, per-device quotas, timeouts and the sweep that returns disk
space. One declaration per setting, with its default and unit in its name; a TOML file given to
``capsight-sink serve --config FILE`` states what differs (``[limits]``, ``[quotas]``,
``[timeouts]``, ``[sweep]``); an unknown or out-of-range key is refused with its path.

Everything a device controls has a bound here: what it may upload at once and how fast it may
create uploads, how large its metadata and heartbeats may be, how far a compressed file may
expand, how large a sensor log's chunks and messages may be.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_sink.db import SinkError

MiB, GiB = 1 << 20, 1 << 30


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Limits(_Section):
    max_upload_bytes: int = Field(
        default=10 * GiB, ge=1, description="Tus-Max-Size: one upload, at most"
    )
    manifest_bytes: int = Field(default=256 * 1024, ge=1024, description="a manifest, decoded")
    sensors_bytes: int = Field(default=512 * MiB, ge=MiB, description="a sensor log, decoded")
    zstd_expansion_max: float = Field(
        default=64.0,
        ge=1.0,
        description="a zstd upload decodes to at most this many times its size",
    )
    mcap_chunk_bytes: int = Field(
        default=16 * MiB, ge=64 * 1024, description="one MCAP chunk, decoded"
    )
    mcap_message_bytes: int = Field(default=4 * MiB, ge=1024, description="one sensor-log message")
    mcap_messages: int = Field(default=2_000_000, ge=1, description="messages in one sensor log")
    metadata_pairs: int = Field(default=16, ge=1, le=256, description="Upload-Metadata pairs")
    metadata_value_chars: int = Field(default=1024, ge=16, description="one Upload-Metadata value")
    heartbeat_bytes: int = Field(default=4096, ge=256, description="a heartbeat body")
    head_bytes: int = Field(
        default=64 * 1024,
        ge=8 * 1024,
        le=1024 * 1024,
        description="a request head (request line and headers); over it: 431",
    )


class Quotas(_Section):
    """Per device; a request over a quota gets 429 with ``Retry-After`` (or 413 when it is
    too large to ever fit)."""

    uploads_in_progress: int = Field(default=64, ge=1, description="incomplete uploads at once")
    bytes_in_progress: int = Field(default=16 * GiB, ge=MiB, description="declared bytes of those")
    creates_per_minute: int = Field(default=240, ge=1, description="upload creations per minute")
    metadata_bytes: int = Field(default=2048, ge=256, description="an Upload-Metadata header")


class Timeouts(_Section):
    body_stall_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="a request body that sends nothing this long is cut off",
    )
    header_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="a connection must send a whole request head this fast",
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0, le=600, description="idle keep-alive connections"
    )
    lock_wait_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="a second writer of one upload waits this long, then 423",
    )
    ingest_lease_s: float = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="an ingest claimed by a worker that died is retried after this long",
    )


class Sweep(_Section):
    interval_s: float = Field(
        default=60.0, gt=0, description="how often expired uploads are removed"
    )
    expire_hours: float = Field(
        default=24.0, gt=0, description="an incomplete upload expires after"
    )
    keep_corrupt_hours: float = Field(
        default=24.0,
        ge=0,
        description="the uploads of a corrupt bundle are kept this long, then removed",
    )


class SinkConfig(_Section):
    limits: Limits = Field(default_factory=Limits)
    quotas: Quotas = Field(default_factory=Quotas)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    sweep: Sweep = Field(default_factory=Sweep)

    @classmethod
    def load(cls, path: str | Path | None) -> SinkConfig:
        """The defaults, with what ``path`` (TOML) states; SinkError naming the key if not."""
        if path is None:
            return cls()
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SinkError(f"{path}: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise SinkError(f"{path}: {where}: {err['msg']}") from None
