"""Ingest and the index API: real bundles uploaded over tus to a real sink."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.bundles import make_bundle
from capsight_edge.bundle.manifest import (
    CLIP,
    MANIFEST,
    SENSORS,
)
from tests.conftest import wait_until
from tests.sink_helpers import BACKEND, Sink, api_json, sink_cli, sink_db, sink_index, tus_headers

OCTETS = {"Content-Type": "application/offset+octet-stream"}


pytestmark = pytest.mark.usefixtures("sink_backend")  # every test on SQLite, then PostgreSQL


@pytest.fixture(scope="module")
def sink(
    tmp_path_factory: pytest.TempPathFactory, sink_backend: str
) -> Iterator[tuple[Sink, str, str, str]]:
    data = tmp_path_factory.mktemp("sink")
    s = Sink(data)
    a, b = s.add_device("cart-a"), s.add_device("cart-b")
    res = sink_cli("device", "add", "ops", "--admin", "--json", "--data", str(data))
    admin = json.loads(res.stdout)["token"]
    s.start()
    yield s, a, b, admin
    s.stop()


def upload(s: Sink, token: str, path: Path, bundle_id: str, *, checksum: str = "") -> None:
    """The whole file in the creation request; ``checksum``: with an ``Upload-Checksum`` of
    that algorithm."""
    data = path.read_bytes()
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in (("bundle_id", bundle_id), ("filename", path.name))
    )
    extra = {"Upload-Length": str(len(data)), "Upload-Metadata": meta}
    if checksum:
        digest = base64.b64encode(hashlib.new(checksum, data).digest()).decode()
        extra["Upload-Checksum"] = f"{checksum} {digest}"
    r = httpx.post(s.url + "/files/", headers=tus_headers(token, **OCTETS, **extra), content=data)
    assert r.status_code == 201 and r.headers["Upload-Offset"] == str(len(data)), r.text


def verified_on_arrival(s: Sink, bundle_id: str) -> dict[str, str | None]:
    """filename -> the sha256 the sink recorded for that upload (read from its database)."""
    db = sink_db(s.data)
    try:
        rows = db._exec("SELECT metadata, sha256 FROM uploads").rows
    finally:
        db.close()
    out = {}
    for meta, sha in rows:
        m = json.loads(meta)
        if m.get("bundle_id") == bundle_id:
            out[m["filename"]] = sha
    return out


def ingested(s: Sink, admin: str) -> None:
    """Ingest runs in the background: wait until the queue holds nothing pending (an upload
    is queued before its last request is answered)."""

    def drained() -> bool:
        r = httpx.get(s.url + "/api/ingest", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        return api_json(r)["pending"] == 0

    assert wait_until(drained, timeout_s=30)


def query(s: Sink, admin: str, **params: str) -> list[dict[str, object]]:
    ingested(s, admin)
    r = httpx.get(
        s.url + "/api/bundles", params=params, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    return list(api_json(r)["bundles"])


def test_a_bundle_is_verified_probed_summarised_and_indexed(
    sink: tuple[Sink, str, str, str], tmp_path: Path
) -> None:
    s, a, _, admin = sink
    folder = make_bundle(tmp_path / "b1", "b-1", also=("model_wrong",))
    for name in (CLIP, SENSORS):  # the manifest last: nothing happens before it
        upload(s, a, folder / name, "b-1")
    assert query(s, admin, device="cart-a") == []
    upload(s, a, folder / MANIFEST, "b-1")
    (row,) = query(s, admin, device="cart-a")
    assert row["status"] == "ok" and row["frames"] == 20 and row["codec"] == "h264"
    assert row["rule"] == "unscanned_item" and row["store_id"] == "store-7"
    sensors = row["sensors"]
    assert isinstance(sensors, dict) and sensors["weight_events"][0]["delta_g"] == 412.0
    assert sensors["channels"]["/weight/fused"] == {"samples": 40, "rate_hz": 80.0}
    assert query(s, admin, barcode="4006381333931")[0]["bundle_id"] == "b-1"
    assert query(s, admin, q="unscanned_item")[0]["bundle_id"] == "b-1"
    assert query(s, admin, rule="scanned_item") == []
    # Every rule that fired in it: the one that opened it, then the others.
    assert row["rules"] == ["unscanned_item", "model_wrong"]
    assert query(s, admin, rule="model_wrong") == []  # it did not open the bundle
    assert [r["bundle_id"] for r in query(s, admin, fired="model_wrong")] == ["b-1"]
    assert query(s, admin, fired="model") == []  # a whole rule's name, not a part of one
    stored = s.data / "blobs" / "store" / "bundles" / "cart-a" / "b-1" / CLIP
    assert stored.read_bytes() == (folder / CLIP).read_bytes()
    assert row["keyframes"] >= 1 and row["empty_background"] is False
    thumb = stored.parent / "keyframes" / "000.jpg"
    assert thumb.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    upload(s, a, folder / MANIFEST, "b-1")  # handled twice: nothing changes
    assert len(query(s, admin, device="cart-a")) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("lie", "differ from the manifest"),
        ("not_video", "not a playable video"),
        ("other_device", "names device cart-b"),
    ],
)
def test_bad_bundles_are_marked_corrupt(
    sink: tuple[Sink, str, str, str], tmp_path: Path, case: str, reason: str
) -> None:
    s, a, _, admin = sink
    bid = f"bad-{case}"
    folder = make_bundle(
        tmp_path / bid,
        bid,
        "cart-b" if case == "other_device" else "cart-a",
        lie=case == "lie",
        not_video=case == "not_video",
    )
    for name in (CLIP, SENSORS, MANIFEST):
        upload(s, a, folder / name, bid)
    (row,) = [r for r in query(s, admin, status="corrupt") if r["bundle_id"] == bid]
    assert reason in str(row["reason"])
    assert not (s.data / "blobs" / "store" / "bundles" / "cart-a" / bid).exists()


def test_api_needs_an_admin_and_heartbeats_feed_the_fleet(sink: tuple[Sink, str, str, str]) -> None:
    s, a, b, admin = sink
    assert httpx.get(s.url + "/api/bundles").status_code == 401
    assert (
        httpx.get(s.url + "/api/bundles", headers={"Authorization": f"Bearer {a}"}).status_code
        == 403
    )
    beat = {
        "queue_depth": 4,
        "disk_used_pct": 61.5,
        "last_upload_utc": "2026-11-26T08:01:00Z",
        "model_version": "v3",
    }
    r = httpx.post(s.url + "/api/heartbeat", json=beat, headers={"Authorization": f"Bearer {b}"})
    assert r.status_code == 200
    bad = httpx.post(
        s.url + "/api/heartbeat", content=b"{not json", headers={"Authorization": f"Bearer {b}"}
    )
    assert bad.status_code == 400
    fleet = api_json(httpx.get(s.url + "/api/fleet", headers={"Authorization": f"Bearer {admin}"}))
    (dev,) = [d for d in fleet["devices"] if d["device_id"] == "cart-b"]
    assert dev["queue_depth"] == 4 and dev["model_version"] == "v3"
    malformed = httpx.get(  # in SQLite's FTS5 syntax; PostgreSQL's web-search syntax takes it
        s.url + "/api/bundles", params={"q": '"'}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert malformed.status_code == (400 if BACKEND.server is None else 200)


def test_a_clip_of_the_empty_basket_is_flagged(
    sink: tuple[Sink, str, str, str], tmp_path: Path
) -> None:
    s, a, _, admin = sink
    folder = make_bundle(tmp_path / "still", "still-1", still=True)
    for name in (CLIP, SENSORS, MANIFEST):
        upload(s, a, folder / name, "still-1")
    (row,) = [r for r in query(s, admin, empty_background="1") if r["bundle_id"] == "still-1"]
    assert row["status"] == "ok"
    assert "b-1" not in [r["bundle_id"] for r in query(s, admin, empty_background="1")]


def test_zstd_uploads_are_decoded_and_bad_ones_marked_corrupt(
    sink: tuple[Sink, str, str, str], tmp_path: Path
) -> None:
    import zstandard

    s, a, _, admin = sink
    folder = make_bundle(tmp_path / "z1", "z1")

    def send(name: str, data: bytes, bid: str, encoding: str) -> None:
        meta = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}"
            for k, v in (("bundle_id", bid), ("filename", name), ("encoding", encoding))
        )
        r = httpx.post(
            s.url + "/files/",
            headers=tus_headers(
                a, **OCTETS, **{"Upload-Length": str(len(data)), "Upload-Metadata": meta}
            ),
            content=data,
        )
        assert r.status_code == 201, r.text

    upload(s, a, folder / CLIP, "z1")
    squeeze = zstandard.ZstdCompressor().compress
    send(SENSORS, squeeze((folder / SENSORS).read_bytes()), "z1", "zstd")
    send(MANIFEST, squeeze((folder / MANIFEST).read_bytes()), "z1", "zstd")
    assert [r["bundle_id"] for r in query(s, admin, status="ok") if r["bundle_id"] == "z1"] == [
        "z1"
    ]
    stored = s.data / "blobs" / "store" / "bundles" / "cart-a" / "z1"
    assert (stored / MANIFEST).read_bytes() == (folder / MANIFEST).read_bytes()
    send(MANIFEST, b"not zstd at all", "z2", "zstd")
    (bad,) = [r for r in query(s, admin, status="corrupt") if r["bundle_id"] == "z2"]
    assert "not valid zstd" in str(bad["reason"])
    send(MANIFEST, b"{}", "z3", "gzip")
    (odd,) = [r for r in query(s, admin, status="corrupt") if r["bundle_id"] == "z3"]
    assert "unknown encoding" in str(odd["reason"])


def test_a_sink_killed_before_ingest_ingests_after_restart_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "sink"
    s = Sink(data, "--ingest-workers", "0")  # completed uploads queue up, nobody ingests
    a = s.add_device("cart-a")
    admin = json.loads(
        sink_cli("device", "add", "ops", "--admin", "--json", "--data", str(data)).stdout
    )["token"]
    s.start()
    folder = make_bundle(tmp_path / "k1", "k-1")
    for name in (CLIP, SENSORS, MANIFEST):
        upload(s, a, folder / name, "k-1")
    counts = httpx.get(s.url + "/api/ingest", headers={"Authorization": f"Bearer {admin}"})
    assert api_json(counts) == {"type": "ingest_queue", "pending": 3, "done": 0, "failed": 0}
    s.kill()  # SIGKILL: the uploads are complete, their ingest never ran
    # A worker of an earlier run that died holding an item leaves a claim: it is void now
    # (the same instance restarts: by default, its name is the host and port).
    db = sink_db(data)
    claimed = db.claim_ingest(lease_s=3600, instance=f"{socket.gethostname()}:{s.port}")
    assert claimed is not None
    db.close()
    restarted = Sink(data, port=s.port).start()
    try:
        (row,) = query(restarted, admin, device="cart-a")
        assert row["bundle_id"] == "k-1" and row["status"] == "ok"
    finally:
        restarted.kill()
    again = Sink(data, port=s.port).start()  # and once more: nothing is ingested twice
    try:
        assert len(query(again, admin, device="cart-a")) == 1
        counts = httpx.get(again.url + "/api/ingest", headers={"Authorization": f"Bearer {admin}"})
        assert api_json(counts) == {"type": "ingest_queue", "pending": 0, "done": 3, "failed": 0}
    finally:
        again.stop()
    db = sink_db(data)
    attempts = [r[0] for r in db._exec("SELECT attempts FROM ingest_queue ORDER BY seq")]
    db.close()
    assert attempts.count(2) == 1 and attempts.count(1) == 2  # the claimed one ran again once
    stored = data / "blobs" / "store" / "bundles" / "cart-a" / "k-1"
    assert (stored / CLIP).read_bytes() == (folder / CLIP).read_bytes()


def test_the_clip_is_decoded_once_per_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codec, frames, keyframe thumbnails and the empty-background check from one pass."""
    import av

    from cloud_sink.ingest import scan_clip

    folder = make_bundle(tmp_path / "d1", "d-1")
    opened: list[str] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(str(a[0])) or real_open(*a, **k))
    info, thumbs = scan_clip(folder / CLIP)
    assert opened == [str(folder / CLIP)]
    assert info["frames"] == 20 and info["codec"] == "h264" and thumbs
    assert info["background"]["sampled_frames"] >= 1


