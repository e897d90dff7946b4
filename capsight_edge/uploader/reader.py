"""Reading a file for sending: each chunk's sha256 (for ``Upload-Checksum``) computed one chunk
ahead in a thread, the body streamed from disk in 1 MiB blocks (memory does not grow with the
chunk size), and the whole file's sha256 as the chunks go by.

The whole-file digest is what makes "never deliver a corrupt file" cheap: the bytes are hashed in
file order as their chunks are checksummed (a gap, after a resume, is read from disk once), so a
file that no longer matches its manifest is caught when its last chunk is confirmed, before the
bundle's manifest goes. A chunk that is the whole file needs no hashing at all: its checksum is the
manifest's digest, and the sink's check of it is the end-to-end check of the file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from capsight_edge.bundle.manifest import sha256_file

BLOCK = 1 << 20


class LocalFileProblem(Exception):
    """A bundle's file is missing or no longer what the manifest says: never sent."""


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise LocalFileProblem(f"{path.name}: {exc.strerror or exc}") from exc


class ChunkReader:
    """``checksum``: the server verifies sha256 checksums. ``known_sha256``: the file's digest
    from the manifest (raw files only)."""

    def __init__(self, path: Path, length: int, *, checksum: bool, known_sha256: str = "") -> None:
        self.path = path
        self.length = length
        self.checksum = checksum
        self.known_sha256 = known_sha256
        self._whole = hashlib.sha256()
        self._hashed_to = 0
        self._final = ""
        self._lock = threading.Lock()
        self._ahead: tuple[int, int, asyncio.Future[str]] | None = None

    # -- checksums ---------------------------------------------------------------------------
    def _absorb_to(self, offset: int, f: BinaryIO) -> None:
        """Hash the file from where the whole-file digest stands up to ``offset``."""
        f.seek(self._hashed_to)
        while self._hashed_to < offset:
            block = f.read(min(BLOCK, offset - self._hashed_to))
            if not block:
                raise LocalFileProblem(f"{self.path.name}: shorter than planned")
            self._whole.update(block)
            self._hashed_to += len(block)

    def _digest(self, offset: int, length: int) -> str:
        """The chunk's sha256 (base64), feeding the whole-file digest when in order."""
        chunk = hashlib.sha256()
        with _open(self.path) as f, self._lock:
            if offset > self._hashed_to:
                self._absorb_to(offset, f)
            f.seek(offset)
            in_order = offset == self._hashed_to
            left = length
            while left > 0:
                block = f.read(min(BLOCK, left))
                if not block:
                    raise LocalFileProblem(
                        f"{self.path.name}: shorter than when its upload was planned"
                    )
                chunk.update(block)
                if in_order:
                    self._whole.update(block)
                    self._hashed_to += len(block)
                left -= len(block)
        return base64.b64encode(chunk.digest()).decode()

    def whole_file(self, offset: int, length: int) -> bool:
        return bool(self.known_sha256) and (offset, length) == (0, self.length)

    async def checksum_of(self, offset: int, length: int, next_length: int) -> str:
        """``Upload-Checksum`` value (base64 sha256) for the chunk at ``offset``; the next
        chunk's is computed in a thread meanwhile."""
        if self.whole_file(offset, length):
            return base64.b64encode(bytes.fromhex(self.known_sha256)).decode()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (offset, length):
            digest = await ahead[2]
        else:
            if ahead is not None:
                await asyncio.gather(ahead[2], return_exceptions=True)
            digest = await asyncio.to_thread(self._digest, offset, length)
        nxt = offset + length
        if nxt < self.length and next_length > 0:
            n = min(next_length, self.length - nxt)
            self._ahead = (nxt, n, asyncio.ensure_future(asyncio.to_thread(self._digest, nxt, n)))
        return digest

    def sink_verified(self) -> None:
        """The sink accepted the whole file under the manifest's digest."""
        self._final = self.known_sha256

    # -- the body ----------------------------------------------------------------------------
    async def blocks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """The chunk, read from disk in blocks as it is sent: the next block is read (in a
        thread) while this one goes out, so the socket never waits for the disk and at most
        two blocks are in memory."""
        f = await asyncio.to_thread(_open, self.path)

        def read(at: int, n: int) -> bytes:
            return os.pread(f.fileno(), n, at)

        ahead: asyncio.Future[bytes] | None = None
        try:
            pos, end = offset, offset + length
            if pos < end:
                ahead = asyncio.ensure_future(asyncio.to_thread(read, pos, min(BLOCK, end - pos)))
            while ahead is not None:
                data = await ahead
                ahead = None
                if not data:
                    raise LocalFileProblem(f"{self.path.name}: shorter than planned")
                pos += len(data)
                if pos < end:
                    ahead = asyncio.ensure_future(
                        asyncio.to_thread(read, pos, min(BLOCK, end - pos))
                    )
                yield data
        finally:
            if ahead is None or ahead.done():
                f.close()
            else:  # a read still in its thread: the file closes when it returns
                ahead.add_done_callback(lambda _: f.close())

    # -- the whole file ----------------------------------------------------------------------
    async def close(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await asyncio.gather(ahead[2], return_exceptions=True)

    async def sha256(self) -> str:
        """The whole file's sha256 (reads what was not hashed on the way)."""
        await self.close()
        if self._final:
            return self._final

        def rest() -> str:
            with _open(self.path) as f, self._lock:
                self._absorb_to(self.length, f)
                if f.read(1):
                    raise LocalFileProblem(f"{self.path.name}: longer than planned")
            return self._whole.hexdigest()

        return await asyncio.to_thread(rest)

    async def sha256_from_disk(self) -> str:
        """A fresh digest of the file as it is now."""

        def run() -> str:
            try:
                return sha256_file(self.path).sha256
            except OSError as exc:
                raise LocalFileProblem(f"{self.path.name}: {exc.strerror or exc}") from exc

        return await asyncio.to_thread(run)
