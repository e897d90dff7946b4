"""Blob stores behind one interface: a local folder (the default) and an S3-compatible store.

Keys are ``/``-separated relative names (``bundles/<device>/<bundle_id>/clip.mp4``); a key with an
empty, ``.`` or ``..`` part is refused, so no key can reach outside the store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from capsight_edge.durable import fsync_dir, make_dirs
from cloud_sink.db import SinkError


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise SinkError(f"blob key {key!r} is not a safe relative name")
    return key


class BlobStore(Protocol):
    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (replacing any older blob)."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str = "") -> list[str]: ...


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = make_dirs(Path(root))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        """The blob's file, when it is one (served with Range requests)."""
        p = self._path(key)
        return p if p.is_file() else None

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        make_dirs(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)  # stored means stored after a power cut too
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise SinkError(f"no blob {key!r}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file()
            and not p.name.startswith(".put-")
            and str(p.relative_to(self.root)).startswith(prefix)
        )


class S3BlobStore:
    """Any S3-compatible store (AWS S3, MinIO, moto...); ``endpoint_url`` selects it."""

    def __init__(
        self, bucket: str, *, endpoint_url: str | None = None, prefix: str = "", **client_kw: Any
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, **client_kw)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), self.bucket, self._key(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except self.s3.exceptions.NoSuchKey as exc:
            raise SinkError(f"no blob {key!r}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)