def test_an_ingest_that_keeps_failing_ends_corrupt_not_in_limbo(tmp_path: Path) -> None:
    """A blob store that cannot take the files (here: its folder is a file) fails every
    attempt: the upload is retried a bounded number of times, then the bundle is corrupt with
    the reason; once the store works, a re-sent bundle is accepted."""
    from cloud_sink.blobs import LocalBlobStore
    from cloud_sink.ingest import MAX_INGEST_ATTEMPTS, Ingest

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    db, index = sink_db(tmp_path), sink_index(tmp_path)
    store_root = tmp_path / "store"
    store = LocalBlobStore(store_root)
    ingest = Ingest(db, store, index, uploads, retry_base_s=0.0)
    folder = make_bundle(tmp_path / "f", "lim-1")

    def arrive(name: str, n: int) -> None:
        upload_id = f"{name[:4]}{n}".ljust(32, "x")
        (uploads / upload_id).write_bytes((folder / name).read_bytes())
        meta = {"bundle_id": "lim-1", "filename": name}
        db.create_upload(upload_id, "cart-a", (folder / name).stat().st_size, meta, 1e12)
        assert db.complete(upload_id)

    store.root = tmp_path / "not-a-folder"
    store.root.write_text("in the way")
    for name in (CLIP, SENSORS, MANIFEST):
        arrive(name, 1)
    for _ in range(MAX_INGEST_ATTEMPTS + 2):
        ingest.run_pending()
    row = index.get("lim-1", "cart-a")
    assert row is not None and row["status"] == "corrupt"
    assert f"ingest failed {MAX_INGEST_ATTEMPTS} times" in row["reason"]
    assert db.ingest_counts()["pending"] == 0
    store.root = store_root  # the store works again; the cart sends the bundle once more
    for name in (CLIP, SENSORS, MANIFEST):
        arrive(name, 2)
    ingest.run_pending()
    assert index.get("lim-1", "cart-a")["status"] == "ok"  # type: ignore[index]


