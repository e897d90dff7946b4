"""The sink beyond one process: its database on a real PostgreSQL server, several `capsight-sink
serve` instances sharing it and one data folder, the ingest queue worked by all of them exactly
once, and a database that is down answered with 503 + Retry-After, losing nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.bundles import make_bundle
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, Manifest
from cloud_sink import db as sinkdb
from cloud_sink.db import SinkDB, SinkError
from cloud_sink.index import Index
from cloud_sink.sql import Database
from tests.conftest import wait_until
from tests.sink_helpers import (
    Sink,
    TusClient,
    api_json,
    kill_holding_the_upload,
    sink_cli,
    tus_headers,
)


def _queue(db: SinkDB, n: int) -> None:
    for i in range(n):
        upload_id = f"q{i}".ljust(32, "x")
        db.create_upload(upload_id, "cart-a", 1, {}, 1e12)
        assert db.complete(upload_id)


# -- the database alone ---------------------------------------------------------------------------
def test_workers_of_three_instances_take_each_queued_ingest_exactly_once(
    sink_db_target: str,
) -> None:
    """Three instances (three connections), two workers each, claiming at once: every item is
    claimed by exactly one worker, once (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one
    writer at a time)."""
    n = 240
    instances = [SinkDB(sink_db_target) for _ in range(3)]
    _queue(instances[0], n)
    taken: list[tuple[str, int]] = []
    guard = threading.Lock()

    def work(db: SinkDB, name: str) -> None:
        while (item := db.claim_ingest(60, name)) is not None:
            with guard:
                taken.append((name, item.seq))
            db.finish_ingest(item.seq, "done")

    threads = [
        threading.Thread(target=work, args=(db, f"i{k}-w{w}"))
        for k, db in enumerate(instances)
        for w in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seqs = [seq for _, seq in taken]
    assert sorted(seqs) == sorted(set(seqs)) and len(seqs) == n  # each once, none lost
    assert instances[1].ingest_counts() == {"pending": 0, "done": n, "failed": 0}
    if instances[0].shared:  # the server let them work side by side
        assert len({name.split("-")[0] for name, _ in taken}) == 3
    attempts = {r[0] for r in instances[2]._exec("SELECT attempts FROM ingest_queue")}
    assert attempts == {1}
    for db in instances:
        db.close()


def test_a_dead_workers_claim_expires_and_another_instance_retries_it(
    sink_db_target: str,
) -> None:
    a, b = SinkDB(sink_db_target), SinkDB(sink_db_target)
    _queue(a, 1)
    held = a.claim_ingest(lease_s=0.5, instance="a")
    assert held is not None
    a.close()  # instance a dies holding it
    assert b.claim_ingest(60, "b") is None  # leased: nobody else takes it yet
    again: list[Any] = []

    def retried() -> bool:
        again.append(b.claim_ingest(60, "b"))
        return again[-1] is not None

    assert wait_until(retried, 10)  # once the lease ends, another instance takes it
    assert again[-1].seq == held.seq and again[-1].attempts == 2
    b.close()


def test_a_restarting_instance_lets_go_of_its_own_claims_only(postgres: Any) -> None:
    url = postgres.database()
    a, b = SinkDB(url), SinkDB(url)
    _queue(a, 2)
    mine, theirs = a.claim_ingest(3600, "a"), b.claim_ingest(3600, "b")
    assert mine is not None and theirs is not None
    assert a.release_claims("a") == 1  # a restarted: its claim is void, b's is not
    item = SinkDB(url).claim_ingest(3600, "c")
    assert item is not None and item.seq == mine.seq
    a.close()
    b.close()


def test_a_failed_migration_leaves_the_schema_as_it_was(sink_db_target: str) -> None:
    SinkDB(sink_db_target).close()
    db = Database(sink_db_target)
    broken = [
        *sinkdb.MIGRATIONS,
        "CREATE TABLE half_done (a INTEGER); ALTER TABLE uploads ADD COLUMN x INTEGER; "
        "CREATE TABLE (",
    ]
    with pytest.raises(SinkError):
        db.migrate(broken)
    assert db.schema_version() == len(sinkdb.MIGRATIONS)
    with pytest.raises(SinkError):
        db.execute("SELECT * FROM half_done")
    with pytest.raises(SinkError):
        db.execute("SELECT x FROM uploads")
    db.close()


def test_migrating_instances_that_start_together_apply_each_step_once(postgres: Any) -> None:
    url = postgres.database()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            SinkDB(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    db = Database(url)
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, len(sinkdb.MIGRATIONS) + 1))
    db.close()


def test_large_lengths_and_precise_times_survive_the_server(postgres: Any) -> None:
    """PostgreSQL's INTEGER is 32 bits and its REAL 4 bytes: the shared migrations widen both
    (an upload of 6 GiB, an expiry to the microsecond)."""
    db = SinkDB(postgres.database())
    expires = 1796439742.123456
    db.create_upload("big".ljust(32, "x"), "cart-a", 6 << 30, {"k": "v"}, expires)
    up = db.get_upload("big".ljust(32, "x"))
    assert up is not None and up.length == 6 << 30 and up.expires_ts == expires
    assert db.usage("cart-a", 0).bytes == 6 << 30
    db.close()


def _item(n: int) -> Any:
    from cloud_sink.labels import Candidate, NewItem

    return NewItem(
        item_id=f"item-{n}",
        device_id="cart-a",
        bundle_id="b-1",
        store_id="store-1",
        t_ns=n * 10**9,
        t_utc=f"2026-12-05T10:00:{n:02d}.000Z",
        frame_key=f"frames/{n}.jpg",
        frame_sha256="0" * 64,
        width=64,
        height=48,
        candidates=[Candidate("teacher", "sku-1", 0.5, [1, 1, 10, 10], "teacher:1")],
    )


def test_labels_on_either_database_keep_one_version_per_review(
    sink_db_target: str, tmp_path: Path
) -> None:
    """The label store's SQL on both backends; two reviewers on two instances (two
    connections) saving over the same version: one wins, the other gets a conflict, and the
    history has one review."""
    from cloud_sink.audit import audit_report
    from cloud_sink.labels import LabelConflict, LabelStore
    from cloud_sink.prelabel import Prelabeler

    target = sink_db_target if "://" in sink_db_target else str(tmp_path / "index.db")
    a, b = Index(target), Index(target)
    store_a, store_b = LabelStore(a), LabelStore(b)
    for n in range(3):
        assert store_a.add(_item(n)) == "needs_review"
    assert store_b.add(_item(0)) == "exists"
    assert store_b.counts()["needs_review"] == 3
    assert [i["item_id"] for i in store_b.items(state="needs_review")] == [
        "item-0",
        "item-1",
        "item-2",
    ]
    item = store_b.get("item-1")
    assert item is not None and item["box"] == [1, 1, 10, 10] and item["version"] == 1
    results: list[str] = []

    def save(store: LabelStore, who: str) -> None:
        try:
            store.review("item-1", version=1, action="accept", who=who, seconds=2.0)
            results.append("saved")
        except LabelConflict:
            results.append("conflict")

    threads = [
        threading.Thread(target=save, args=(s, w)) for s, w in ((store_a, "ana"), (store_b, "bo"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict", "saved"]
    history = store_a.history("item-1")
    assert [h["action"] for h in history] == ["prelabel", "accept"]
    assert store_a.flag("item-1", "the teacher doubts it") and not store_a.flag("item-2", "x")
    assert audit_report(b)["flagged_total"] == 1
    assert store_b.get("item-1")["state"] == "needs_review"  # type: ignore[index]
    assert Prelabeler(b, None, None).pending() == []  # no stored bundle waits for labels
    a.close()
    b.close()


# -- the command line -----------------------------------------------------------------------------
def test_an_embedded_sink_moves_into_postgresql_with_its_devices_queue_and_index(
    postgres: Any, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    res = sink_cli("device", "add", "cart-a", "--data", str(old), "--json")
    token = json.loads(res.stdout)["token"]
    lite = SinkDB(old / "sink.db")
    _queue(lite, 3)
    lite.close()
    lite_index = Index(old / "index.db")
    manifest = Manifest.from_json((make_bundle(tmp_path / "b", "moved-1") / MANIFEST).read_bytes())
    lite_index.add(manifest, "cart-a", "ok", "", {"frames": 20}, {"barcodes": ["4006381333931"]})
    lite_index.close()
    url = postgres.database()
    new = tmp_path / "new"
    new.mkdir()
    res = sink_cli("migrate", "--data", str(new), "--db", url, "--from-sqlite", str(old), "--json")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["database"].rsplit(" ", 1)[1] for r in records] == ["(sink)", "(index)"]
    assert all(r["database"].startswith("postgresql://") for r in records)
    assert [r["version_before"] for r in records] == [0, 0]
    assert records[0]["version_after"] == len(sinkdb.MIGRATIONS)
    moved = SinkDB(url)
    assert moved.authenticate(token) == ("cart-a", False)  # the cart's token still works
    assert moved.ingest_counts()["pending"] == 3
    claimed = moved.claim_ingest(60, "x")
    assert claimed is not None and claimed.seq == 1
    moved.create_upload("later".ljust(32, "x"), "cart-a", 1, {}, 1e12)
    assert moved.complete("later".ljust(32, "x"))  # numbered after the copied items
    seqs = [r[0] for r in moved._exec("SELECT seq FROM ingest_queue ORDER BY seq")]
    assert seqs == [1, 2, 3, 4]
    moved.close()
    index = Index(url)
    (row,) = index.query(q="4006381333931")  # PostgreSQL's own text search finds it
    assert row["id"] == "moved-1" and row["frames"] == 20
    assert index.query(barcode="4006381333931") and not index.query(q="nothing-like-it")
    index.close()
    # A second copy into a database that holds rows is refused, and copies nothing.
    res = sink_cli("migrate", "--data", str(new), "--db", url, "--from-sqlite", str(old))
    assert res.returncode == 2 and "copy into an empty database only" in res.stderr
    res = sink_cli("migrate", "--data", str(new), "--from-sqlite", str(old))
    assert res.returncode == 2 and "give --db URL too" in res.stderr

    res = sink_cli("doctor", "--data", str(new), "--db", url, "--json")
    checks = {r.get("name"): r for r in map(json.loads, res.stdout.splitlines())}
    assert checks["sink database"]["status"] == "pass", res.stdout
    assert checks["index database"]["status"] == "pass", res.stdout
    assert checks["ingest queue"]["detail"].startswith("4 pending")
    assert "sink.db" not in checks and "index.db" not in checks


def test_a_database_server_out_of_reach_is_a_clear_error(tmp_path: Path) -> None:
    res = sink_cli(
        "device", "add", "cart-a", "--data", str(tmp_path), "--db",
        "postgresql://capsight:secret@127.0.0.1:1/nothing",
    )  # fmt: skip
    assert res.returncode == 2
    assert "capsight-sink: error: postgresql://capsight:***@127.0.0.1:1/nothing" in res.stderr
    assert "secret" not in res.stderr and "Traceback" not in res.stderr


# -- several instances ----------------------------------------------------------------------------
@pytest.fixture
def instances(postgres: Any, tmp_path: Path) -> Iterator[tuple[list[Sink], str, str]]:
    url = postgres.database()
    data = tmp_path / "sink"
    config = tmp_path / "sink.toml"
    config.write_text("[timeouts]\ningest_lease_s = 3.0\nlock_wait_s = 0.5\n")
    sinks = [
        Sink(
            data, "--config", str(config), "--instance", f"s{i}", db=url, log=tmp_path / f"s{i}.log"
        )
        for i in range(3)
    ]
    token = sinks[0].add_device("cart-a")
    for s in sinks:  # one after the other: the first migrates, the others find it done
        s.start()
    try:
        yield sinks, token, url
    finally:
        for s in sinks:
            s.stop()


def test_three_instances_share_uploads_and_ingest_each_bundle_once_through_a_kill(
    instances: tuple[list[Sink], str, str], tmp_path: Path
) -> None:
    """Every request to a different instance; one instance SIGKILLed halfway through a
    checksummed chunk; the client carries on through the others. Every file ends
    byte-identical in the store, the bundle is indexed once, every queued ingest done once."""
    sinks, token, url = instances
    client = TusClient([s.url for s in sinks], token)
    folder = make_bundle(tmp_path / "b", "multi-1", noise_frames=40)
    files = {name: (folder / name).read_bytes() for name in (CLIP, SENSORS, MANIFEST)}
    chunk = max(4096, len(files[CLIP]) // 6)

    clip_id = client.create("multi-1", CLIP, len(files[CLIP]))
    r = client.patch(clip_id, 0, files[CLIP][:chunk])
    assert r.status_code == 204
    victim = sinks[1]  # it dies holding the upload's lock (423 from another meanwhile)
    second = files[CLIP][chunk : 2 * chunk]
    kill_holding_the_upload(victim, sinks[2].url, token, clip_id, chunk, second)
    client.urls = [sinks[0].url, sinks[2].url]
    assert client.head(clip_id) == chunk  # the half chunk was never applied
    client.send(clip_id, files[CLIP], chunk)
    for name in (SENSORS, MANIFEST):
        upload_id = client.create("multi-1", name, len(files[name]))
        client.send(upload_id, files[name], max(1024, len(files[name]) // 3))
    assert len(set(client.seen)) == 3  # every instance answered some of it

    admin = sinks[0].add_device("ops", admin=True)
    for i, sink in enumerate(sinks):  # each instance says which it is on its /metrics
        if sink is not victim:
            text = httpx.get(sink.url + "/metrics", headers={"Authorization": f"Bearer {admin}"})
            assert f'capsight_sink_instance_info{{database="postgresql",instance="s{i}"}} 1.0' in (
                text.text
            )

    def indexed() -> list[dict[str, Any]]:
        r = httpx.get(
            sinks[2].url + "/api/bundles",
            params={"device": "cart-a"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200, r.text
        return list(api_json(r)["bundles"])

    assert sinks[0].wait_ingested(60)
    rows = [r for r in indexed() if r.get("bundle_id") == "multi-1"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    stored = sinks[0].data / "blobs" / "store" / "bundles" / "cart-a" / "multi-1"
    for name, data in files.items():
        assert (stored / name).read_bytes() == data, name
    db = SinkDB(url)
    queue = db._exec("SELECT upload_id, state, result FROM ingest_queue").rows
    db.close()
    assert len(queue) == 3 and {r[1] for r in queue} == {"done"}
    assert len({r[0] for r in queue}) == 3
    index = Index(url)  # the index lives in PostgreSQL too
    try:
        assert index.count() == 1
    finally:
        index.close()
    assert not (sinks[0].data / "index.db").exists()


def test_a_database_that_goes_down_is_503_with_retry_after_and_loses_nothing(
    tmp_path: Path,
) -> None:
    from cloud_sink.localpg import LocalPostgres, pg_bin

    if pg_bin() is None:
        pytest.skip("no PostgreSQL server programs (initdb)")
    with LocalPostgres() as pg:
        url = pg.database()
        sink = Sink(tmp_path / "sink", db=url, log=tmp_path / "sink.log")
        token = sink.add_device("cart-a")
        sink.start()
        try:
            client = TusClient([sink.url], token)
            folder = make_bundle(tmp_path / "b", "down-1")
            data = (folder / CLIP).read_bytes()
            upload_id = client.create("down-1", CLIP, len(data))
            half = len(data) // 2
            assert client.patch(upload_id, 0, data[:half]).status_code == 204
            pg.halt()
            for r in (
                client.patch(upload_id, half, data[half:]),
                httpx.head(sink.url + f"/files/{upload_id}", headers=tus_headers(token)),
                httpx.post(
                    sink.url + "/files/", headers=tus_headers(token, **{"Upload-Length": "1"})
                ),
                httpx.get(sink.url + "/api/ingest", headers={"Authorization": f"Bearer {token}"}),
            ):
                assert r.status_code == 503, (r.request.method, r.status_code, r.text)
                assert r.headers["Retry-After"] == "5"
            assert httpx.get(sink.url + "/healthz").status_code == 200  # the process lives on
            ready = httpx.get(sink.url + "/readyz")  # but it is not ready: route around it
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
            pg.start()
            assert httpx.get(sink.url + "/readyz").json() == {"ok": True}
            assert client.head(upload_id) == half  # nothing sent before the outage was lost
            client.send(upload_id, data, half)
            assert client.head(upload_id) == len(data)
            for name in (SENSORS, MANIFEST):  # the bundle's other files: it is ingested
                body = (folder / name).read_bytes()
                client.send(client.create("down-1", name, len(body)), body, len(body))
            assert sink.wait_ingested(60)
            admin = sink.add_device("ops", admin=True)
            rows = httpx.get(
                sink.url + "/api/bundles", headers={"Authorization": f"Bearer {admin}"}
            ).json()["bundles"]
            assert [(r["bundle_id"], r["status"]) for r in rows] == [("down-1", "ok")]
        finally:
            sink.stop()
        log = (tmp_path / "sink.log").read_text()
        assert "Traceback" not in log, log[-3000:]
