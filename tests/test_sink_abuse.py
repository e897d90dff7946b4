"""The sink against a hostile or broken device: one test (at least) for every way the issue
found to hurt it, run against a real `capsight-sink serve` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.abuse import (
    OCTETS,
    TUS,
    manifest_of,
    mcap_bomb,
    metadata,
    nested_json,
    sink_rss_peak_kb,
    upload,
    upload_bundle_file,
    zstd_bomb,
)
from benchmarks.bundles import make_bundle
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS
from tests.conftest import wait_until
from tests.sink_helpers import BACKEND, Sink, api_json, sink_cli, sink_db, sink_index

CONFIG = """
[quotas]
uploads_in_progress = 6
bytes_in_progress = 50000000
creates_per_minute = 40
metadata_bytes = 2048

[timeouts]
body_stall_s = 1.0
header_s = 1.5
lock_wait_s = 3.0

[sweep]
interval_s = 0.5
keep_corrupt_hours = 1.0
"""


class Abused:
    def __init__(self, root: Path, *serve: str) -> None:
        self.data = root / "sink"
        (root / "sink.toml").write_text(CONFIG)
        self.sink = Sink(self.data, "--config", str(root / "sink.toml"), *serve)
        self.admin = json.loads(
            sink_cli("device", "add", "ops", "--admin", "--json", "--data", str(self.data)).stdout
        )["token"]
        self.sink.start()
        self.url = self.sink.url

    def device(self, name: str) -> str:
        return self.sink.add_device(name)

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {self.admin}"}
        )

    def bundle(self, bundle_id: str, device: str) -> dict[str, object] | None:
        assert self.sink.wait_ingested(60)
        rows = self.get("/api/bundles", device=device, limit="1000").json()["bundles"]
        return next((r for r in rows if r["bundle_id"] == bundle_id), None)

    @property
    def uploads(self) -> Path:
        return self.data / "blobs" / "uploads"

    def upload_area(self) -> tuple[int, list[str]]:
        files = list(self.uploads.iterdir())
        return sum(f.stat().st_size for f in files), [f.name for f in files]


pytestmark = pytest.mark.usefixtures("sink_backend")  # every test on SQLite, then PostgreSQL


@pytest.fixture(scope="module")
def abused(tmp_path_factory: pytest.TempPathFactory, sink_backend: str) -> Iterator[Abused]:
    a = Abused(tmp_path_factory.mktemp("abuse"))
    yield a
    a.sink.stop()


def send_bundle(a: Abused, token: str, folder: Path, bid: str, **manifest: object) -> None:
    for name in (CLIP, SENSORS):
        assert (
            upload_bundle_file(a.url, token, bid, name, (folder / name).read_bytes()).status_code
            == 201
        )
    body = manifest_of(folder, **manifest) if manifest else (folder / MANIFEST).read_bytes()
    assert upload_bundle_file(a.url, token, bid, MANIFEST, body).status_code == 201


# -- decompression bombs ----------------------------------------------------------------------
@pytest.mark.one_database
def test_a_zstd_bomb_never_decodes_past_what_the_manifest_states(
    abused: Abused, tmp_path: Path
) -> None:
    a, tok = abused, abused.device("bomber-z")
    folder = make_bundle(tmp_path / "z", "zb-1", "bomber-z")
    bomb = zstd_bomb(2 << 30)  # 2 GiB of zeros in about 65 KB
    assert len(bomb) < 100_000
    # The manifest states the sensor log's true size: the bomb is cut off right there.
    upload_bundle_file(a.url, tok, "zb-1", CLIP, (folder / CLIP).read_bytes())
    upload_bundle_file(a.url, tok, "zb-1", SENSORS, bomb, "zstd")
    upload_bundle_file(a.url, tok, "zb-1", MANIFEST, (folder / MANIFEST).read_bytes())
    row = a.bundle("zb-1", "bomber-z")
    assert row is not None and row["status"] == "corrupt"
    assert "decompresses to more than" in str(row["reason"])
    # A manifest that claims 2 GiB for it is refused before a byte is decoded.
    upload_bundle_file(a.url, tok, "zb-2", CLIP, (folder / CLIP).read_bytes())
    upload_bundle_file(a.url, tok, "zb-2", SENSORS, bomb, "zstd")
    upload_bundle_file(
        a.url,
        tok,
        "zb-2",
        MANIFEST,
        manifest_of(folder, bundle_id="zb-2", files__sensors_mcap__bytes=2 << 30),
    )
    row = a.bundle("zb-2", "bomber-z")
    assert row is not None and row["status"] == "corrupt" and "limit" in str(row["reason"])
    # The manifest itself as a bomb: cut at the manifest limit. A compressed clip: refused.
    upload_bundle_file(a.url, tok, "zb-3", MANIFEST, bomb, "zstd")
    row = a.bundle("zb-3", "bomber-z")
    assert row is not None and "manifest.json: decompresses to more than" in str(row["reason"])
    upload_bundle_file(a.url, tok, "zb-4", CLIP, bomb, "zstd")
    upload_bundle_file(a.url, tok, "zb-4", SENSORS, (folder / SENSORS).read_bytes())
    upload_bundle_file(a.url, tok, "zb-4", MANIFEST, manifest_of(folder, bundle_id="zb-4"))
    row = a.bundle("zb-4", "bomber-z")
    assert row is not None and "never accepted compressed" in str(row["reason"])
    # Nothing decoded is left behind, and the upload area never held more than the uploads.
    size, names = a.upload_area()
    assert not [n for n in names if n.endswith(".decoded")]
    assert size < 5_000_000


@pytest.mark.one_database
def test_a_sensor_log_chunk_bomb_is_corrupt_and_memory_stays_flat(tmp_path: Path) -> None:
    a = Abused(tmp_path)  # a sink of its own: its peak memory is this test's
    try:
        tok = a.device("bomber-m")
        folder = make_bundle(tmp_path / "m", "mb-1", "bomber-m")
        # An honest bundle first: the sink's peak after loading its decoders is the baseline.
        send_bundle(a, tok, make_bundle(tmp_path / "w", "warm-1", "bomber-m"), "warm-1")
        assert a.bundle("warm-1", "bomber-m")["status"] == "ok"  # type: ignore[index]
        base_kb = sink_rss_peak_kb(a.sink.pid)
        for bid, claimed in (("mb-1", 64 * 1024), ("mb-2", None)):
            bomb = mcap_bomb(256 << 20, claimed=claimed)  # 8 KB that decode to 256 MiB
            (folder / SENSORS).write_bytes(bomb)
            from capsight_edge.bundle.manifest import sha256_file

            info = sha256_file(folder / SENSORS)
            upload_bundle_file(a.url, tok, bid, CLIP, (folder / CLIP).read_bytes())
            upload_bundle_file(a.url, tok, bid, SENSORS, bomb)
            upload_bundle_file(
                a.url,
                tok,
                bid,
                MANIFEST,
                manifest_of(
                    folder,
                    bundle_id=bid,
                    files__sensors_mcap__bytes=info.bytes,
                    files__sensors_mcap__sha256=info.sha256,
                ),
            )
            row = a.bundle(bid, "bomber-m")
            assert row is not None and row["status"] == "corrupt", row
            assert "sensors.mcap: a chunk" in str(row["reason"])
        grown_mb = (sink_rss_peak_kb(a.sink.pid) - base_kb) / 1024
        assert grown_mb < 60, f"the sink's peak memory grew by {grown_mb:.0f} MB"
    finally:
        a.sink.stop()


# -- bundles never stuck ------------------------------------------------------------------------
@pytest.mark.one_database
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("nested", "manifest"),
        ("huge_number", "files.clip.mp4.bytes"),
        ("string_number", "priority"),
        ("bad_messages", "sensors.mcap: message"),
    ],
)
def test_a_broken_bundle_ends_corrupt_and_a_corrected_one_is_accepted(
    abused: Abused, tmp_path: Path, case: str, reason: str
) -> None:
    a, tok = abused, abused.device(f"broken-{case.replace('_', '-')}")
    dev = f"broken-{case.replace('_', '-')}"
    bid = f"st-{case.replace('_', '-')}"
    folder = make_bundle(tmp_path / "b", bid, dev)
    good_manifest = (folder / MANIFEST).read_bytes()
    sensors = (folder / SENSORS).read_bytes()
    if case == "bad_messages":
        from capsight_edge.bundle.manifest import Manifest, sha256_file
        from capsight_edge.sensors.sensorlog import SensorLog

        with SensorLog(tmp_path / "bad.mcap") as log:
            log.event("/weight/events", 10**9, {"kind": 123, "delta_g": "much"})
        bad = (tmp_path / "bad.mcap").read_bytes()
        m = Manifest.from_json(good_manifest)
        m.files[SENSORS] = sha256_file(tmp_path / "bad.mcap")
        broken, sensors_sent = m.to_json().encode(), bad
    else:
        broken = {
            "nested": nested_json(100_000),
            "huge_number": good_manifest.replace(b'"bytes": ', b'"bytes": 1e400, "x": ', 1),
            "string_number": good_manifest.replace(b'"priority": 3', b'"priority": "3"'),
        }[case]
        sensors_sent = sensors
    upload_bundle_file(a.url, tok, bid, CLIP, (folder / CLIP).read_bytes())
    r = upload_bundle_file(a.url, tok, bid, SENSORS, sensors_sent)
    r = upload_bundle_file(a.url, tok, bid, MANIFEST, broken)
    assert r.status_code == 201  # the upload itself is fine: ingest judges the bundle
    row = a.bundle(bid, dev)
    assert row is not None and row["status"] == "corrupt" and reason in str(row["reason"]), row
    assert str(a.data) not in str(row["reason"])  # no server path in what operators see
    # The cart sends the right files again: the bundle is accepted.
    if case == "bad_messages":
        upload_bundle_file(a.url, tok, bid, SENSORS, sensors)
    upload_bundle_file(a.url, tok, bid, MANIFEST, good_manifest)
    row = a.bundle(bid, dev)
    assert row is not None and row["status"] == "ok", row


# -- strict types, bounded bodies --------------------------------------------------------------
@pytest.mark.one_database
@pytest.mark.parametrize(
    "body",
    [
        b'{"queue_depth": NaN}',
        b'{"disk_used_pct": Infinity}',
        b'{"queue_depth": 1e400}',
        b'{"queue_depth": "4"}',
        b'{"unknown": 1}',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_bad_heartbeats_are_refused_and_the_fleet_page_keeps_working(
    abused: Abused, body: bytes
) -> None:
    tok = abused.device(f"hb-{abs(hash(body)) % 10**6}")
    r = httpx.post(
        abused.url + "/api/heartbeat", content=body, headers={"Authorization": f"Bearer {tok}"}
    )
    assert r.status_code == 400 and "malformed heartbeat" in r.json()["error"]
    assert abused.get("/api/fleet").status_code == 200


def test_a_fleet_page_survives_rows_written_before_validation(abused: Abused) -> None:
    tok = abused.device("legacy-hb")
    db = sink_db(abused.data)
    db._exec(
        "INSERT INTO heartbeats VALUES ('legacy-hb', '2026-01-01T00:00:00Z', ?)",
        ('{"queue_depth": NaN, "disk_used_pct": Infinity}',),
    )
    db.close()
    sink_cli("device", "revoke", "legacy-hb", "--data", str(abused.data))
    r = abused.get("/api/fleet")
    assert r.status_code == 200
    (row,) = [d for d in r.json()["devices"] if d["device_id"] == "legacy-hb"]
    assert row["error"] == "an unreadable heartbeat"
    assert tok


@pytest.mark.one_database
def test_heartbeat_bodies_are_bounded(abused: Abused) -> None:
    tok = abused.device("hb-big")
    auth = {"Authorization": f"Bearer {tok}"}
    big = json.dumps({"model_version": "x" * 200_000}).encode()
    r = httpx.post(abused.url + "/api/heartbeat", content=big, headers=auth)
    assert r.status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: the body is cut while it streams
        yield b'{"model_version": "'
        for _ in range(100):
            yield b"y" * 10_000

    r = httpx.post(abused.url + "/api/heartbeat", content=chunked(), headers=auth)
    assert r.status_code == 413
    long = httpx.post(
        abused.url + "/api/heartbeat", json={"model_version": "v" * 129}, headers=auth
    )
    assert long.status_code == 400


@pytest.mark.one_database
@pytest.mark.parametrize(
    ("header", "value"),
    [("Upload-Length", "9" * 5000), ("Upload-Length", "\u00b2"), ("Upload-Length", "1\u00b9")],
)
def test_tus_numbers_are_ascii_digits_of_bounded_length(
    abused: Abused, header: str, value: str
) -> None:
    tok = abused.device(f"digits-{abs(hash(value)) % 10**6}")
    r = httpx.post(
        abused.url + "/files/",
        # Latin-1 on the wire: b"\xb2" is what the server reads as "²" (isdigit() takes it).
        headers={**TUS, "Authorization": f"Bearer {tok}", header: value.encode("latin-1")},
    )
    assert r.status_code == 400


def test_api_parameters_are_validated(abused: Abused) -> None:
    for params in (
        {"limit": "0"},
        {"limit": "-5"},
        {"limit": "1001"},
        {"since": "yesterday"},
        {"barcode": "%"},
        {"status": "weird"},
        {"nonsense": "1"},
    ):
        r = abused.get("/api/bundles", **params)
        assert r.status_code == 400, params
    fts = abused.get("/api/bundles", q='"')
    if BACKEND.server is None:  # SQLite's FTS5 syntax: a malformed query, said in our words
        assert fts.status_code == 400 and "fts5" not in fts.text and "syntax" not in fts.text
    else:  # PostgreSQL's web-search syntax reads any text as a query
        assert fts.status_code == 200 and fts.json()["bundles"] == []


# -- quotas -----------------------------------------------------------------------------------
def test_per_device_quotas_answer_429_with_retry_after(abused: Abused) -> None:
    tok = abused.device("greedy")
    auth = {**TUS, "Authorization": f"Bearer {tok}"}

    def create(length: int) -> httpx.Response:
        return httpx.post(abused.url + "/files/", headers={**auth, "Upload-Length": str(length)})

    made = [create(1000) for _ in range(6)]
    assert all(r.status_code == 201 for r in made)
    over = create(1000)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
    for r in made:  # finish them: room again
        httpx.delete(r.headers["Location"], headers=auth)
    too_much = create(49_000_000)
    assert too_much.status_code == 201
    assert create(2_000_000).status_code == 429  # bytes in progress
    assert create(60_000_000).status_code == 413  # could never fit
    httpx.delete(too_much.headers["Location"], headers=auth)
    # Creations per minute: 40 at most, however quickly they are finished.
    codes = []
    for _ in range(40):
        r = create(10)
        codes.append(r.status_code)
        if r.status_code == 201:
            httpx.delete(r.headers["Location"], headers=auth)
    assert 429 in codes
    limited = next(r for r in (create(10),) if r.status_code == 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 61


@pytest.mark.one_database
def test_creations_at_once_get_no_more_than_the_quota(abused: Abused) -> None:
    """Sixteen creations sent at once by one device: six (its quota of uploads in progress)
    are made, the rest answered 429. The check and the new row used to be apart, and
    creations at the same moment all passed the check."""
    import asyncio

    tok = abused.device("crowd")
    auth = {**TUS, "Authorization": f"Bearer {tok}", "Upload-Length": "1000"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=abused.url, timeout=30) as client:
            return list(
                await asyncio.gather(*(client.post("/files/", headers=auth) for _ in range(16)))
            )

    answers = asyncio.run(burst())
    made = [r for r in answers if r.status_code == 201]
    assert sorted(r.status_code for r in answers) == [201] * 6 + [429] * 10
    for r in made:
        httpx.delete(r.headers["Location"], headers=auth)


@pytest.mark.one_database
def test_metadata_is_bounded_and_unambiguous(abused: Abused) -> None:
    tok = abused.device("meta")
    auth = {**TUS, "Authorization": f"Bearer {tok}", "Upload-Length": "10"}
    many = ",".join(f"k{i} dg==" for i in range(2_000))  # 17 KB: a head the sink reads
    r = httpx.post(abused.url + "/files/", headers={**auth, "Upload-Metadata": many})
    assert r.status_code == 413 and "Upload-Metadata" in r.text
    pairs = ",".join(f"k{i} dg==" for i in range(20))
    assert (
        httpx.post(abused.url + "/files/", headers={**auth, "Upload-Metadata": pairs}).status_code
        == 400
    )
    twice = metadata(filename="a") + "," + metadata(filename="b")
    assert (
        httpx.post(abused.url + "/files/", headers={**auth, "Upload-Metadata": twice}).status_code
        == 400
    )


@pytest.mark.one_database
def test_a_head_over_the_limit_is_431_however_tcp_cuts_it(abused: Abused) -> None:
    """90 KB of headers, over the 64 KiB default: answered 431 whether the head arrives in one
    piece or in 1 KiB pieces, and the client reads the answer (no connection reset)."""
    tok = abused.device("bighead")
    port = int(abused.url.rsplit(":", 1)[1])
    many = ",".join(f"k{i} dg==" for i in range(10_000))
    head = (
        f"POST /files/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Length: 10\r\nUpload-Metadata: {many}\r\n\r\n"
    ).encode()
    assert len(head) > 64 * 1024
    for piece in (len(head), 1024):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for i in range(0, len(head), piece):
                    s.sendall(head[i : i + piece])
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 431"), (piece, answer[:80])
            assert b"over 65536 bytes" in answer
        finally:
            s.close()
    r = httpx.post(
        abused.url + "/files/",
        headers={**TUS, "Authorization": f"Bearer {tok}", "Upload-Length": "10"},
    )
    assert r.status_code == 201  # the sink is well and the device not penalised


# -- space given back ---------------------------------------------------------------------------
def test_a_stored_bundle_leaves_the_upload_area(abused: Abused, tmp_path: Path) -> None:
    tok = abused.device("tidy")
    folder = make_bundle(tmp_path / "t", "tidy-1", "tidy")
    before = set(abused.upload_area()[1])
    send_bundle(abused, tok, folder, "tidy-1")
    row = abused.bundle("tidy-1", "tidy")
    assert row is not None and row["status"] == "ok"
    assert set(abused.upload_area()[1]) <= before  # all three uploads gone from there
    storage = api_json(abused.get("/api/storage"))["storage"]
    assert storage["returned_after_ingest_bytes"] > 0 and storage["sweeps"] >= 1


def test_expired_uploads_are_swept_while_running_and_at_start(tmp_path: Path) -> None:
    a = Abused(tmp_path, "--expire-hours", "0.0005")  # 1.8 s
    try:
        tok = a.device("slow")
        auth = {**TUS, "Authorization": f"Bearer {tok}"}
        r = httpx.post(a.url + "/files/", headers={**auth, "Upload-Length": "100"})
        upload_id = r.headers["Location"].rsplit("/", 1)[1]
        assert (a.uploads / upload_id).exists()
        assert wait_until(lambda: not (a.uploads / upload_id).exists(), timeout_s=15)
        assert httpx.head(r.headers["Location"], headers=auth).status_code == 410
        assert api_json(a.get("/api/storage"))["storage"]["expired_removed"] >= 1
        r2 = httpx.post(a.url + "/files/", headers={**auth, "Upload-Length": "100"})
        second = r2.headers["Location"].rsplit("/", 1)[1]
        a.sink.kill()
        time.sleep(2.0)  # let it expire while no sink runs
        a.sink.start()
        assert wait_until(lambda: not (a.uploads / second).exists(), timeout_s=10)
    finally:
        a.sink.stop()


def test_the_sweep_removes_a_corrupt_bundles_uploads_after_their_keep_time(
    tmp_path: Path,
) -> None:
    from cloud_sink.config import Sweep
    from cloud_sink.sweep import Sweeper

    a = Abused(tmp_path)
    try:
        tok = a.device("keeper")
        r = upload_bundle_file(a.url, tok, "cx-1", MANIFEST, b"not json at all")
        assert a.bundle("cx-1", "keeper")["status"] == "corrupt"  # type: ignore[index]
        upload_id = r.headers["Location"].rsplit("/", 1)[1]
    finally:
        a.sink.stop()
    db, index = sink_db(a.data), sink_index(a.data)
    sweeper = Sweeper(db, index, a.uploads, Sweep(keep_corrupt_hours=1.0))
    sweeper.sweep()
    assert (a.uploads / upload_id).exists()  # kept for an operator to look at
    figures = sweeper.sweep(now=time.time() + 3601)
    assert not (a.uploads / upload_id).exists() and figures.completed_removed == 1
    assert figures.bytes_returned == len(b"not json at all")
    db.close()


def test_a_delete_of_a_finished_upload_leaves_its_bundle_to_ingest(tmp_path: Path) -> None:
    """tus lets a client DELETE an upload it finished; its bytes belong to ingest by then, so
    the sweep must not take them before the bundle is stored."""
    from cloud_sink.config import Sweep
    from cloud_sink.sweep import Sweeper

    a = Abused(tmp_path, "--ingest-workers", "0")  # the bundle waits in the ingest queue
    folder = make_bundle(tmp_path / "d", "del-1", "deleter")
    try:
        tok = a.device("deleter")
        locations = []
        for name in (CLIP, SENSORS, MANIFEST):
            r = upload_bundle_file(a.url, tok, "del-1", name, (folder / name).read_bytes())
            assert r.status_code == 201
            locations.append(r.headers["Location"])
        auth = {**TUS, "Authorization": f"Bearer {tok}"}
        for loc in locations:
            assert httpx.delete(loc, headers=auth).status_code == 204
            assert httpx.head(loc, headers=auth).status_code in (404, 410)
    finally:
        a.sink.stop()
    db, index = sink_db(a.data), sink_index(a.data)
    figures = Sweeper(db, index, a.uploads, Sweep()).sweep()
    db.close()
    assert figures.terminated_removed == 0 and figures.bytes_returned == 0
    ids = [loc.rsplit("/", 1)[1] for loc in locations]
    assert all((a.uploads / i).exists() for i in ids)
    a.sink = Sink(a.data, "--config", str(tmp_path / "sink.toml"))  # ingest workers back
    a.sink.start()
    a.url = a.sink.url
    try:
        row = a.bundle("del-1", "deleter")
        assert row is not None and row["status"] == "ok"
        assert wait_until(lambda: not any((a.uploads / i).exists() for i in ids), timeout_s=15)
    finally:
        a.sink.stop()


# -- timeouts -----------------------------------------------------------------------------------
@pytest.mark.one_database
def test_a_stalled_body_releases_the_upload_within_the_stall_time(abused: Abused) -> None:
    tok = abused.device("staller")
    auth = {**TUS, "Authorization": f"Bearer {tok}"}
    r = httpx.post(abused.url + "/files/", headers={**auth, "Upload-Length": "100"})
    loc = r.headers["Location"]
    port = int(abused.url.rsplit(":", 1)[1])
    path = "/files/" + loc.rsplit("/", 1)[1]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
            "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {OCTETS}\r\nContent-Length: 100\r\n\r\n"
        ).encode()
    )  # headers, and no body
    start = time.monotonic()
    try:
        s.settimeout(10)
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4
    finally:
        s.close()
    ok = httpx.patch(
        loc, headers={**auth, "Upload-Offset": "0", "Content-Type": OCTETS}, content=b"x" * 100
    )
    assert ok.status_code == 204  # the lock was released


@pytest.mark.one_database
def test_a_slow_header_connection_is_closed(abused: Abused) -> None:
    port = int(abused.url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    start = time.monotonic()
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - start < 8:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # a header line every half second, forever
            except OSError:
                closed = True
                break
            time.sleep(0.5)
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
                break
            finally:
                s.setblocking(True)
        assert closed and time.monotonic() - start < 4
    finally:
        s.close()


# -- roles and the smaller things ---------------------------------------------------------------
def test_an_admin_is_not_a_device_and_a_device_is_not_an_admin(abused: Abused) -> None:
    admin = {"Authorization": f"Bearer {abused.admin}"}
    r = httpx.post(abused.url + "/files/", headers={**TUS, **admin, "Upload-Length": "10"})
    assert r.status_code == 403
    assert httpx.post(abused.url + "/api/heartbeat", json={}, headers=admin).status_code == 403
    tok = abused.device("plain")
    dev = {"Authorization": f"Bearer {tok}"}
    for path in ("/api/bundles", "/api/fleet", "/api/ingest", "/api/storage"):
        assert httpx.get(abused.url + path, headers=dev).status_code == 403


def test_a_refused_creation_with_upload_leaves_nothing(abused: Abused) -> None:
    tok = abused.device("refused")
    before = set(abused.upload_area()[1])
    r = httpx.post(
        abused.url + "/files/",
        headers={
            **TUS,
            "Authorization": f"Bearer {tok}",
            "Upload-Length": "5",
            "Content-Type": OCTETS,
            "Upload-Checksum": "sha256 " + "A" * 43 + "=",
        },
        content=b"hello",
    )
    assert r.status_code == 460
    assert set(abused.upload_area()[1]) == before
    db = sink_db(abused.data)
    (n,) = db._exec("SELECT COUNT(*) FROM uploads WHERE device = 'refused'").fetchone()
    db.close()
    assert n == 0


def test_a_delete_that_wins_the_race_makes_the_waiting_patch_fail(abused: Abused) -> None:
    tok = abused.device("racer")
    auth = {**TUS, "Authorization": f"Bearer {tok}"}
    loc = httpx.post(abused.url + "/files/", headers={**auth, "Upload-Length": "100"}).headers[
        "Location"
    ]
    port = int(abused.url.rsplit(":", 1)[1])
    path = "/files/" + loc.rsplit("/", 1)[1]
    holder = socket.create_connection(("127.0.0.1", port))  # holds the lock with a slow body
    holder.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTETS}\r\n"
            "Content-Length: 100\r\n\r\n"
        ).encode()
    )
    time.sleep(0.2)
    gone = httpx.delete(loc, headers=auth)  # waits for the lock, then terminates
    holder.close()
    assert gone.status_code == 204
    late = httpx.patch(
        loc, headers={**auth, "Upload-Offset": "0", "Content-Type": OCTETS}, content=b"x" * 100
    )
    assert late.status_code == 404
    assert not (abused.uploads / path.rsplit("/", 1)[1]).exists()


def test_a_revoked_name_comes_back_with_a_new_token(abused: Abused) -> None:
    old = abused.device("phoenix")
    assert sink_cli("device", "revoke", "phoenix", "--data", str(abused.data)).returncode == 0
    res = sink_cli("device", "add", "phoenix", "--json", "--data", str(abused.data))
    assert res.returncode == 0, res.stderr
    new = json.loads(res.stdout)["token"]
    beat = {"queue_depth": 1}
    url = abused.url + "/api/heartbeat"
    assert httpx.post(url, json=beat, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert httpx.post(url, json=beat, headers={"Authorization": f"Bearer {new}"}).status_code == 200
    again = sink_cli("device", "add", "phoenix", "--data", str(abused.data))
    assert again.returncode == 2 and "exists already" in again.stderr


def test_what_the_sink_writes_is_its_own(abused: Abused) -> None:
    tok = abused.device("perms")
    r = upload(abused.url, tok, b"abc", metadata(filename="x.bin"))
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    mode = stat.S_IMODE(os.stat(abused.uploads / upload_id).st_mode)
    assert mode == 0o600
    if BACKEND.server is None:  # on PostgreSQL the database is the server's, not a file here
        assert stat.S_IMODE(os.stat(abused.data / "sink.db").st_mode) & 0o077 == 0