def test_queue_counts_read_while_another_thread_works_the_queue_are_whole(tmp_path: Path) -> None:
    """The sink shares one SQLite connection between threads: a count read while the ingest
    worker finishes items must see every item, pending or done (a cursor read outside the
    lock once reported an empty queue while the last upload still waited)."""
    import threading

    db = sink_db(tmp_path)
    n = 400
    for i in range(n):
        upload_id = f"u{i}".ljust(32, "x")
        db.create_upload(upload_id, "cart-a", 1, {}, 1e12)
        assert db.complete(upload_id)
    seen: list[dict[str, int]] = []
    worker_done = threading.Event()

    def work() -> None:
        while (item := db.claim_ingest()) is not None:
            db.finish_ingest(item.seq, "done")
        worker_done.set()

    t = threading.Thread(target=work)
    t.start()
    while not worker_done.is_set():
        seen.append(db.ingest_counts())
    t.join()
    assert all(c["pending"] + c["done"] == n for c in seen), [
        c for c in seen if c["pending"] + c["done"] != n
    ][:3]
    pending = [c["pending"] for c in seen]
    assert pending == sorted(pending, reverse=True)
    assert db.ingest_counts() == {"pending": 0, "done": n, "failed": 0}


def test_a_file_verified_whole_on_arrival_is_trusted_and_anything_else_is_hashed(
    sink: tuple[Sink, str, str, str], tmp_path: Path
) -> None:
    """One sha256-checksummed request for a whole file: the sink records the digest it
    verified, and ingest takes it for the manifest's instead of reading the file again. A sha1
    checksum or none records nothing (ingest hashes), and a verified digest that is not the
    manifest's is no shortcut: the file is hashed and the bundle is corrupt."""
    s, a, _, admin = sink
    good = make_bundle(tmp_path / "v1", "verified-1")
    for name in (CLIP, SENSORS, MANIFEST):
        upload(s, a, good / name, "verified-1", checksum="sha256" if name != SENSORS else "sha1")
    manifest = json.loads((good / MANIFEST).read_text())
    recorded = verified_on_arrival(s, "verified-1")
    assert recorded[CLIP] == manifest["files"][CLIP]["sha256"]
    assert recorded[SENSORS] is None  # sha1: not the manifest's kind of digest
    (row,) = [r for r in query(s, admin) if r["bundle_id"] == "verified-1"]
    assert row["status"] == "ok"

    changed = make_bundle(tmp_path / "v2", "verified-2")
    clip = changed / CLIP
    clip.write_bytes(clip.read_bytes()[:-1] + b"\0")  # no longer what the manifest states
    for name in (CLIP, SENSORS, MANIFEST):
        upload(s, a, changed / name, "verified-2", checksum="sha256")
    sent = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert verified_on_arrival(s, "verified-2")[CLIP] == sent
    (row,) = [r for r in query(s, admin) if r["bundle_id"] == "verified-2"]
    assert row["status"] == "corrupt" and "sha256/size differ" in str(row["reason"])


