"""Blob stores behind one interface: a local folder (the default) and an S3-compatible store.

Keys are ``/``-separated relative names (``bundles/<device>/<bundle_id>/clip.mp4``); a key with an
empty, ``.`` or ``..`` part is refused, so no key can reach outside the store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from capsight_edge.durable import fsync_dir, make_dirs
from cloud_sink.db import SinkError
from cloud_sink.sql import Unavailable

#: Seconds to reach the bucket, and to wait for one of its answers; tries per request.
S3_CONNECT_S, S3_READ_S, S3_ATTEMPTS = 5, 60, 3
#: S3's answers that mean "nothing is there" rather than "the store is out of reach".
S3_MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}


class BucketUnavailable(Unavailable):
    """The bucket cannot be reached now (or refuses for now); the request may be retried."""

    what = "bucket"


def s3_client(endpoint_url: str | None = None, **client_kw: Any) -> Any:
    """A boto3 S3 client with bounded waits: a bucket that does not answer costs a request
    seconds, not minutes."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_S,
        read_timeout=S3_READ_S,
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config, **client_kw)


def key_prefix(prefix: str) -> str:
    """``--s3-prefix`` as keys start with it: ``""`` or ``"name/"``."""
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


def s3_missing(exc: BaseException) -> bool:
    """Whether ``exc`` is S3 saying the object or the multipart upload is not there."""
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in S3_MISSING


@contextlib.contextmanager
def s3_errors(bucket: str) -> Iterator[None]:
    """S3's failures as BucketUnavailable (the sink answers 503 with Retry-After, and ingest
    waits without counting an attempt), except "not there", which the caller handles."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if s3_missing(exc):
            raise
        code = exc.response.get("Error", {}).get("Code", "?")
        raise BucketUnavailable(f"s3://{bucket}: {code}: {exc}") from None
    except BotoCoreError as exc:
        raise BucketUnavailable(f"s3://{bucket}: {exc}") from None


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
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = key_prefix(prefix)
        self.s3 = s3_client(endpoint_url, **client_kw)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, key: str, path: Path) -> None:
        with s3_errors(self.bucket):
            self.s3.upload_file(str(path), self.bucket, self._key(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            with s3_errors(self.bucket):
                body = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                return bytes(body.read())
        except self.s3.exceptions.ClientError as exc:
            raise SinkError(f"no blob {key!r}") from exc

    def exists(self, key: str) -> bool:
        try:
            with s3_errors(self.bucket):
                self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.s3.exceptions.ClientError:
            return False

    def delete(self, key: str) -> None:
        with s3_errors(self.bucket):
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        with s3_errors(self.bucket):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)
