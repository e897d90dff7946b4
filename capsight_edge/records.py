"""Every JSON record the device CLI writes, declared once (pydantic), so every ``--json`` output
speaks one language:

- JSON Lines: one record per line, every record has a ``type`` (first key);
- one name per concept: ``bundle_id``, ``device_id``, ``store_id``, ``rule``, ``duration_s``;
  sizes in ``*_bytes``, rates in ``*_bps`` (bit/s), shares in ``*_pct``, seconds in ``*_s``;
- times: ``*_utc`` as RFC 3339 (``2026-12-02T21:41:48.123Z``) where a person or another
  machine reads them, next to ``*_ns`` (the host's monotonic clock) where the cart's own
  timeline matters;
- real booleans, real lists, ``null`` for "unknown".

The JSON Schemas in ``schemas/cli/`` are generated from these models (``python -m
capsight_edge.records``); the tests hold every ``--json`` output against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str

    def line(self) -> str:
        return self.model_dump_json()


# -- profile, doctor --------------------------------------------------------------------------
class ProfileRecord(Record):
    type: Literal["profile"] = "profile"
    source_path: str
    profile: dict[str, Any]


class ProfileCheckRecord(Record):
    type: Literal["profile_check"] = "profile_check"
    file: str
    ok: bool
    name: str | None = None
    key: str | None = None
    problem: str | None = None
    expected: str | None = None
    error: str | None = None


class CheckRecord(Record):
    type: Literal["check"] = "check"
    name: str
    status: Literal["pass", "warn", "fail", "skip"]
    detail: str
    remedy: str
    required: bool
    duration_s: float


class DoctorRecord(Record):
    type: Literal["doctor"] = "doctor"
    profile: str
    ok: bool
    checks: int
    failed: list[str]


# -- sensors ------------------------------------------------------------------------------------
class SensorsRecord(Record):
    type: Literal["sensors"] = "sensors"
    t_ns: int
    utc: str
    weight_g: float | None
    stable: bool | None
    stable_weight_g: float | None
    weight_samples: int
    rail_codes: int
    tared: bool
    events: list[dict[str, Any]]
    link: dict[str, Any] | None
    frame_error_rate: float | None
    imu: dict[str, Any] | None = None
    uwb: dict[str, Any] | None = None
    gnss: dict[str, Any] | None = None


class CalibrationRecord(Record):
    type: Literal["calibration"] = "calibration"
    action: Literal["tare", "calibrate"]
    zero_counts: list[float]
    counts_per_gram: list[float]
    file: str


class GpsFixRecord(Record):
    type: Literal["gps_fix"] = "gps_fix"
    file: str
    receiver_time: str
    receiver_date: str | None
    lat: float
    lon: float
    alt_m: float | None
    quality: int
    satellites: int | None
    hdop: float | None
    source: str


class GpsSummaryRecord(Record):
    type: Literal["gps_summary"] = "gps_summary"
    file: str
    sentences: int
    fixes: int
    no_fix: int
    no_fix_reasons: dict[str, int]
    other_sentences: int
    suspect_dates: int
    corrected_dates: int
    rejected: dict[str, int]
    rejected_total: int
    talkers: dict[str, int]
    duration_s: float


# -- camera, triggers ---------------------------------------------------------------------------
class BarcodeRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    text: str
    bbox: list[int]
    confirmed: bool
    gtin: str | None = None
    ais: dict[str, str] = {}
    addon: str | None = None


class BarcodeScanRecord(Record):
    type: Literal["barcode_scan"] = "barcode_scan"
    file: str
    codes: list[BarcodeRead]
    backend: str
    duration_s: float
    width: int
    height: int


class ModelRecord(Record):
    """``capsight model ls|pull|rollback --json``: the cart's model runtime."""

    type: Literal["model"] = "model"
    running: str | None
    sha256: str | None
    providers: list[str]
    last_good: str | None
    channel: str
    registry_url: str
    installed: list[str]
    rejected: int
    pull: str | None = None
    detail: str | None = None


