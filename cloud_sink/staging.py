"""Uploads in progress in an S3 bucket (``serve --staging s3``), in the manner of tusd's s3store,
so that sink instances need no shared volume: any instance answers HEAD and continues a PATCH.

An upload is one S3 multipart upload on ``<prefix>uploads/<id>``. S3 takes parts of at least
5 MiB (all but the last), and a cart sends 1 MiB chunks, so bytes too few for a part wait in a
*tail* object; the next chunk is added to them, and once they make a part (or end the upload)
they become one. What the upload holds is recorded in the database (``staged_uploads``: its
parts with their ETags, the tail's key and size) and only after S3 holds those bytes, in one
statement that also checks that no other writer moved the offset meanwhile. So:

- the offset reported is the database's, and every byte it counts is in the bucket;
- a chunk is applied in one step, whole or not at all: it is received into a local spool file
  (and verified against its ``Upload-Checksum``) before anything is sent to S3, and a crash
  before the statement leaves only unreferenced objects (a new tail under a fresh name, removed
  with the upload; a part number the next chunk writes again), never a changed offset;
- one writer per upload: this process's own lock, and across instances PostgreSQL's advisory
  lock on the upload, held by the instance's connection (a SIGKILLed instance lets go with it);
- the finished upload becomes one object (CompleteMultipartUpload); ingest fetches it to a
  local file to verify and store it, on whichever instance claims it.

A bucket that does not answer is :class:`~cloud_sink.blobs.BucketUnavailable`: 503 with
``Retry-After``, and the chunk is not applied (the cart sends it again).

Costs: a chunk that does not finish a part is written to S3 again with the tail (1 MiB chunks
write each byte about three times before it is in a part); a chunk of 5 MiB or more goes
straight into parts. ``benchmarks/bench_sink_scaleout.py`` compares this with a shared folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud_sink.blobs import key_prefix, s3_client, s3_errors, s3_missing
from cloud_sink.db import SinkDB, SinkError, Staged

#: S3's smallest part (all but the last of an upload).
MIN_PART = 5 << 20
#: The largest part the sink sends: held in memory while it goes out, so memory stays bounded
#: whatever the chunk's size.
PART_BYTES = 8 << 20
#: S3's most parts in one upload (8 MiB parts: uploads up to 78 GiB).
MAX_PARTS = 10_000


class Conflict(SinkError):
    """Another writer changed the upload's offset meanwhile (the request answers 409)."""


