"""Property tests of everything the sink parses from a device: whatever comes in, the parser
answers with a value or with its own error, never with anything else (which would be a 500)."""

from __future__ import annotations

import base64
import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from capsight_edge.bundle.manifest import Manifest, ManifestError
from capsight_edge.sensors.sensorlog import SensorLog, SensorLogError, iter_messages_bounded
from cloud_sink.schemas import Heartbeat, parse_sensor_message
from cloud_sink.tus import TusError, int_header, parse_metadata

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)


@FAST
@given(st.text(max_size=300))
def test_metadata_parser_answers_a_dict_or_a_tus_error(header: str) -> None:
    try:
        out = parse_metadata(header)
    except TusError as exc:
        assert exc.status in (400, 413)
        return
    assert len(out) <= 16
    assert all(v.isprintable() for v in out.values())


@FAST
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
        st.text(max_size=50),
        max_size=10,
    )
)
def test_metadata_round_trips(pairs: dict[str, str]) -> None:
    header = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in pairs.items()
    )
    out = parse_metadata(header)
    for k, v in pairs.items():
        clean = "".join(c for c in v if c.isprintable())
        if k not in ("filename", "name"):
            assert out[k] == clean


@FAST
@given(st.text(max_size=40))
def test_tus_numbers_are_ascii_digits_or_a_400(raw: str) -> None:
    try:
        value = int_header(raw, "Upload-Length")
    except TusError as exc:
        assert exc.status == 400
        return
    assert value is not None and 0 <= value < 2**63 and raw.isascii() and raw.isdigit()


@FAST
@given(json_values)
def test_manifest_parser_answers_a_manifest_or_a_manifest_error(value: object) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    with contextlib.suppress(ManifestError):
        Manifest.from_json(text)


@FAST
@given(st.binary(max_size=400))
def test_manifest_parser_takes_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        Manifest.from_json(data)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["queue_depth", "disk_used_pct", "last_upload_utc", "model_version", "x"]),
        json_values,
        max_size=4,
    )
)
def test_heartbeats_are_finite_and_bounded_or_refused(body: dict[str, object]) -> None:
    try:
        beat = Heartbeat.model_validate_json(json.dumps(body))
    except (ValidationError, ValueError):
        return
    if beat.disk_used_pct is not None:
        assert math.isfinite(beat.disk_used_pct) and 0 <= beat.disk_used_pct <= 100
    assert beat.model_version is None or len(beat.model_version) <= 128
    json.dumps(beat.model_dump(), allow_nan=False)  # the fleet page can always be written


@FAST
@given(st.binary(max_size=300))
def test_sensor_messages_parse_or_say_why(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_sensor_message(data)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = Path(tmp_path_factory.mktemp("mcap")) / "s.mcap"
    with SensorLog(path) as log:
        for i in range(50):
            log.add("/weight/fused", 10**9 + i * 12_500_000, grams=float(i), stable=True)
        log.event("/weight/events", 10**9, {"kind": "item_added", "delta_g": 10.0})
    return path.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_a_mangled_sensor_log_reads_or_is_refused(
    small_log: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(small_log)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(raw)))
    path = tmp_path / "m.mcap"
    path.write_bytes(bytes(raw[:cut]))
    try:
        for _ in iter_messages_bounded(
            path, max_chunk_bytes=1 << 20, max_message_bytes=1 << 16, max_messages=10_000
        ):
            pass
    except SensorLogError:
        pass
