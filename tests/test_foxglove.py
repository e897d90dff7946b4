"""A captured bundle opens in Foxglove: the sink serves it as one MCAP with the clip as
foxglove.CompressedVideo (Annex B, SPS/PPS on key frames) and the sensor channels, on UTC log
times that match the manifest."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import av
import httpx
import pytest
from mcap.reader import make_reader

from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, Manifest
from cloud_sink.foxglove import VIDEO_TOPIC, utc_ns_of
from tests.conftest import start_run
from tests.sink_helpers import Sink
from tests.test_sink_ingest import ingested, upload

pytestmark = pytest.mark.usefixtures("sink_backend")  # SQLite, then PostgreSQL


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real bundle from `capsight run` on the simulated cart (manual trigger)."""
    data = tmp_path_factory.mktemp("cart")
    from tests.test_run_cli import send_manual_trigger

    proc = start_run(data, "--duration", "9", stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # run_started
    send_manual_trigger(data, "foxglove")
    proc.communicate(timeout=120)
    bundles = sorted(p for p in (data / "bundles").iterdir() if p.name != ".partial")
    assert bundles
    return bundles[0]


def test_the_sink_serves_a_bundle_for_foxglove(captured: Path, tmp_path: Path) -> None:
    manifest = Manifest.from_json((captured / MANIFEST).read_bytes())
    s = Sink(tmp_path / "sink")
    cart = s.add_device(manifest.device_id)
    admin = s.add_device("ops", admin=True)
    s.start()
    try:
        for name in (CLIP, SENSORS, MANIFEST):
            upload(s, cart, captured / name, manifest.bundle_id)
        ingested(s, admin)
        url = f"{s.url}/api/bundles/{manifest.device_id}/{manifest.bundle_id}.mcap"
        assert httpx.get(url, headers={"Authorization": f"Bearer {cart}"}).status_code == 403
        missing = url.replace(manifest.bundle_id, "20990101T000000Z-nope-0001")
        assert httpx.get(missing, headers={"Authorization": f"Bearer {admin}"}).status_code == 404
        r = httpx.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        assert r.status_code == 200, r.text
        out = tmp_path / "bundle.mcap"
        out.write_bytes(r.content)
    finally:
        s.stop()

    with out.open("rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        assert summary is not None
        schemas = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        assert schemas[VIDEO_TOPIC] == "foxglove.CompressedVideo"
        assert "/weight/fused" in schemas and "/sim/truth" in schemas
        frames, times = [], []
        for _schema, channel, message in reader.iter_messages(log_time_order=False):
            times.append(message.log_time)
            if channel.topic == VIDEO_TOPIC:
                frames.append((message.log_time, json.loads(message.data)))
    start, end = utc_ns_of(manifest.start_utc), utc_ns_of(manifest.end_utc)
    # UTC log times (not 1970), inside the clip's span (the manifest's UTC has ms precision),
    # in order.
    assert times == sorted(times)
    assert all(start - 10**6 <= t <= end + 10**6 for t in times)
    assert manifest.video is not None and len(frames) == manifest.video.frames
    first = frames[0][1]
    assert first["format"] == "h264"
    assert first["timestamp"]["sec"] * 10**9 + first["timestamp"]["nsec"] == frames[0][0]
    key = base64.b64decode(first["data"])
    nal_types = {
        b & 0x1F
        for b in (key[i + 4] for i in range(len(key) - 4) if key[i : i + 4] == b"\x00\x00\x00\x01")
    }
    assert {7, 8, 5} <= nal_types  # SPS, PPS and an IDR slice, Annex B start codes
    # Each message is one whole frame: fed one by one, they decode to as many pictures.
    codec = av.CodecContext.create("h264", "r")
    decoded = 0
    for _t, f in frames:
        decoded += len(codec.decode(av.Packet(base64.b64decode(f["data"]))))
    decoded += len(codec.decode(None))
    assert decoded == len(frames)


@pytest.mark.one_database  # the cart's file alone: no sink
def test_the_carts_sensor_log_carries_the_utc_mapping(captured: Path) -> None:
    manifest = Manifest.from_json((captured / MANIFEST).read_bytes())
    with (captured / SENSORS).open("rb") as fh:
        meta = {m.name: m.metadata for m in make_reader(fh).iter_metadata()}
    offset = int(meta["capsight"]["utc_offset_ns"])
    assert abs(manifest.start_ns + offset - utc_ns_of(manifest.start_utc)) < 2 * 10**6
