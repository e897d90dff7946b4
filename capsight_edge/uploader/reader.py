"""Reading a file's chunks for sending: one chunk ahead in a thread, each chunk's sha256 for the
``Upload-Checksum`` header, and the whole file's sha256 as the chunks go by.

The whole-file digest is what makes "never deliver a corrupt file" cheap: the bytes are hashed in
file order as they are read for sending (a gap, after a resume, is read from disk once), so a
file that no longer matches its manifest is caught when its last chunk is confirmed, before the
bundle's manifest goes, without reading every file twice more before and after.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from pathlib import Path
from typing import BinaryIO


class LocalFileProblem(Exception):
    """A bundle's file is missing or no longer what the manifest says: never sent."""


class ChunkReader:
    def __init__(self, path: Path, length: int, *, checksum: bool) -> None:
        self.path = path
        self.length = length
        self.checksum = checksum
        self._whole = hashlib.sha256()
        self._hashed_to = 0
        self._lock = threading.Lock()
        self._ahead: tuple[int, int, asyncio.Future[tuple[bytes, str]]] | None = None
        self._final = ""

    def _absorb_to(self, offset: int, f: BinaryIO) -> None:
        """Hash the file from where the whole-file digest stands up to ``offset``."""
        f.seek(self._hashed_to)
        while self._hashed_to < offset:
            block = f.read(min(1 << 20, offset - self._hashed_to))
            if not block:
                raise LocalFileProblem(f"{self.path.name}: shorter than planned")
            self._whole.update(block)
            self._hashed_to += len(block)

    def _read(self, offset: int, length: int) -> tuple[bytes, str]:
        try:
            with open(self.path, "rb") as f:
                with self._lock:
                    if offset > self._hashed_to:
                        self._absorb_to(offset, f)
                f.seek(offset)
                data = f.read(length)
        except OSError as exc:
            raise LocalFileProblem(f"{self.path.name}: {exc.strerror or exc}") from exc
        if len(data) != length:
            raise LocalFileProblem(f"{self.path.name}: shorter than when its upload was planned")
        if offset == 0 and length == self.length and self.checksum:
            # The whole file in one chunk: its checksum is the whole-file digest; hash once.
            h = hashlib.sha256(data)
            with self._lock:
                self._final = h.hexdigest()
            return data, base64.b64encode(h.digest()).decode()
        with self._lock:
            if offset == self._hashed_to:
                self._whole.update(data)
                self._hashed_to += length
        digest = ""
        if self.checksum:
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        return data, digest

    async def read(self, offset: int, length: int, next_length: int) -> tuple[bytes, str]:
        """The chunk at ``offset`` (and its base64 sha256 when ``checksum``); the next chunk
        of ``next_length`` starts reading in a thread while this one is sent."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (offset, length):
            data, digest = await ahead[2]
        else:
            if ahead is not None:
                await asyncio.gather(ahead[2], return_exceptions=True)
            data, digest = await asyncio.to_thread(self._read, offset, length)
        nxt = offset + length
        if nxt < self.length and next_length > 0:
            n = min(next_length, self.length - nxt)
            self._ahead = (nxt, n, asyncio.ensure_future(asyncio.to_thread(self._read, nxt, n)))
        return data, digest

    async def close(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await asyncio.gather(ahead[2], return_exceptions=True)

    async def sha256(self) -> str:
        """The whole file's sha256 (reads what was not read for sending)."""
        await self.close()
        if self._final:
            return self._final

        def rest() -> str:
            try:
                with open(self.path, "rb") as f, self._lock:
                    self._absorb_to(self.length, f)
                    if f.read(1):
                        raise LocalFileProblem(f"{self.path.name}: longer than planned")
            except OSError as exc:
                raise LocalFileProblem(f"{self.path.name}: {exc.strerror or exc}") from exc
            return self._whole.hexdigest()

        return await asyncio.to_thread(rest)