class S3Staging:
    """Uploads in progress as S3 multipart uploads (see the module's docstring)."""

    def __init__(
        self,
        bucket: str,
        db: SinkDB,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        part_bytes: int = PART_BYTES,
        **client_kw: Any,
    ) -> None:
        if part_bytes < MIN_PART:
            raise SinkError(f"a part must hold at least {MIN_PART} bytes (S3's minimum)")
        self.bucket, self.db, self.part_bytes = bucket, db, part_bytes
        self.prefix = key_prefix(prefix)
        self.s3 = s3_client(endpoint_url, **client_kw)

    def key(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}"

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}uploads/"

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return s3_errors(self.bucket)

    def _state(self, upload_id: str) -> Staged:
        st = self.db.staged(upload_id)
        if st is None:
            raise SinkError(f"upload {upload_id} has no staged data")
        return st

    # -- an upload's life -----------------------------------------------------------------------
    def create(self, upload_id: str) -> None:
        with self._errors():
            made = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key(upload_id))
        self.db.stage(upload_id, made["UploadId"])

    def offset(self, upload_id: str) -> int:
        st = self.db.staged(upload_id)
        return st.offset if st is not None else 0

    def apply(self, upload_id: str, offset: int, body: Path, final: bool) -> int:
        """Add the verified bytes in ``body`` after ``offset`` (blocking: run it in a thread).
        ``final``: they end the upload. Returns the new offset; Conflict when the upload no
        longer holds ``offset`` bytes; BucketUnavailable when S3 does not answer."""
        st = self._state(upload_id)
        if st.offset != offset or st.finished:
            raise Conflict(f"Upload-Offset {offset} != stored {st.offset}")
        size = body.stat().st_size
        total = st.tail_bytes + size
        parts = list(st.parts)
        tail_key, tail_bytes = "", 0
        with self._errors(), self._joined(st, body) as source:
            done = 0
            while done < total:
                n = min(self.part_bytes, total - done)
                if n < MIN_PART and not final:  # too few for a part yet: the new tail
                    tail_key = f"{self.key(upload_id)}.tail.{secrets.token_hex(8)}"
                    self.s3.put_object(Bucket=self.bucket, Key=tail_key, Body=source.read(n))
                    tail_bytes = n
                    break
                number = (parts[-1][0] if parts else 0) + 1
                if number > MAX_PARTS:
                    raise SinkError(f"upload {upload_id} would need more than {MAX_PARTS} parts")
                sent = self.s3.upload_part(
                    Bucket=self.bucket,
                    Key=self.key(upload_id),
                    UploadId=st.s3_upload_id,
                    PartNumber=number,
                    Body=source.read(n),
                )
                parts.append((number, n, str(sent["ETag"])))
                done += n
        if not self.db.restage(upload_id, offset, parts, tail_key, tail_bytes):
            self._forget_object(tail_key)
            raise Conflict(f"upload {upload_id} was written by another request meanwhile")
        self._forget_object(st.tail_key)  # its bytes are in a part or in the new tail now
        if final:
            self.finish(upload_id)
        return offset + size

    @contextlib.contextmanager
    def _joined(self, st: Staged, body: Path) -> Iterator[Any]:
        """The tail's bytes, then the body's, as one stream (the tail is under 5 MiB)."""
        with open(body, "rb") as fh:
            if not st.tail_key:
                yield fh
                return
            try:
                obj = self.s3.get_object(Bucket=self.bucket, Key=st.tail_key)
            except self.s3.exceptions.ClientError as exc:
                if s3_missing(exc):
                    raise SinkError(f"the tail {st.tail_key} is gone from the bucket") from None
                raise
            tail = obj["Body"].read()
            if len(tail) != st.tail_bytes:
                raise SinkError(
                    f"the tail {st.tail_key} holds {len(tail)} bytes, not {st.tail_bytes}"
                )
            yield _Chain(io.BytesIO(tail), fh)

    def finish(self, upload_id: str) -> None:
        """Join the parts into one object (once; again after a crash between the two is a
        no-op). An upload of no bytes has no part: an empty object stands for it."""
        st = self._state(upload_id)
        if st.finished:
            return
        key = self.key(upload_id)
        with self._errors():
            if not st.parts:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
                with contextlib.suppress(self.s3.exceptions.ClientError):
                    self.s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=st.s3_upload_id
                    )
            else:
                try:
                    self.s3.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=st.s3_upload_id,
                        MultipartUpload={
                            "Parts": [{"PartNumber": n, "ETag": e} for n, _, e in st.parts]
                        },
                    )
                except self.s3.exceptions.ClientError as exc:
                    # completed already (a crash came before the database heard of it)
                    if not s3_missing(exc):
                        raise
                    self.s3.head_object(Bucket=self.bucket, Key=key)
        self.db.staged_finished(upload_id)

    def fetch(self, upload_id: str, dest: Path) -> Path:
        """The finished upload as a local file at ``dest`` (fetched once per instance; a
        partial fetch never takes its name)."""
        if dest.is_file():
            return dest
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.fetch-")
        os.close(fd)
        try:
            with self._errors():
                self.s3.download_file(self.bucket, self.key(upload_id), tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def remove(self, upload_id: str) -> int:
        """Give the bucket's space back: the joined object, every tail (the recorded one, and
        any a crash left unrecorded between sending it and the database's statement), the
        multipart upload's parts. Returns the bytes the upload held."""
        st = self.db.staged(upload_id)
        if st is None:
            return 0
        key = self.key(upload_id)
        with self._errors():
            self._forget_object(key)
            listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{key}.tail.")
            for obj in listed.get("Contents", []):  # a few at most: one per crash
                self._forget_object(obj["Key"])
            if not st.finished:
                with contextlib.suppress(self.s3.exceptions.ClientError):
                    self.s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=st.s3_upload_id
                    )
        self.db.unstage(upload_id)
        return st.offset

    def _forget_object(self, key: str) -> None:
        if key:
            with self._errors(), contextlib.suppress(self.s3.exceptions.ClientError):
                self.s3.delete_object(Bucket=self.bucket, Key=key)

    def check(self) -> None:
        """BucketUnavailable unless the bucket answers now."""
        with self._errors():
            self.s3.head_bucket(Bucket=self.bucket)


class _Chain(io.RawIOBase):
    """Two readable streams as one, read in order."""

    def __init__(self, first: Any, second: Any) -> None:
        self.streams = [first, second]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while self.streams and (n < 0 or len(out) < n):
            block = self.streams[0].read(-1 if n < 0 else n - len(out))
            if not block:
                self.streams.pop(0)
                continue
            out += block
        return bytes(out)
