"""Every JSON body and query the sink reads, declared once with pydantic: strict types, finite
numbers, bounded strings and counts. Nothing a device sends reaches the database or a page
without passing through one of these (the manifest's schema is the bundle's own:
``capsight_edge.bundle.manifest``, pydantic too)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from capsight_edge.bundle.manifest import validation_problem

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?Z?)?$"

__all__ = [
    "BundleQuery",
    "Heartbeat",
    "SensorMessage",
    "validation_problem",
]


class Heartbeat(BaseModel):
    """``POST /api/heartbeat``: what a cart tells the fleet view. Every field optional."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    queue_depth: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    disk_used_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    last_upload_utc: Annotated[str, Field(max_length=32, pattern=UTC_PATTERN)] | None = None
    model_version: Annotated[str, Field(max_length=128)] | None = None

    @field_validator("last_upload_utc", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v


def _utc(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("not an ISO-8601 UTC time") from exc
    return v


class BundleQuery(BaseModel):
    """``GET /api/bundles`` parameters (query strings: numbers are read from their text)."""

    model_config = ConfigDict(extra="forbid")

    store: Annotated[str, Field(pattern=NAME)] | None = None
    device: Annotated[str, Field(pattern=NAME)] | None = None
    rule: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")] | None = None
    #: bundles in which this rule fired (it opened the bundle or fired while it was open)
    fired: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")] | None = None
    since: Annotated[str, Field(max_length=32, pattern=UTC_PATTERN)] | None = None
    until: Annotated[str, Field(max_length=32, pattern=UTC_PATTERN)] | None = None
    barcode: Annotated[str, Field(pattern=r"^[0-9A-Za-z]{1,64}$")] | None = None
    label_status: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")] | None = None
    status: Literal["ok", "corrupt"] | None = None
    empty_background: Literal["0", "1"] | None = None
    q: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100

    _since = field_validator("since", "until")(_utc)


class SensorMessage(BaseModel):
    """The parts of a sensor-log message that ingest reads (the rest is ignored, but it must be
    JSON within the parser's depth limit)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    t_ns: Annotated[list[Annotated[int, Field(ge=0, lt=1 << 63)]], Field(max_length=100_000)] | (
        Annotated[int, Field(ge=0, lt=1 << 63)] | None
    ) = None
    kind: Annotated[str, Field(max_length=32)] | None = None
    delta_g: Annotated[float, Field(ge=-1e6, le=1e6)] | None = None
    #: a barcode's content: a QR code holds up to 7089 characters
    text: Annotated[str, Field(max_length=8192)] | None = None
    #: a barcode's GTIN-14, when it is a GS1 code
    gtin: Annotated[str, Field(pattern=r"^\d{14}$")] | None = None


SENSOR_MESSAGE: TypeAdapter[SensorMessage] = TypeAdapter(SensorMessage)


def parse_sensor_message(data: bytes) -> SensorMessage:
    """ValueError (with the first problem) for anything but a well-formed message."""
    try:
        return SENSOR_MESSAGE.validate_json(data)
    except ValidationError as exc:
        raise ValueError(validation_problem(exc)) from None


# -- what the sink answers (``schemas/api/*.json``; the tests hold every response to them) ---------
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleRow(_Out):
    """One bundle of the index as ``GET /api/bundles`` shows it: the names the cart uses."""

    bundle_id: str
    device_id: str
    store_id: str
    rule: str
    #: every rule that fired in the bundle, the one that opened it first
    rules: list[str]
    priority: int
    start_utc: str
    end_utc: str
    duration_s: float | None
    frames: int | None
    codec: str | None
    encoder: str | None
    bytes: int
    status: Literal["ok", "corrupt"]
    reason: str
    barcodes: list[str]
    label_status: str
    sensors: dict[str, Any]
    keyframes: int | None
    empty_background: bool
    indexed_utc: str

    @classmethod
    def from_index(cls, row: dict[str, Any]) -> BundleRow:
        out = {k: v for k, v in row.items() if k != "id"}
        out["bundle_id"] = row["id"]
        out["barcodes"] = (row.get("barcodes") or "").split()
        out["rules"] = (row.get("rules") or row.get("rule") or "").split()
        out["empty_background"] = bool(row.get("empty_background"))
        return cls.model_validate(out)


class BundlesResponse(_Out):
    type: Literal["bundles"] = "bundles"
    bundles: list[BundleRow]


class FleetDevice(_Out):
    device_id: str
    last_heartbeat_utc: str
    queue_depth: int | None = None
    disk_used_pct: float | None = None
    last_upload_utc: str | None = None
    model_version: str | None = None
    error: str | None = None


class FleetResponse(_Out):
    type: Literal["fleet"] = "fleet"
    devices: list[FleetDevice]


class IngestResponse(_Out):
    type: Literal["ingest_queue"] = "ingest_queue"
    pending: int
    done: int
    failed: int


class StorageResponse(_Out):
    type: Literal["storage"] = "storage"
    storage: dict[str, int | float | str]


class OkResponse(_Out):
    type: Literal["ok"] = "ok"


class ErrorResponse(_Out):
    type: Literal["error"] = "error"
    error: str


class DeviceRecord(_Out):
    """``capsight-sink device add|list --json``: one per device (the token only on ``add``)."""

    type: Literal["device"] = "device"
    device_id: str
    admin: bool
    created_utc: str | None = None
    revoked_utc: str | None = None
    token: str | None = None


class SinkDoctorRecord(_Out):
    """``capsight-sink doctor --json``: after one ``check`` record per check (the cart
    doctor's record), this summary."""

    type: Literal["sink_doctor"] = "sink_doctor"
    data: str
    ok: bool
    checks: int
    failed: list[str]


class RegistryImportRecord(_Out):
    """``capsight-sink model import --json``: what the ML team's folder brought in."""

    type: Literal["registry_import"] = "registry_import"
    root_version: int
    targets_version: int
    models: list[str]
    files_copied: int


class MigrateRecord(_Out):
    """``capsight-sink migrate --json``: one per database of the sink."""

    type: Literal["migrate"] = "migrate"
    database: str
    version_before: int
    version_after: int


class PrelabelRecord(_Out):
    """``capsight-sink prelabel --json``."""

    type: Literal["prelabel_report"] = "prelabel_report"
    bundles: int
    skipped_empty: int
    failed: dict[str, str]
    moments: int
    empty_frames: int
    items: int
    #: the items' track frames (labelled with their item when exported)
    track_frames: int
    by_state: dict[str, int]
    decode_s: float
    model_s: float
    model_frames: int
    write_s: float
    total_s: float
    model_frames_per_s: float | None
    frames_per_s: float | None


class AuditRecord(_Out):
    """``capsight-sink audit --json``: this run's figures and the running totals."""

    type: Literal["audit_report"] = "audit_report"
    checked: int
    flagged: int
    by_reason: dict[str, int]
    flagged_total: int
    reviewed_again: int
    changed: int


class DatasetRecord(_Out):
    """``capsight-sink export --json``."""

    type: Literal["dataset"] = "dataset"
    name: str
    version: int
    path: str
    items: int
    splits: dict[str, int]
    stores: dict[str, str]
    digest: str
    #: with a bundle selection (--rule, --since, --max-bundles): how many bundles it held, and
    #: their bytes as uploaded (what the data cost to collect)
    bundles: int | None = None
    bundle_bytes: int | None = None


class ModelChannelRecord(_Out):
    """``capsight-sink model promote|rollback|ls --json``: what a channel offers."""

    type: Literal["model_channel"] = "model_channel"
    channel: str
    name: str | None
    version: str | None
    rollout_pct: int | None
    sequence: int | None
    updated_utc: str | None
    by: str | None


class PublishedModelRecord(_Out):
    """``capsight-sink model ls --json``: one per model the ML team published."""

    type: Literal["published_model"] = "published_model"
    name: str
    version: str
    path: str
    length: int
    precision: str | None = None
    accuracy: float | None = None


class Candidate(_Out):
    source: str
    sku: str
    score: float
    box: list[int] | None
    model_version: str
    detail: str


class TrackFrame(_Out):
    t_ns: int
    frame_key: str
    frame_sha256: str
    box: list[int] | None


class LabelItem(_Out):
    """One frame to label (``cloud_sink.labels``): its pre-label, state and version."""

    item_id: str
    device_id: str
    bundle_id: str
    store_id: str
    t_ns: int
    t_utc: str
    frame_key: str
    frame_sha256: str
    width: int
    height: int
    state: Literal[
        "unlabelled", "prelabelled", "quick_confirm", "needs_review", "reviewed", "rejected"
    ]
    version: int
    sku: str | None
    box: list[int] | None
    source: str
    model_version: str
    score: float
    candidates: list[Candidate]
    moment: dict[str, Any]
    #: the other frames of the moment, labelled with the item when exported
    track: list[TrackFrame]
    reviewer: str
    review_s: float
    flagged: str
    updated_utc: str


class LabelEvent(_Out):
    seq: int
    item_id: str
    at_utc: str
    who: str
    action: str
    from_state: str
    to_state: str
    seconds: float
    detail: dict[str, Any]


class LabelsResponse(_Out):
    type: Literal["labels"] = "labels"
    items: list[LabelItem]
    counts: dict[str, int]


class LabelResponse(_Out):
    type: Literal["label"] = "label"
    item: LabelItem
    history: list[LabelEvent]


class CatalogueResponse(_Out):
    type: Literal["catalogue"] = "catalogue"
    products: list[dict[str, str]]


class SensorSeriesResponse(_Out):
    type: Literal["sensor_series"] = "sensor_series"
    start_ns: int
    duration_s: float
    weight_g: list[list[float]]
    accel_g: list[list[float]]
    position_mm: list[list[float]]
    events: list[dict[str, Any]]


RESPONSES: tuple[type[BaseModel], ...] = (
    BundlesResponse,
    FleetResponse,
    IngestResponse,
    StorageResponse,
    OkResponse,
    ErrorResponse,
    DeviceRecord,
    PrelabelRecord,
    AuditRecord,
    DatasetRecord,
    ModelChannelRecord,
    PublishedModelRecord,
    RegistryImportRecord,
    LabelsResponse,
    LabelResponse,
    CatalogueResponse,
    SensorSeriesResponse,
)


def write_schemas(folder: Any) -> list[Any]:
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for model in RESPONSES:
        name = str(model.model_fields["type"].default)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "schemas/api"):
        print(p)
