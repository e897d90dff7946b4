"""The tus 1.0 upload endpoint (core + creation, creation-with-upload, creation-defer-length,
expiration, checksum, termination), as an ASGI app.

Safety rules, after tusd:
- the offset reported is the size of the upload's data file, fsync'd after every write: a killed
  server reports what is really stored, and a resent chunk never lands twice;
- a chunk with an ``Upload-Checksum`` is written in place behind a durable ``.pending`` marker
  that holds the verified size: the offset reported is the marker's while it exists, a chunk that
  fails its checksum (460) or is cut off is truncated away, and a marker left by a crash is
  rolled back before anything else touches the upload (a creation's own body needs no marker:
  nobody holds the upload's URL before the 201, so it has no offset to keep); without a
  checksum, whatever arrived before a disconnect is kept;
- one writer per upload at a time (an exclusive ``flock`` on the data file; 423 when busy);
- with ``staging`` (:mod:`cloud_sink.staging`) the data lives in a bucket instead: a chunk is
  received into a local spool file and verified before one step adds it there, and PostgreSQL's
  advisory lock makes one writer per upload across instances;
- bodies are streamed: memory does not grow with the upload's size;
- a device sees only its own uploads: another device's URL answers 404 like an unknown one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capsight_edge.durable import fsync_dir, make_dirs
from cloud_sink.auth import Sessions, bearer_identity
from cloud_sink.config import SinkConfig
from cloud_sink.db import SinkDB, Upload
from cloud_sink.observe import Observed, SinkMetrics
from cloud_sink.review import add_review
from cloud_sink.sql import Unavailable
from cloud_sink.staging import Conflict, S3Staging

log = logging.getLogger("capsight.sink.tus")
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
OFFSET_TYPE = "application/offset+octet-stream"
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
META_KEY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_META_VALUE = 1024
#: Bytes gathered per write of an upload's body. 1 MiB, not more: the kernel caches a bigger
#: write in 2 MiB pages, and a VM that hands freed 2 MiB blocks back to its host (free page
#: reporting, as on this project's Firecracker machines) faults those in again: 1 GiB written
#: in 4 MiB writes took 0.7 to 7.8 s there, in 1 MiB writes 0.7 s every time.
WRITE_BLOCK = 1 << 20


#: Most pieces one write gathers (``os.writev`` takes up to IOV_MAX, 1024 on Linux).
WRITE_PIECES = 512


def _write_all(fd: int, data: bytes | bytearray | list[bytes] | list[bytes | bytearray]) -> int:
    """Write every byte of ``data``; a list of pieces goes in one ``writev`` (no copy to join
    them first), the rest of a short write after it."""
    if not isinstance(data, list):
        data = [data]
    total = sum(len(piece) for piece in data)
    done = os.writev(fd, data) if data else 0
    if done < total:  # short: the rest, piece by piece
        skip = done
        for piece in data:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            view = memoryview(piece)[skip:]
            skip = 0
            while view:
                view = view[os.write(fd, view) :]
    return total


def _hash_back(fd: int, start: int, length: int, digest: Any) -> None:
    """Hash ``length`` bytes of the file from ``start``, read back from the page cache. Runs
    beside the chunk's fsync: while the disk writes, the CPUs are free, so the checksum costs
    no time that receiving the body could have used (on two cores, hashing as the bytes
    arrived made the receive a third slower)."""
    pos, end = start, start + length
    while pos < end:
        block = os.pread(fd, min(WRITE_BLOCK, end - pos), pos)
        if not block:
            raise OSError(f"the upload file is shorter than the {length} bytes just written")
        digest.update(block)
        pos += len(block)


def _durable_marker(marker: Path, size: int) -> None:
    """Record the verified size before any unverified byte is written, and make it durable
    first (its content and its name), so a crash or a power cut can always be rolled back.
    (On ext4 the file's fsync already committed the name: the folder's costs little there;
    POSIX promises the name only with it.)"""
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, str(size).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(marker.parent)


class TusError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_metadata(
    header: str | None,
    *,
    max_bytes: int = 2048,
    max_pairs: int = 16,
    max_value_chars: int = MAX_META_VALUE,
) -> dict[str, str]:
    """``key base64,key2 base64`` -> dict, within bounds (413 for a header over ``max_bytes``,
    400 for too many pairs, a repeated key, a malformed pair); sanitised: no control characters
    (no header injection), file names reduced to their last path component (no traversal)."""
    out: dict[str, str] = {}
    if not header:
        return out
    if len(header) > max_bytes:
        raise TusError(413, f"Upload-Metadata is longer than {max_bytes} bytes")
    pairs = header.split(",")
    if len(pairs) > max_pairs:
        raise TusError(400, f"Upload-Metadata has more than {max_pairs} pairs")
    for pair in pairs:
        parts = pair.strip().split(" ")
        if not parts[0] or len(parts) > 2 or not META_KEY.match(parts[0]):
            raise TusError(400, f"malformed Upload-Metadata pair {pair.strip()[:40]!r}")
        if parts[0] in out:
            raise TusError(400, f"Upload-Metadata names {parts[0]!r} twice")
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
                raise TusError(400, f"Upload-Metadata {parts[0]}: not base64 UTF-8") from exc
        if len(value) > max_value_chars:
            raise TusError(400, f"Upload-Metadata {parts[0]}: longer than {max_value_chars}")
        value = "".join(c for c in value if c.isprintable())
        if parts[0] in ("filename", "name"):
            value = value.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".") or "unnamed"
        out[parts[0]] = value
    return out


_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only, below 2**63


def int_header(raw: str | None, name: str) -> int | None:
    """A non-negative integer header: ASCII digits only (``isdigit`` would take ``²``), at
    most 19 of them; 400 otherwise."""
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise TusError(400, f"{name} must be a non-negative integer of at most 19 digits")
    return int(raw)


def _int_header(request: Request, name: str) -> int | None:
    return int_header(request.headers.get(name), name)


class BodyStalled(Exception):
    """A request body sent nothing for the configured time."""


async def _stalling(stream: AsyncIterator[bytes], stall_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; BodyStalled when none arrives for ``stall_s`` (the upload's lock is
    then released: one device cannot hold an upload by sending headers and waiting)."""
    it = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(stall_s):  # wait_for would make a task per chunk
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyStalled from None
        yield chunk


