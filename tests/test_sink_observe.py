"""What an operator sees of a running sink: a start line, one access line per request and one
per ingest (human or JSON), and Prometheus metrics at /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bundles import make_bundle
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS
from tests.conftest import wait_until
from tests.sink_helpers import Sink, tus_headers
from tests.test_sink_ingest import ingested, upload

pytestmark = pytest.mark.usefixtures("sink_backend")  # on SQLite, then PostgreSQL


def metrics(s: Sink, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(s.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_logs_and_metrics(tmp_path: Path) -> None:
    log = tmp_path / "sink.log"
    s = Sink(tmp_path / "sink", "--log-format", "json", log=log)
    cart, admin = s.add_device("cart-a"), s.add_device("ops", admin=True)
    s.start()
    try:
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert (
            httpx.get(s.url + "/metrics", headers={"Authorization": f"Bearer {cart}"}).status_code
            == 403
        )
        folder = make_bundle(tmp_path / "b", "obs-1")
        sizes = 0
        for name in (CLIP, SENSORS, MANIFEST):
            upload(s, cart, folder / name, "obs-1")
            sizes += (folder / name).stat().st_size
        ingested(s, admin)
        # Hostile paths do not make series: they all count as route "other".
        for i in range(50):
            httpx.get(f"{s.url}/nope/{i}")
        # An upload created and not finished is "in progress".
        r = httpx.post(s.url + "/files/", headers=tus_headers(cart, **{"Upload-Length": "10"}))
        assert r.status_code == 201
        m = metrics(s, admin)
    finally:
        s.stop()
    post = (("method", "POST"), ("route", "/files/"), ("status", "201"))
    assert m[("capsight_sink_requests_total", post)] == 4
    assert (
        m[
            (
                "capsight_sink_requests_total",
                (("method", "GET"), ("route", "other"), ("status", "404")),
            )
        ]
        == 50
    )
    routes = {dict(labels).get("route") for (name, labels) in m if "requests" in name}
    assert routes <= {
        "/files/",
        "/files/{upload_id}",
        "/api/ingest",
        "/metrics",
        "other",
        "/healthz",
        None,
    }
    assert m[("capsight_sink_received_bytes_total", ())] >= sizes
    assert m[("capsight_sink_ingested_total", (("result", "ok"),))] == 1
    assert m[("capsight_sink_ingested_total", (("result", "waiting"),))] == 2
    assert m[("capsight_sink_ingest_failures_total", (("reason", "corrupt"),))] == 0
    assert m[("capsight_sink_ingest_queue_depth", ())] == 0
    assert m[("capsight_sink_uploads_in_progress", ())] == 1
    assert m[("capsight_sink_devices_active", ())] == 2

    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert all({"ts", "level", "component", "msg"} <= set(x) for x in lines)
    assert any("serving http://127.0.0.1" in x["msg"] for x in lines)  # the start line
    access = [x for x in lines if x["component"] == "sink.access"]
    assert len(access) >= 4 + 50
    created = [x for x in access if x["route"] == "/files/" and x["status"] == 201]
    assert len(created) == 4 and all(x["bytes_in"] >= 0 and x["ms"] >= 0 for x in created)
    ingests = [x for x in lines if x["component"] == "sink.ingest" and "result" in x]
    assert [x["result"] for x in ingests] == ["waiting", "waiting", "ok"]
    assert {x["bundle_id"] for x in ingests} == {"obs-1"} and ingests[-1]["device_id"] == "cart-a"


def test_human_logs_by_default(tmp_path: Path) -> None:
    log = tmp_path / "sink.log"
    s = Sink(tmp_path / "sink", log=log).start()
    try:
        httpx.get(s.url + "/healthz")
    finally:
        s.stop()
    assert wait_until(lambda: "GET /healthz 200" in log.read_text())
    text = log.read_text()
    assert "serving http://127.0.0.1" in text and not text.lstrip().startswith("{")