class ErrorRecord(Record):
    type: Literal["error"] = "error"
    file: str | None = None
    error: str


class TriggerDecisionRecord(Record):
    type: Literal["trigger_decision"] = "trigger_decision"
    kind: str
    rule: str
    priority: int
    t_ns: int
    signals: dict[str, bool]
    reason: str
    clip_start_ns: int
    clip_end_ns: int


class TriggerSummaryRecord(Record):
    type: Literal["trigger_summary"] = "trigger_summary"
    frames: int
    skipped: int
    barcodes: int
    fired: int
    suppressed: int
    manual: int


# -- run ------------------------------------------------------------------------------------------
class RunStartedRecord(Record):
    type: Literal["run_started"] = "run_started"
    profile: str
    data_dir: str
    encoder: str
    preroll: str
    sink: str | None


class BundleSealedRecord(Record):
    type: Literal["bundle_sealed"] = "bundle_sealed"
    bundle_id: str
    rule: str
    duration_s: float | None
    frames: int | None
    bytes: int
    path: str
    start_utc: str


class RunSummaryRecord(Record):
    type: Literal["run_summary"] = "run_summary"
    sealed: int
    failed: list[str]
    seal_delay_s: list[float]
    upload: dict[str, Any] | None


# -- journal, queue, uploads -----------------------------------------------------------------------
class StatusRecord(Record):
    type: Literal["status"] = "status"
    data_dir: str
    queue: dict[str, dict[str, Any]]
    disk: dict[str, Any]
    capture_paused: str | None
    last_error: dict[str, str] | None
    upload: dict[str, Any]


class BundleRecord(Record):
    """One bundle of the cart's queue (``queue``, ``queue ls``): the same fields in both."""

    type: Literal["bundle"] = "bundle"
    bundle_id: str
    state: str
    priority: int
    rule: str
    bytes: int
    bytes_sent: int
    rate_bps: int | None = None
    eta_s: float | None = None
    attempts: int
    created_utc: str
    upload_url: str
    last_error: str
    reason: str


class UploadQueueRecord(Record):
    type: Literal["upload_queue"] = "upload_queue"
    uploader: dict[str, Any]
    uploads_held: str | None
    bundles: int
    bytes_left: int
    eta_s: float | None


class UploadProgressRecord(Record):
    type: Literal["upload_progress"] = "upload_progress"
    state: str
    in_flight: list[dict[str, Any]]


class UploadResultRecord(Record):
    type: Literal["upload_result"] = "upload_result"
    uploaded: int
    left: int
    quarantined: list[str]
    bytes_sent: int
    bytes_confirmed: int
    rate_bps: int
    interruptions: int
    retries: int
    state: str
    last_error: str


RECORDS: tuple[type[Record], ...] = (
    ProfileRecord,
    ProfileCheckRecord,
    CheckRecord,
    DoctorRecord,
    SensorsRecord,
    CalibrationRecord,
    GpsFixRecord,
    GpsSummaryRecord,
    BarcodeScanRecord,
    ErrorRecord,
    ModelRecord,
    TriggerDecisionRecord,
    TriggerSummaryRecord,
    RunStartedRecord,
    BundleSealedRecord,
    RunSummaryRecord,
    StatusRecord,
    BundleRecord,
    UploadQueueRecord,
    UploadProgressRecord,
    UploadResultRecord,
)


def record_type(model: type[Record]) -> str:
    return str(model.model_fields["type"].default)


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every record type, by type."""
    return {record_type(m): m.model_json_schema() for m in RECORDS}


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, schema in sorted(schemas().items()):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out


def emit(record: Record) -> None:
    """Write one record as a JSON line on stdout."""
    sys.stdout.write(record.line() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas/cli")
    for p in write_schemas(target):
        print(p)