class TusApp:
    """Build with :func:`make_app`. A completed upload is queued for ingest in the same
    transaction that marks it complete; ``on_complete()`` then wakes whoever works the queue
    (never ingest itself: that is off the request path)."""

    def __init__(
        self,
        data_dir: Path,
        db: SinkDB,
        *,
        config: SinkConfig,
        on_complete: Callable[[], None] | None = None,
        staging: S3Staging | None = None,
    ) -> None:
        self.dir = make_dirs(data_dir / "blobs" / "uploads")
        self.db = db
        self.staging = staging
        self._writing: set[str] = set()  # uploads this process writes now (staged in S3)
        self.config = config
        self.max_size = config.limits.max_upload_bytes
        self.expire_s = config.sweep.expire_hours * 3600
        self.on_complete = on_complete
        self.rejected: dict[int, int] = {}
        #: Per device, held from the quota check to the new upload's row: without it, two
        #: creations at once both passed the check before either row was written, and a
        #: device could hold more uploads in progress than its quota. (Per process: several
        #: instances of the sink on one database can each let one more through.) One lock per
        #: authenticated device: as many as the devices an operator registered.
        self._creating: dict[str, asyncio.Lock] = {}

    # -- helpers ---------------------------------------------------------------------------
    def path(self, upload_id: str) -> Path:
        return self.dir / upload_id

    def pending(self, upload_id: str) -> Path:
        return self.path(upload_id).with_suffix(".pending")

    def offset(self, upload_id: str, up: Upload | None = None) -> int:
        """Verified bytes: all of them once complete (its data may have moved to the store),
        the marker's size while a checksummed chunk is being written (or after a crash left
        one), else the data file's size."""
        if up is not None and up.completed_utc is not None and up.length is not None:
            return up.length
        if self.staging is not None:
            return self.staging.offset(upload_id)
        try:
            return int(self.pending(upload_id).read_text())
        except (FileNotFoundError, ValueError):
            pass
        try:
            return self.path(upload_id).stat().st_size
        except FileNotFoundError:
            return 0

    def _roll_back(self, upload_id: str, fd: int) -> None:
        """Undo an unverified chunk that a crash left behind (called under the upload's lock)."""
        marker = self.pending(upload_id)
        try:
            size = int(marker.read_text())
        except FileNotFoundError:
            return
        except ValueError:  # the marker itself was cut short: nothing was written after it
            marker.unlink()
            return
        os.ftruncate(fd, min(size, os.fstat(fd).st_size))
        os.fsync(fd)
        marker.unlink()
        log.warning("upload %s: rolled back an unverified chunk to %d bytes", upload_id, size)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION, **extra}

    def auth(self, request: Request) -> str:
        who = bearer_identity(request, self.db)
        if who is None:
            raise TusError(401, "Authorization: Bearer <a device's active token> is required")
        if who.admin:
            raise TusError(403, "an admin token is not a device token: it cannot upload")
        return who.device

    def own_upload(self, upload_id: str, device: str) -> Upload:
        up = self.db.get_upload(upload_id) if UPLOAD_ID.match(upload_id) else None
        if up is None or up.device != device or up.terminated:
            raise TusError(404, "no such upload")  # another device's upload does not exist
        if up.completed_utc is None and (up.expires_ts < time.time() or up.removed_utc):
            raise TusError(410, "the upload expired")
        return up

    def expires_header(self, up: Upload) -> dict[str, str]:
        if up.completed_utc is not None:
            return {}
        return {
            "Upload-Expires": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(up.expires_ts))
        }

    # -- the endpoint ----------------------------------------------------------------------
    def check_quotas(self, device: str, length: int | None) -> None:
        """A device's uploads in progress, their declared bytes and its creations per minute:
        over a quota is 429 with Retry-After (413 when it can never fit)."""
        q = self.config.quotas
        now = time.time()
        use = self.db.usage(device, now)
        if length is not None and length > q.bytes_in_progress:
            raise TusError(
                413,
                f"Upload-Length {length} exceeds this device's quota of bytes "
                f"in progress ({q.bytes_in_progress})",
            )
        if use.created_last_minute >= q.creates_per_minute:
            wait = max(1, int(use.oldest_create_ts + 60 - now) + 1)
            raise TusError(
                429,
                f"more than {q.creates_per_minute} uploads created in a minute",
                retry_after=wait,
            )
        if use.uploads >= q.uploads_in_progress:
            raise TusError(
                429,
                f"{use.uploads} uploads in progress (quota "
                f"{q.uploads_in_progress}): finish or terminate some",
                retry_after=5,
            )
        if length is not None and use.bytes + length > q.bytes_in_progress:
            raise TusError(
                429,
                f"{use.bytes} bytes in progress; {length} more would pass the "
                f"quota of {q.bytes_in_progress}",
                retry_after=5,
            )

    async def dispatch(self, request: Request) -> Response:
        method = request.method
        override = request.headers.get("x-http-method-override")
        if method == "POST" and override:
            method = override.upper()
        upload_id = request.path_params.get("upload_id")
        try:
            if method == "OPTIONS":
                self.auth(request)
                return Response(
                    status_code=204,
                    headers=self.headers(
                        **{
                            "Tus-Version": TUS_VERSION,
                            "Tus-Extension": EXTENSIONS,
                            "Tus-Max-Size": str(self.max_size),
                            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
                        }
                    ),
                )
            # The database's calls run in threads: on a server each is a round trip, and the
            # event loop keeps receiving other devices' bodies meanwhile.
            device = await asyncio.to_thread(self.auth, request)
            if request.headers.get("tus-resumable") != TUS_VERSION:
                raise TusError(412, "Tus-Resumable must be 1.0.0")
            if upload_id is None:
                if method != "POST":
                    raise TusError(405, f"{method} is not allowed on the collection")
                return await self.create(request, device)
            if method == "HEAD":
                return await asyncio.to_thread(self.head, upload_id, device)
            if method == "PATCH":
                return await self.patch(request, upload_id, device)
            if method == "DELETE":
                return await self.delete(upload_id, device)
            raise TusError(405, f"{method} is not allowed on an upload")
        except TusError as exc:
            self.rejected[exc.status] = self.rejected.get(exc.status, 0) + 1
            log.info("%s %s -> %d: %s", method, request.url.path, exc.status, exc)
            headers = self.headers()
            if exc.retry_after is not None:
                headers["Retry-After"] = str(exc.retry_after)
            if exc.status == 412:
                headers["Tus-Version"] = TUS_VERSION
            if exc.status == 401:
                headers["WWW-Authenticate"] = "Bearer"
            return Response(
                str(exc) + "\n", status_code=exc.status, headers=headers, media_type="text/plain"
            )

    async def create(self, request: Request, device: str) -> Response:
        length = _int_header(request, "upload-length")
        defer = request.headers.get("upload-defer-length")
        if length is None and defer != "1":
            raise TusError(400, "Upload-Length or Upload-Defer-Length: 1 is required")
        if length is not None and defer is not None:
            raise TusError(400, "Upload-Length and Upload-Defer-Length together")
        if length is not None and length > self.max_size:
            raise TusError(413, f"Upload-Length {length} exceeds Tus-Max-Size {self.max_size}")
        lim, q = self.config.limits, self.config.quotas
        metadata = parse_metadata(
            request.headers.get("upload-metadata"),
            max_bytes=q.metadata_bytes,
            max_pairs=lim.metadata_pairs,
            max_value_chars=lim.metadata_value_chars,
        )
        upload_id = secrets.token_urlsafe(24)
        expires = time.time() + self.expire_s
        lock = self._creating.setdefault(device, asyncio.Lock())
        async with lock:
            self.check_quotas(device, length)
            if self.staging is not None:
                self.db.create_upload(upload_id, device, length, metadata, expires)
                try:
                    await asyncio.to_thread(self.staging.create, upload_id)
                except BaseException:  # the bucket is out of reach: no upload was made
                    self.db.forget_upload(upload_id)
                    raise
            else:
                await asyncio.to_thread(
                    self._create_file, upload_id, device, length, metadata, expires
                )
        up = await asyncio.to_thread(self.own_upload, upload_id, device)
        location = str(request.url_for("upload", upload_id=upload_id))
        headers = self.headers(Location=location, **self.expires_header(up))
        if request.headers.get("content-type") == OFFSET_TYPE:  # creation-with-upload
            try:
                offset, up = await self.write(request, up, 0, fresh=True)
            except BaseException:  # refused: no upload was made (no row, no data left)
                if self.staging is not None:
                    await asyncio.to_thread(self.staging.remove, upload_id)
                self.db.forget_upload(upload_id)
                self.path(upload_id).unlink(missing_ok=True)
                raise
            headers["Upload-Offset"] = str(offset)
        return Response(status_code=201, headers=headers)

    def _create_file(
        self, upload_id: str, device: str, length: int | None, metadata: Any, expires: float
    ) -> None:
        """The upload's data file and row (in a thread: the fsync and the commit do not hold up
        the bodies of other devices' uploads)."""
        os.close(os.open(self.path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        fsync_dir(self.dir)  # offsets it reports count bytes of this file: its name must last
        self.db.create_upload(upload_id, device, length, metadata, expires)

    def head(self, upload_id: str, device: str) -> Response:
        up = self.own_upload(upload_id, device)
        offset = self.offset(upload_id, up)
        # Every byte stored but never marked complete: the sink (or its database) went away
        # between the last write and the mark, and the client will not send again. Complete
        # it now (once; that queues its ingest).
        stored = up.completed_utc is None and not up.terminated and offset == up.length
        if stored and self.staging is not None:
            self.staging.finish(up.id)
        if stored and self.db.complete(up.id):
            log.info("upload %s from %s complete at HEAD", up.id, up.device)
            if self.on_complete is not None:
                self.on_complete()
        headers = self.headers(
            **{"Upload-Offset": str(offset), "Cache-Control": "no-store"},
            **self.expires_header(up),
        )
        if up.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(up.length)
        if up.metadata:
            headers["Upload-Metadata"] = ",".join(
                f"{k} {base64.b64encode(v.encode()).decode()}" if v else k
                for k, v in up.metadata.items()
            )
        return Response(status_code=200, headers=headers)

    async def patch(self, request: Request, upload_id: str, device: str) -> Response:
        up = await asyncio.to_thread(self.own_upload, upload_id, device)
        if request.headers.get("content-type") != OFFSET_TYPE:
            raise TusError(415, f"Content-Type must be {OFFSET_TYPE}")
        offset = _int_header(request, "upload-offset")
        if offset is None:
            raise TusError(400, "Upload-Offset is required")
        new_length = _int_header(request, "upload-length")
        if new_length is not None:
            if up.length is not None and new_length != up.length:
                raise TusError(400, "Upload-Length cannot change")
            if new_length > self.max_size:
                raise TusError(413, f"Upload-Length exceeds Tus-Max-Size {self.max_size}")
            if up.length is None:
                self.check_quotas(device, new_length)
                self.db.set_length(upload_id, new_length)
                up = self.own_upload(upload_id, device)
        new_offset, up = await self.write(request, up, offset)
        return Response(
            status_code=204,
            headers=self.headers(**{"Upload-Offset": str(new_offset)}, **self.expires_header(up)),
        )

    async def delete(self, upload_id: str, device: str) -> Response:
        up = self.own_upload(upload_id, device)
        if up.completed_utc is not None:  # its data belongs to ingest now: only forget it
            self.db.terminate(upload_id)
            return Response(status_code=204, headers=self.headers())
        async with self._locked(up.id):
            self.db.terminate(upload_id)
            self.db.mark_removed(upload_id)
            if self.staging is not None:
                await asyncio.to_thread(self.staging.remove, upload_id)
            self.path(upload_id).unlink(missing_ok=True)
            self.pending(upload_id).unlink(missing_ok=True)
        return Response(status_code=204, headers=self.headers())

    # -- writing ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _locked(self, upload_id: str) -> Any:
        """The upload's exclusive lock. A client that reconnects after a cut usually finds its
        dead request still holding it until the server notices the disconnect, so the lock is
        awaited for up to ``[timeouts] lock_wait_s`` before answering 423. Staged in a bucket,
        there is no data file: :meth:`_staged_lock` (yields None)."""
        if self.staging is not None:
            async with self._staged_lock(upload_id):
                yield None
            return
        try:
            fd = os.open(self.path(upload_id), os.O_RDWR)  # never re-created: DELETE wins
        except FileNotFoundError:
            raise TusError(404, "no such upload") from None
        try:
            deadline = time.monotonic() + self.config.timeouts.lock_wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as exc:
                    if time.monotonic() >= deadline:
                        raise TusError(423, "another request is writing this upload") from exc
                    await asyncio.sleep(0.05)
            self._roll_back(upload_id, fd)
            yield fd
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def _staged_lock(self, upload_id: str) -> Any:
        """One writer per upload staged in a bucket: this process's own set, then PostgreSQL's
        advisory lock on the upload, which the instance's connection holds (so another
        instance waits, then answers 423; a SIGKILLed instance's lock goes with its
        connection). Alone on a SQLite file, this process is the only writer."""
        key = f"capsight-upload:{upload_id}"
        deadline = time.monotonic() + self.config.timeouts.lock_wait_s
        while True:
            if upload_id not in self._writing:
                self._writing.add(upload_id)
                try:
                    if await asyncio.to_thread(self.db.db.try_advisory_lock, key):
                        break
                except BaseException:
                    self._writing.discard(upload_id)
                    raise
                self._writing.discard(upload_id)
            if time.monotonic() >= deadline:
                raise TusError(423, "another request is writing this upload")
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            self._writing.discard(upload_id)
            await asyncio.to_thread(self.db.db.advisory_unlock, key)

    def _checksum(self, request: Request) -> tuple[Any, bytes]:
        """The chunk's ``Upload-Checksum``: a fresh digest and the value it must reach
        (``None, b""`` without one)."""
        checksum = request.headers.get("upload-checksum")
        if not checksum:
            return None, b""
        algo, _, value = checksum.partition(" ")
        if algo not in CHECKSUMS:
            raise TusError(400, f"checksum algorithm {algo!r} is not supported")
        try:
            expected = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise TusError(400, "Upload-Checksum value is not base64") from exc
        return CHECKSUMS[algo](), expected

    async def _still_there(self, up: Upload) -> None:
        """404 if a DELETE (or the sweep) came while the request waited for the upload's lock."""
        fresh = await asyncio.to_thread(self.db.get_upload, up.id)
        if fresh is None or fresh.terminated or fresh.removed_utc:
            raise TusError(404, "no such upload")

    def _room(self, request: Request, up: Upload, offset: int, current: int) -> int:
        """The bytes this PATCH may still add (409 unless it starts at the stored offset, 413
        when its declared Content-Length would pass the upload's length)."""
        if offset != current:
            raise TusError(409, f"Upload-Offset {offset} != stored {current}")
        room = (up.length - current) if up.length is not None else self.max_size - current
        declared = _int_header(request, "content-length")
        if declared is not None and declared > room:
            raise TusError(413, f"{declared} bytes would pass the upload's length")
        return room

    async def write(
        self, request: Request, up: Upload, offset: int, *, fresh: bool = False
    ) -> tuple[int, Upload]:
        """Apply a request's body at ``offset``. ``fresh``: the body of the creation request
        itself (creation-with-upload)."""
        digest, expected = self._checksum(request)
        if up.completed_utc is not None:  # complete: nothing more can be written
            if offset != up.length:
                raise TusError(409, f"Upload-Offset {offset} != stored {up.length}")
            return up.length or 0, up
        if self.staging is not None:
            return await self.write_staged(request, up, offset, digest, expected)
        async with self._locked(up.id) as fd:
            await self._still_there(up)
            current = os.fstat(fd).st_size
            room = self._room(request, up, offset, current)
            # A checksummed chunk is written behind a durable marker of the verified size, so
            # a crash mid-chunk rolls back to it; except a creation's own body: nobody holds
            # that upload's URL until the 201 answers, so there is no offset to keep (a crash
            # leaves an upload nobody resumes, removed at its expiry).
            checked = digest is not None
            marker = self.pending(up.id) if checked and not fresh else None
            if marker is not None:
                # fsyncs run in a thread: the event loop keeps serving other devices meanwhile
                await asyncio.to_thread(_durable_marker, marker, current)
            written = 0
            too_big = applied = False
            try:
                os.lseek(fd, current, os.SEEK_SET)
                # Double-buffered: the disk write of one block runs in a thread while the next
                # block arrives; one write in flight at a time keeps memory bounded. A checksum
                # is verified after the body, beside its fsync (``_hash_back``).
                loop = asyncio.get_running_loop()
                pending: list[bytes] = []  # the pieces as they came, written in one writev
                pending_size = 0
                in_flight: asyncio.Future[int] | None = None
                in_flight_size = 0
                try:
                    stall_s = self.config.timeouts.body_stall_s
                    async for chunk in _stalling(request.stream(), stall_s):
                        if written + in_flight_size + pending_size + len(chunk) > room:
                            too_big = True
                            break
                        pending.append(chunk)
                        pending_size += len(chunk)
                        if pending_size >= WRITE_BLOCK or len(pending) >= WRITE_PIECES:
                            if in_flight is not None:
                                written += await in_flight
                            in_flight = loop.run_in_executor(None, _write_all, fd, pending)
                            in_flight_size = pending_size
                            pending, pending_size = [], 0
                except (ClientDisconnect, BodyStalled) as cut:
                    if in_flight is not None:
                        written += await in_flight
                        in_flight = None
                    stalled = isinstance(cut, BodyStalled)
                    if checked:  # an unverifiable chunk is never applied
                        if stalled:
                            raise TusError(408, f"the body stalled for {stall_s:g} s") from None
                        raise TusError(400, "the client went away mid-chunk") from None
                    if stalled:  # without a checksum, what arrived is kept (tus core)
                        if pending:
                            written += _write_all(fd, pending)
                            pending, pending_size = [], 0
                        await asyncio.to_thread(os.fsync, fd)
                        applied = True
                        raise TusError(408, f"the body stalled for {stall_s:g} s") from None
                if in_flight is not None:
                    written += await in_flight
                    in_flight = None
                if too_big:
                    raise TusError(413, "the body passes the upload's length")
                if pending:
                    written += _write_all(fd, pending)
                synced = asyncio.ensure_future(asyncio.to_thread(os.fsync, fd))
                if digest is not None:
                    try:
                        await asyncio.to_thread(_hash_back, fd, current, written, digest)
                    finally:
                        await asyncio.gather(synced, return_exceptions=True)
                    if digest.digest() != expected:
                        raise TusError(460, "checksum mismatch: the chunk was not applied")
                await synced
                applied = True
            finally:
                if not applied and (checked or too_big):
                    os.ftruncate(fd, current)
                    os.fsync(fd)
                if marker is not None:
                    marker.unlink(missing_ok=True)
                    # a marker back from a power cut would roll a reported offset back
                    await asyncio.to_thread(fsync_dir, self.dir)
            new_offset = os.fstat(fd).st_size
        return new_offset, await self._after_write(up, current, new_offset, digest)

    async def write_staged(
        self, request: Request, up: Upload, offset: int, digest: Any, expected: bytes
    ) -> tuple[int, Upload]:
        """A PATCH of an upload staged in a bucket: the body into a local spool file (bounded
        by the upload's room), verified, then added in one step (``S3Staging.apply``)."""
        assert self.staging is not None
        staging = self.staging
        async with self._staged_lock(up.id):
            await self._still_there(up)
            current = await asyncio.to_thread(staging.offset, up.id)
            room = self._room(request, up, offset, current)
            stall_s = self.config.timeouts.body_stall_s
            fd, spool = tempfile.mkstemp(dir=self.dir, prefix=".spool-")
            try:
                received, cut = 0, ""
                try:
                    async for chunk in _stalling(request.stream(), stall_s):
                        if received + len(chunk) > room:
                            raise TusError(413, "the body passes the upload's length")
                        _write_all(fd, chunk)
                        if digest is not None:
                            digest.update(chunk)
                        received += len(chunk)
                except ClientDisconnect:
                    cut = "the client went away mid-chunk"
                except BodyStalled:
                    cut = f"the body stalled for {stall_s:g} s"
                status = 408 if cut.startswith("the body stalled") else 400
                if cut and digest is not None:  # an unverifiable chunk is never applied
                    raise TusError(status, cut)
                if digest is not None and digest.digest() != expected:
                    raise TusError(460, "checksum mismatch: the chunk was not applied")
                final = up.length is not None and current + received == up.length
                new_offset = current
                if received or final:  # without a checksum, what arrived is kept (tus core)
                    try:
                        new_offset = await asyncio.to_thread(
                            staging.apply, up.id, current, Path(spool), final
                        )
                    except Conflict as exc:
                        raise TusError(409, str(exc)) from None
                if cut:
                    raise TusError(status, cut)
            finally:
                os.close(fd)
                Path(spool).unlink(missing_ok=True)
        return new_offset, await self._after_write(up, current, new_offset, digest)

    async def _after_write(self, up: Upload, current: int, new_offset: int, digest: Any) -> Upload:
        """Complete the upload (and queue its ingest) when the write reached its length."""
        if up.length is not None and new_offset == up.length:
            # One sha256-checksummed request carried the whole upload: its digest is the file's.
            whole = digest.hexdigest() if digest is not None and current == 0 else None
            sha256 = whole if digest is not None and digest.name == "sha256" else None
            completed = await asyncio.to_thread(self.db.complete, up.id, sha256)  # and queued
            if completed:
                up = self.db.get_upload(up.id) or up
                log.info("upload %s from %s complete (%d bytes)", up.id, up.device, new_offset)
                if self.on_complete is not None:
                    self.on_complete()
        return up


def unavailable_response(exc: Exception) -> Response:
    """503 with Retry-After: the database server or the bucket is out of reach for now (a
    cart's uploader backs off and comes back; nothing it sent is lost: a chunk is applied
    whole or not at all, and the offset says which)."""
    what = exc.what if isinstance(exc, Unavailable) else "database"
    log.warning("%s out of reach: %s", what, exc)
    return Response(
        f"the sink's {what} is out of reach; retry later\n",
        status_code=503,
        headers={
            "Retry-After": str(Unavailable.retry_after_s),
            "Tus-Resumable": TUS_VERSION,
        },
        media_type="text/plain",
    )


def make_app(
    data_dir: str | os.PathLike[str],
    *,
    config: SinkConfig | None = None,
    max_size: int | None = None,
    expire_s: float | None = None,
    blobs: Any = None,
    ingest_workers: int = 1,
    db: str | None = None,
    instance: str = "",
    staging: Callable[[SinkDB], S3Staging] | None = None,
) -> Starlette:
    """The sink: the tus endpoint at ``/files/``, ingest into ``blobs`` (default: a local folder
    under ``data_dir``) and the index, the JSON API under ``/api/``, and the sweep.
    ``db``: a ``postgresql://`` URL that several instances share, for the sink's tables and
    the index (default: ``sink.db`` and ``index.db`` in ``data_dir``); ``instance``: this
    instance's name on its ingest claims and metrics; ``staging``: makes the
    :class:`~cloud_sink.staging.S3Staging` that keeps uploads in progress in a bucket (default:
    files in ``data_dir``, which several instances must then share).
    ``config``: limits, quotas, timeouts (``max_size`` and ``expire_s`` override two of them);
    ``ingest_workers``: background workers on the ingest queue (0: none here, the queue
    waits)."""
    from cloud_sink.api import add_api
    from cloud_sink.blobs import LocalBlobStore
    from cloud_sink.index import Index
    from cloud_sink.ingest import Ingest, IngestWorker
    from cloud_sink.sweep import Sweeper

    cfg = config or SinkConfig()
    if max_size is not None:
        cfg = cfg.model_copy(
            update={"limits": cfg.limits.model_copy(update={"max_upload_bytes": max_size})}
        )
    if expire_s is not None:
        cfg = cfg.model_copy(
            update={"sweep": cfg.sweep.model_copy(update={"expire_hours": expire_s / 3600})}
        )
    data = Path(os.path.expanduser(data_dir))
    sink_db = SinkDB(db or data / "sink.db")
    index = Index(db or data / "index.db")
    staged = staging(sink_db) if staging is not None else None
    tus = TusApp(data, sink_db, config=cfg, staging=staged)
    store = blobs or LocalBlobStore(data / "blobs" / "store")
    metrics = SinkMetrics(sink_db.gauges, instance=instance, database=sink_db.db.dialect)
    ingest = Ingest(sink_db, store, index, tus.dir, cfg.limits, staging=staged)
    ingest.metrics = metrics
    ingest.instance, ingest.lease_s = instance, cfg.timeouts.ingest_lease_s
    workers = [IngestWorker(ingest) for _ in range(max(0, ingest_workers))]
    sweeper = Sweeper(sink_db, index, tus.dir, cfg.sweep, staging=staged)

    def wake() -> None:
        for w in workers:
            w.wake()

    tus.on_complete = wake

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sweeper.start()
        for w in workers:
            await w.start()
        try:
            yield
        finally:
            for w in workers:
                await w.stop()
            await sweeper.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "tus": TUS_VERSION})

    async def readyz(request: Request) -> Response:
        """Ready to serve: the database answers, and the bucket that holds uploads in progress
        (a load balancer routes around a 503)."""
        await asyncio.to_thread(sink_db.ping)  # Unavailable: 503 with Retry-After
        if staged is not None:
            await asyncio.to_thread(staged.check)
        return JSONResponse({"ok": True})

    methods = ["POST", "HEAD", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/files/", tus.dispatch, methods=methods, name="files"),
        Route("/files/{upload_id}", tus.dispatch, methods=methods, name="upload"),
    ]
    from cloud_sink.registry import add_registry

    sessions = Sessions(data / "ui.key")
    routes = add_review(routes, sink_db, index, store, data, sessions)
    routes = add_registry(routes, sink_db, data)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return unavailable_response(exc)

    app = Starlette(
        routes=add_api(routes, sink_db, index, cfg, sweeper, ingest, metrics, sessions),
        lifespan=lifespan,
        middleware=[Middleware(Observed, metrics=metrics)],
        exception_handlers={Unavailable: unavailable},
    )
    app.state.tus, app.state.db, app.state.index, app.state.ingest = tus, sink_db, index, ingest
    app.state.sweeper, app.state.config, app.state.metrics = sweeper, cfg, metrics
    return app
