"""The tus 1.0 client protocol as a sans-I/O state machine.

:class:`TusUpload` holds what is known about one file's upload (its URL, the offset the server has
confirmed, whether the next step is a creation, a HEAD or a PATCH) and never touches a socket: the
driver asks :meth:`TusUpload.next_request` what to send, sends it, and hands the status and headers
back to :meth:`TusUpload.receive`, which answers with an :class:`Outcome` saying what happened and
whether it can be retried. Tests drive it with plain values; the async driver stays thin.

Rules followed (tus 1.0 core, creation, creation-with-upload, checksum, termination):
- the server's ``Upload-Offset`` is the only truth about what is stored: after any interruption
  the next step is a HEAD, never a guess;
- 409 (offset mismatch) re-syncs from HEAD; 404 and 410 mean the upload is gone: start over;
- 460 (checksum mismatch): the chunk was not applied, send it again;
- 401/403: the token is not accepted: nothing more can go until it changes;
- 5xx, 423, 429 and transport errors are retryable; other 4xx are permanent.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"

# What an outcome means for the caller.
PROGRESS = "progress"  # bytes were stored (or the upload was created); carry on
COMPLETE = "complete"  # the server holds every byte
RESYNC = "resync"  # ask the server where it is (HEAD), then carry on
RESTART = "restart"  # the upload vanished on the server: create it again from byte 0
RESEND = "resend"  # the chunk failed its checksum and was not applied: send it again
RETRY = "retry"  # a transient failure: back off, then carry on from HEAD
UNAUTHORIZED = "unauthorized"  # the token is refused: stop until it changes
PERMANENT = "permanent"  # retrying cannot help
TERMINATED = "terminated"  # a DELETE went through (or the upload was gone already)
REDIRECTED = "redirected"  # 307/308: the same request goes again to where it was sent
MISCONFIGURED = "misconfigured"  # not a tus endpoint there (404/405 on creation, redirect loops)
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class ServerCaps:
    """What an OPTIONS answer says the server can do."""

    versions: tuple[str, ...] = (TUS_VERSION,)
    extensions: frozenset[str] = frozenset({"creation"})
    checksum_algorithms: frozenset[str] = frozenset()
    max_size: int | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> ServerCaps:
        def items(name: str) -> list[str]:
            return [x.strip().lower() for x in headers.get(name, "").split(",") if x.strip()]

        max_size = headers.get("Tus-Max-Size", "")
        return cls(
            versions=tuple(items("Tus-Version")) or (TUS_VERSION,),
            extensions=frozenset(items("Tus-Extension")),
            checksum_algorithms=frozenset(items("Tus-Checksum-Algorithm")),
            max_size=int(max_size) if max_size.isdigit() else None,
        )

    @property
    def sha256(self) -> bool:
        return "checksum" in self.extensions and "sha256" in self.checksum_algorithms


@dataclass(frozen=True)
class TusRequest:
    """One request to send. ``body`` is the ``(offset, length)`` range of the file to send;
    ``checksum``: the driver adds ``Upload-Checksum: sha256 <base64>`` of exactly those bytes."""

    method: str
    url: str
    headers: dict[str, str]
    body: tuple[int, int] | None = None
    checksum: bool = False


@dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind in (PROGRESS, COMPLETE, TERMINATED)


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items()
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


@dataclass
class TusUpload:
    """One file's upload. ``url``/``offset`` come from the journal when resuming; ``offset`` is
    only ever set from what the server reported. ``chunk_bytes`` may change between requests."""

    endpoint: str
    length: int
    metadata: dict[str, str]
    token: str = ""
    url: str = ""
    offset: int = 0
    chunk_bytes: int = 4 << 20
    caps: ServerCaps = field(default_factory=ServerCaps)
    state: str = ""  # "create" | "head" | "patch" | "done"
    restarts: int = 0
    resends: int = 0
    resyncs: int = 0
    redirects: int = 0
    _sent: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.state:
            self.state = "head" if self.url else "create"
        if self.caps.max_size is not None and self.length > self.caps.max_size:
            raise ValueError(f"{self.length} bytes exceed the server's Tus-Max-Size")

    # -- what to send ----------------------------------------------------------------------
    def _headers(self, **extra: str) -> dict[str, str]:
        h = {"Tus-Resumable": TUS_VERSION, **extra}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _chunk(self) -> tuple[int, int]:
        return (self.offset, min(self.chunk_bytes, self.length - self.offset))

    @property
    def done(self) -> bool:
        return self.state == "done"

    def next_request(self) -> TusRequest | None:
        if self.state == "done":
            return None
        if self.state == "create":
            headers = self._headers(**{"Upload-Length": str(self.length)})
            if self.metadata:
                headers["Upload-Metadata"] = encode_metadata(self.metadata)
            body = None
            if "creation-with-upload" in self.caps.extensions and self.length > 0:
                body = (0, min(self.chunk_bytes, self.length))
                headers["Content-Type"] = OFFSET_TYPE
            self._sent = body
            return TusRequest("POST", self.endpoint, headers, body, bool(body) and self.caps.sha256)
        if self.state == "head":
            self._sent = None
            return TusRequest("HEAD", self.url, self._headers())
        body = self._chunk()
        self._sent = body
        headers = self._headers(**{"Upload-Offset": str(self.offset), "Content-Type": OFFSET_TYPE})
        return TusRequest("PATCH", self.url, headers, body, self.caps.sha256)

    def termination_request(self) -> TusRequest | None:
        """DELETE for an upload that will not be finished (the bundle was evicted or changed)."""
        return TusRequest("DELETE", self.url, self._headers()) if self.url else None

    # -- what came back ----------------------------------------------------------------------
    def interrupted(self, detail: str) -> Outcome:
        """The request did not get an answer (connection lost, timeout): ask where we are."""
        self.state = "head" if self.url else "create"
        return Outcome(RETRY, detail)

    def receive(self, method: str, status: int, headers: Mapping[str, str]) -> Outcome:
        if status in (401, 403):
            return Outcome(UNAUTHORIZED, f"{method} answered {status}: the token is refused")
        if status in (307, 308) and headers.get("Location"):
            return self._redirected(method, headers["Location"])
        if status != 307 and status != 308:
            self.redirects = 0
        if method == "DELETE":
            if status in (204, 200, 404, 410):
                self.url, self.state = "", "create"
                return Outcome(TERMINATED)
            return self._failure(method, status, headers)
        if method == "POST":
            return self._created(status, headers)
        if method == "HEAD":
            return self._head(status, headers)
        return self._patched(status, headers)

    def _offset_from(self, headers: Mapping[str, str]) -> int | None:
        raw = headers.get("Upload-Offset", "")
        if not raw.isdigit() or int(raw) > self.length:
            return None
        return int(raw)

    def _advance(self, offset: int) -> Outcome:
        self.offset = offset
        self.state = "done" if offset == self.length else "patch"
        return Outcome(COMPLETE if self.state == "done" else PROGRESS)

    def _redirected(self, method: str, location: str) -> Outcome:
        """A permanent or temporary redirect keeps the method and the body: send the same
        request to the new place (the endpoint for a creation, the upload's URL otherwise)."""
        self.redirects += 1
        if self.redirects > MAX_REDIRECTS:
            return Outcome(MISCONFIGURED, f"{method}: more than {MAX_REDIRECTS} redirects")
        if method == "POST":
            self.endpoint = urljoin(self.endpoint, location)
        else:
            self.url = urljoin(self.url or self.endpoint, location)
        return Outcome(REDIRECTED, f"{method} redirected to {location}")

    def _created(self, status: int, headers: Mapping[str, str]) -> Outcome:
        if status == 460:  # the first chunk failed its checksum: create again
            self.resends += 1
            return Outcome(RESEND, "460 on creation: the first chunk was not applied")
        if status in (404, 405):
            return Outcome(
                MISCONFIGURED, f"POST answered {status}: {self.endpoint} is not a tus endpoint"
            )
        if status != 201:
            return self._failure("POST", status, headers)
        location = headers.get("Location", "")
        if not location:
            return Outcome(PERMANENT, "201 Created without a Location")
        self.url = urljoin(self.endpoint, location)
        self.offset = 0
        if self._sent is not None:
            offset = self._offset_from(headers)
            if offset is None:  # the server ignored the body: ask
                self.state = "head"
                return Outcome(RESYNC, "no Upload-Offset after creation-with-upload")
            return self._advance(offset)
        return self._advance(0)

    def _head(self, status: int, headers: Mapping[str, str]) -> Outcome:
        if status in (404, 410):
            return self._restart(f"HEAD answered {status}: the upload is gone")
        if status not in (200, 204):
            return self._failure("HEAD", status, headers)
        offset = self._offset_from(headers)
        length = headers.get("Upload-Length", "")
        if offset is None:
            return Outcome(RETRY, "HEAD without a valid Upload-Offset")
        if length.isdigit() and int(length) != self.length:
            return self._restart(f"the server holds an upload of {length} bytes, not {self.length}")
        return self._advance(offset)

    def _patched(self, status: int, headers: Mapping[str, str]) -> Outcome:
        if status == 204:
            offset = self._offset_from(headers)
            expected = self._sent[0] + self._sent[1] if self._sent else None
            if offset is None or (expected is not None and offset > expected):
                self.state = "head"
                return Outcome(RESYNC, "PATCH answered an unexpected Upload-Offset")
            return self._advance(offset)
        if status == 409:
            self.state, self.resyncs = "head", self.resyncs + 1
            return Outcome(RESYNC, "409: offsets differ; asking the server")
        if status == 460:
            self.resends += 1
            return Outcome(RESEND, "460: checksum mismatch, the chunk was not applied")
        if status in (404, 410):
            return self._restart(f"PATCH answered {status}: the upload is gone")
        return self._failure("PATCH", status, headers)

    def _restart(self, detail: str) -> Outcome:
        self.url, self.offset, self.state = "", 0, "create"
        self.restarts += 1
        return Outcome(RESTART, detail)

    def _failure(self, method: str, status: int, headers: Mapping[str, str]) -> Outcome:
        detail = f"{method} answered {status}"
        if status >= 500 or status in (408, 423, 429):
            self.state = "head" if self.url else "create"
            return Outcome(RETRY, detail, _retry_after(headers))
        return Outcome(PERMANENT, detail)