def test_the_queue_says_when_its_last_ingest_finished(tmp_path: Path) -> None:
    """Each finished ingest is stamped to the sub-second (the benchmark times uploads until
    the sink has verified and indexed them): None before any, then the latest finish."""
    import time

    db = sink_db(tmp_path)
    assert db.last_ingest_ts() is None
    stamps = []
    for i in range(3):
        upload_id = f"t{i}".ljust(32, "x")
        db.create_upload(upload_id, "cart-a", 1, {}, 1e12)
        assert db.complete(upload_id)
        item = db.claim_ingest()
        assert item is not None
        before = time.time()
        db.finish_ingest(item.seq, "done", failed=i == 1)  # a failed ingest finished too
        stamps.append((before, time.time()))
        last = db.last_ingest_ts()
        assert last is not None and before <= last <= stamps[-1][1]
    db.close()


def test_an_index_from_before_the_rules_column_learns_each_bundles_opening_rule(
    tmp_path: Path,
) -> None:
    """Migration 4 adds every rule that fired in a bundle; a bundle indexed before it knows the
    rule that opened it."""
    from cloud_sink.index import MIGRATIONS, Index
    from cloud_sink.sql import Database

    path = tmp_path / "index.db"
    old = Database(path)
    old.migrate(MIGRATIONS[:3], "schema_migrations")
    old.execute(
        "INSERT INTO bundles (id, device_id, store_id, rule, start_utc, status, bytes) "
        "VALUES ('b-1', 'cart-a', 'store-7', 'scanned_item', '2026-12-01T10:00:00.000Z', 'ok', 1)"
    )
    old.close()
    index = Index(path)
    try:
        assert index.schema_version == len(MIGRATIONS)
        (row,) = index.query(fired="scanned_item")
        assert row["rules"] == "scanned_item"
    finally:
        index.close()
