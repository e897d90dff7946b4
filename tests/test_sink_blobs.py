"""Both blob stores through one contract: a local folder, and S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_sink.blobs import LocalBlobStore, S3BlobStore
from cloud_sink.db import SinkError


def s3_store(url: str) -> S3BlobStore:
    kw: dict[str, Any] = {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "region_name": "us-east-1",
    }
    store = S3BlobStore("capsight-test", endpoint_url=url, prefix="sink", **kw)
    store.s3.create_bucket(Bucket="capsight-test")
    return store


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_blob_store_contract(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store: Any = (
        LocalBlobStore(tmp_path / "blobs")
        if kind == "local"
        else s3_store(request.getfixturevalue("moto_url"))
    )
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"\x00video" * 1000)
    key = "bundles/cart-a/b-1/clip.mp4"
    assert not store.exists(key)
    store.put_file(key, src)
    assert store.exists(key) and store.get_bytes(key) == src.read_bytes()
    assert store.keys("bundles/cart-a/") == [key]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(SinkError, match="no blob"):
        store.get_bytes(key)
    for bad in ("../x", "a//b", "/abs", "a/./b", ""):
        with pytest.raises(SinkError, match="safe"):
            store.put_file(bad, src)
