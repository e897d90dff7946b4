"""Uploads in progress in a bucket (``serve --staging s3``): S3 multipart uploads on moto's S3
server (started by the test, on 127.0.0.1), the sink as real ``capsight-sink serve`` processes,
several of them on a real PostgreSQL behind a round-robin TCP proxy, each with its own data
folder (nothing shared but the database and the bucket)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.bundles import make_bundle
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS
from capsight_edge.localsink import TcpProxy
from cloud_sink.db import SinkDB
from cloud_sink.staging import MIN_PART
from tests.sink_helpers import (
    Sink,
    TusClient,
    api_json,
    chunk_checksum,
    half_sent_patch,
    kill_holding_the_upload,
    tus_headers,
)

BUCKET = "capsight-staging"
MiB = 1 << 20


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto takes any credentials; the sinks (child processes) inherit these."""
    for k, v in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(k, v)


@pytest.fixture
def s3(moto_url: str) -> Iterator[tuple[Any, TcpProxy]]:
    """A fresh bucket on moto, and a proxy in front of moto that the test can take down."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_url)
    client.create_bucket(Bucket=BUCKET)
    port = int(moto_url.rsplit(":", 1)[1])
    proxy = TcpProxy([("127.0.0.1", port)])
    try:
        yield client, proxy
    finally:
        proxy.close()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for o in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=o["Key"])
        for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"])
        client.delete_bucket(Bucket=BUCKET)


@contextlib.contextmanager
def one_staged_sink(tmp_path: Path, s3_url: str) -> Iterator[tuple[Sink, str]]:
    """A running sink that stages in the bucket at ``s3_url``, and a device's token; on the
    way out, its log must hold no traceback."""
    sink = staged_sink(tmp_path / "sink", s3_url, log=tmp_path / "sink.log")
    token = sink.add_device("cart-a")
    sink.start()
    try:
        yield sink, token
    finally:
        sink.stop()
    log = (tmp_path / "sink.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def staged_sink(data: Path, s3_url: str, *args: str, db: str = "", log: Path) -> Sink:
    return Sink(
        data,
        "--staging",
        "s3",
        "--s3-bucket",
        BUCKET,
        "--s3-endpoint",
        s3_url,
        *args,
        db=db,
        log=log,
    )


def keys(client: Any, prefix: str = "") -> list[str]:
    got = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in got)


def test_chunks_too_small_for_a_part_wait_in_a_tail_and_every_chunk_lands_whole_or_not(
    s3: tuple[Any, TcpProxy], moto_url: str, tmp_path: Path
) -> None:
    """1 MiB checksummed chunks: bytes too few for S3's 5 MiB part wait in a tail object; the
    offset counts every byte the bucket holds; a chunk that fails its checksum or is cut off
    changes nothing; the finished upload is one object, byte for byte what was sent."""
    client_s3, _ = s3
    with one_staged_sink(tmp_path, moto_url) as (sink, token):
        c = TusClient([sink.url], token)
        data = os.urandom(12 * MiB + 12345)
        upload_id = c.create("not-a-bundle", "notes.bin", len(data))
        key = f"uploads/{upload_id}"
        db = SinkDB(tmp_path / "sink" / "sink.db")
        offset = 0
        for i in range(7):
            chunk = data[offset : offset + MiB]
            if i == 2:  # a bad checksum: 460, nothing applied
                r = c.patch(upload_id, offset, chunk, checksum=chunk_checksum(b"other"))
                assert r.status_code == 460, r.text
                assert c.head(upload_id) == offset
            if i == 3:  # cut off halfway: nothing applied
                half_sent_patch(sink.url, token, upload_id, offset, chunk).close()
                assert c.head(upload_id) == offset
            r = c.patch(upload_id, offset, chunk)
            assert r.status_code == 204, r.text
            offset = int(r.headers["Upload-Offset"])
            assert offset == (i + 1) * MiB == c.head(upload_id)
            st = db.staged(upload_id)
            assert st is not None and st.offset == offset
            assert st.tail_bytes == offset - 5 * MiB * len(st.parts)
            assert all(size == 5 * MiB for _, size, _ in st.parts)  # what made a part went in
            tails = keys(client_s3, key + ".tail.")
            assert tails == ([st.tail_key] if st.tail_bytes else [])  # the old tail is gone
        assert len(st.parts) == 1 and st.tail_bytes == 2 * MiB
        r = c.patch(upload_id, offset, data[offset:])  # the rest, 5 MiB and more, at once
        assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == len(data)
        joined = client_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert joined == data
        assert keys(client_s3, key + ".tail.") == []
        assert 5 * MiB == MIN_PART
        db.close()


def test_a_bundle_staged_in_the_bucket_is_ingested_and_the_bucket_gives_the_space_back(
    s3: tuple[Any, TcpProxy], moto_url: str, tmp_path: Path
) -> None:
    client_s3, _ = s3
    with one_staged_sink(tmp_path, moto_url) as (sink, token):
        c = TusClient([sink.url], token)
        folder = make_bundle(tmp_path / "b", "staged-1", noise_frames=40)
        files = {name: (folder / name).read_bytes() for name in (CLIP, SENSORS, MANIFEST)}
        for name, body in files.items():
            upload_id = c.create("staged-1", name, len(body))
            # a tail a crash left unrecorded (sent, then killed before the database heard)
            client_s3.put_object(Bucket=BUCKET, Key=f"uploads/{upload_id}.tail.0f", Body=b"x")
            c.send(upload_id, body, max(1024, len(body) // 3))
        assert sink.wait_ingested(60)
        admin = sink.add_device("ops", admin=True)
        rows = httpx.get(
            sink.url + "/api/bundles", headers={"Authorization": f"Bearer {admin}"}
        ).json()["bundles"]
        assert [(r["bundle_id"], r["status"]) for r in rows] == [("staged-1", "ok")]
        for name, body in files.items():  # stored in the bucket, byte for byte
            stored = client_s3.get_object(Bucket=BUCKET, Key=f"bundles/cart-a/staged-1/{name}")
            assert stored["Body"].read() == body
        # staged data, tails (the unrecorded ones too) and joined objects: all gone
        assert keys(client_s3, "uploads/") == []
        assert client_s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
        assert SinkDB(tmp_path / "sink" / "sink.db").staged(upload_id) is None


def test_a_bucket_that_goes_down_is_503_and_loses_no_chunk(
    s3: tuple[Any, TcpProxy], tmp_path: Path
) -> None:
    """The sink reaches the bucket through a proxy the test takes down: uploads answer 503
    with Retry-After (never 500), /readyz says not ready, HEAD still answers from the database,
    and once the bucket is back the upload goes on from the same offset."""
    _, proxy = s3
    with one_staged_sink(tmp_path, proxy.url) as (sink, token):
        c = TusClient([sink.url], token)
        data = os.urandom(3 * MiB)
        upload_id = c.create("nb", "notes.bin", len(data))
        assert c.patch(upload_id, 0, data[:MiB]).status_code == 204
        proxy.down()
        for r in (
            c.patch(upload_id, MiB, data[MiB : 2 * MiB]),
            httpx.post(sink.url + "/files/", headers=tus_headers(token, **{"Upload-Length": "10"})),
            httpx.get(sink.url + "/readyz"),
        ):
            assert r.status_code == 503, (r.request.method, r.status_code, r.text)
            assert r.headers["Retry-After"] == "5"
        assert "bucket" in r.text
        assert c.head(upload_id) == MiB  # the offset lives in the database
        proxy.up()
        assert httpx.get(sink.url + "/readyz").status_code == 200
        c.send(upload_id, data, MiB)
        assert c.head(upload_id) == len(data)


@pytest.fixture
def staged_instances(
    postgres: Any, s3: tuple[Any, TcpProxy], moto_url: str, tmp_path: Path
) -> Iterator[tuple[list[Sink], TcpProxy, str, str]]:
    """Three instances on one PostgreSQL and one bucket, each with its own data folder, and a
    round-robin proxy in front of them."""
    url = postgres.database()
    config = tmp_path / "sink.toml"
    config.write_text("[timeouts]\ningest_lease_s = 3.0\nlock_wait_s = 0.5\n")
    sinks = [
        staged_sink(
            tmp_path / f"sink{i}",
            moto_url,
            "--config",
            str(config),
            "--instance",
            f"s{i}",
            "--s3-prefix",
            "",
            db=url,
            log=tmp_path / f"s{i}.log",
        )
        for i in range(3)
    ]
    token = sinks[0].add_device("cart-a")
    for s in sinks:
        s.start()
    proxy = TcpProxy([("127.0.0.1", s.port) for s in sinks])
    try:
        yield sinks, proxy, token, url
    finally:
        proxy.close()
        for s in sinks:
            s.stop()


def test_three_instances_behind_a_proxy_share_staged_uploads_through_a_kill(
    staged_instances: tuple[list[Sink], TcpProxy, str, str],
    s3: tuple[Any, TcpProxy],
    tmp_path: Path,
) -> None:
    """No shared folder: each request through the round-robin proxy reaches another instance,
    which continues the upload from the bucket. One instance is SIGKILLed halfway through a
    checksummed chunk while it holds the upload (another answers 423 meanwhile); the client
    carries on through the proxy. Every file ends byte-identical, the bundle indexed once."""
    sinks, proxy, token, url = staged_instances
    client_s3, _ = s3
    c = TusClient([proxy.url], token)
    folder = make_bundle(tmp_path / "b", "multi-s3", noise_frames=40)
    files = {name: (folder / name).read_bytes() for name in (CLIP, SENSORS, MANIFEST)}
    chunk = max(4096, len(files[CLIP]) // 6)

    clip_id = c.create("multi-s3", CLIP, len(files[CLIP]))
    assert c.patch(clip_id, 0, files[CLIP][:chunk]).status_code == 204
    victim = sinks[1]  # it dies holding the upload's advisory lock (423 from another meanwhile)
    second = files[CLIP][chunk : 2 * chunk]
    kill_holding_the_upload(victim, sinks[2].url, token, clip_id, chunk, second)
    assert c.head(clip_id) == chunk  # the half chunk was never applied
    c.send(clip_id, files[CLIP], chunk)
    for name in (SENSORS, MANIFEST):
        upload_id = c.create("multi-s3", name, len(files[name]))
        c.send(upload_id, files[name], max(1024, len(files[name]) // 3))
    assert {0, 2} <= set(proxy.used)  # the live instances each answered some of it

    assert sinks[0].wait_ingested(60)
    admin = sinks[0].add_device("ops", admin=True)
    r = httpx.get(
        proxy.url + "/api/bundles",
        params={"device": "cart-a"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    rows = [b for b in api_json(r)["bundles"] if b.get("bundle_id") == "multi-s3"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    for name, body in files.items():
        stored = client_s3.get_object(Bucket=BUCKET, Key=f"bundles/cart-a/multi-s3/{name}")
        assert stored["Body"].read() == body, name
    db = SinkDB(url)
    queue = db._exec("SELECT upload_id, state FROM ingest_queue").rows
    db.close()
    assert len(queue) == 3 and {q[1] for q in queue} == {"done"}
    assert keys(client_s3, "uploads/") == []
    for s in (sinks[0], sinks[2]):  # a chunk is spooled only while it arrives
        assert not any((s.data / "blobs" / "uploads").glob(".spool-*"))
    # The victim's spool is what the kill left (the sweep removes such files after an hour).
    (left,) = (victim.data / "blobs" / "uploads").glob(".spool-*")
    assert left.stat().st_size <= chunk
