"""What the uploader counts and reports, and the two ways an attempt ends early."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


class RetryLater(Exception):
    def __init__(self, detail: str, *, sink_down: bool = False, after_s: float | None = None):
        super().__init__(detail)
        self.sink_down = sink_down
        self.after_s = after_s


class TokenRefused(Exception):
    pass


class SinkMisconfigured(Exception):
    """The sink URL does not lead to a tus endpoint (404/405 on creation, a redirect loop, a
    server that is not tus): the configuration's fault, never the bundle's."""


@dataclass
class UploadStats:
    bytes_sent: int = 0  # request bodies put on the wire, re-sends included
    bytes_confirmed: int = 0  # what the sink confirmed holding
    bundles_uploaded: int = 0
    bundles_quarantined: int = 0
    files_uploaded: int = 0
    retries: int = 0  # failed requests that were retried
    interruptions: int = 0  # requests that got no answer
    restarts: int = 0  # uploads created again (404/410)
    checksum_resends: int = 0  # chunks re-sent after 460
    heartbeats: int = 0
    heartbeat_failures: int = 0
    wire_saved_bytes: int = 0  # bytes zstd kept off the wire
    lost_bytes: int = 0  # body bytes of requests that failed: what had to be sent again
    lost_bytes_max: int = 0  # the most lost to one failed request (at most one chunk)
    busy_s: float = 0.0  # time with at least one upload in flight
    measured_bytes_per_s: float = 0.0  # bytes/s the sink confirmed over the last large request(s)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def measured(
        self, moved: int, seconds: float, *, failed: bool = False, whole_chunk: bool = False
    ) -> None:
        """One request's confirmed bytes and its duration; samples are smoothed. Requests
        under 1 MiB are not samples (their time is the round trip, not the link), unless they
        carried a whole chunk (``whole_chunk``: the chunk size, not the file, set their size):
        otherwise a rate that fell would keep chunks small and never be measured again.

        ``failed``: the bytes a request cut by the network got out, and its time. It can only
        lower the rate (a link that got slower, or a rate remembered from a faster one, must not
        keep chunks too large to ever get through); one cut within 1 s says nothing."""
        if seconds <= 0:
            return
        sample = moved / seconds
        old = self.measured_bytes_per_s
        if failed:
            if seconds >= 1.0 and (old == 0 or sample < old):
                self.measured_bytes_per_s = sample
            return
        if moved < 1 << 20 and not whole_chunk:
            return
        self.measured_bytes_per_s = sample if old == 0 else 0.5 * old + 0.5 * sample

    @property
    def rate_bps(self) -> float:
        """Mean rate on the wire while uploads were in flight."""
        return self.bytes_sent * 8 / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class BundleProgress:
    bundle_id: str
    priority: int
    total: int
    confirmed: int = 0
    started: float = field(default_factory=time.monotonic)
    rate_Bps: float = 0.0
    # Body bytes of the request in flight (shared with the pacer): what a live bar shows between
    # two confirmed offsets, which a 4 MiB chunk at 8 Mbit/s keeps apart for 4 s.
    sending: list[int] = field(default_factory=lambda: [0])
    _t: float = field(default_factory=time.monotonic)
    _b: int = 0

    def update(self, confirmed: int) -> None:
        self.confirmed = confirmed
        self.sending = [0]
        self._sample(confirmed)

    def _sample(self, position: int) -> None:
        """Rate from the bytes on their way (sent or confirmed), smoothed every 0.5 s."""
        now = time.monotonic()
        if now - self._t >= 0.5 or position >= self.total:
            inst = max(0, position - self._b) / max(1e-3, now - self._t)
            self.rate_Bps = inst if self.rate_Bps == 0 else 0.6 * self.rate_Bps + 0.4 * inst
            self._t, self._b = now, position

    def as_dict(self) -> dict[str, Any]:
        position = min(self.total, self.confirmed + self.sending[0])
        self._sample(position)
        left = max(0, self.total - position)
        return {
            "bundle_id": self.bundle_id,
            "priority": self.priority,
            "bytes_total": self.total,
            "bytes_confirmed": self.confirmed,
            "bytes_sent": position,
            "rate_bps": round(self.rate_Bps * 8),
            "eta_s": round(left / self.rate_Bps, 1) if self.rate_Bps > 0 else None,
        }
