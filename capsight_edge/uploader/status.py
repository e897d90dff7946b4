"""What the uploader tells the rest of the cart: one status object, published in the journal.

A running uploader writes its :class:`UploaderStatus` to the journal's ``uploader`` key (every
second while anything changes, every ``PUBLISH_IDLE_S`` otherwise: each write is an fsync, and
flash storage wears). ``capsight run`` prints it, ``capsight queue`` and ``capsight status``
read it through :func:`queue_progress`, and the demo shows it per cart. ``upload pause`` holds
every uploader of a journal through its ``upload_paused`` key.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_KEY = "uploader"
PAUSE_KEY = "upload_paused"  # set by `capsight upload pause` (or any process) to hold uploads
# The link rate the sink confirmed, kept across restarts: a restarted uploader sizes its first
# chunk from it instead of starting blind.
RATE_KEY = "upload_measured_bytes_per_s"
#: The tus endpoint found behind the sink URL, with that URL (JSON): asked first on a restart.
ENDPOINT_KEY = "upload_endpoint"
PUBLISH_IDLE_S = 30.0
LIVE_S = 45.0  # a status older than this is not a running uploader's


@dataclass
class UploaderStatus:
    """The uploader's state as every reader sees it (JSON field names are an interface)."""

    utc: str = ""
    state: str = "starting"
    sink: str = ""
    rate_cap_bps: int | None = None
    last_error: str = ""
    last_upload_utc: str = ""
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str | None) -> UploaderStatus | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError):
            return None

    def age_s(self) -> float | None:
        if not self.utc:
            return None
        t = calendar.timegm(time.strptime(self.utc[:19], "%Y-%m-%dT%H:%M:%S"))
        return max(0.0, time.time() - t)


class StatusPublisher:
    """Writes a status to the journal when it changed (at most once a second: the caller's
    loop turns once a second) or every ``PUBLISH_IDLE_S`` when it did not."""

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self._last: dict[str, Any] = {}
        self._at = 0.0

    def publish(self, status: UploaderStatus, *, force: bool = False) -> None:
        body = {k: v for k, v in status.as_dict().items() if k != "utc"}
        now = time.monotonic()
        if force or body != self._last or now - self._at >= PUBLISH_IDLE_S:
            self.journal.kv_set(STATUS_KEY, json.dumps(status.as_dict()))
            self._last, self._at = body, now


def bundle_row(
    journal: Any, r: Any, flying: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One bundle as ``queue`` and ``queue ls`` show it (the ``bundle`` record's fields):
    ``bytes`` is what goes on the wire (zstd included), ``bytes_sent`` how much of it the sink
    confirmed, or, while the running uploader sends it, has on its way."""
    plan = journal.upload_plan(r.id)
    f = (flying or {}).get(r.id, {})
    total = sum(p.wire_bytes for p in plan) if plan else r.bytes
    in_transit = f.get("bytes_sent", r.upload_offset if plan else 0)
    sent = total if r.state == "uploaded" else in_transit
    return {
        "bundle_id": r.id,
        "state": r.state,
        "priority": r.priority,
        "rule": r.rule,
        "bytes": total,
        "bytes_sent": sent,
        "rate_bps": f.get("rate_bps"),
        "eta_s": f.get("eta_s"),
        "attempts": r.attempts,
        "created_utc": r.created_utc,
        "upload_url": r.upload_url,
        "last_error": r.last_error,
        "reason": r.reason,
    }


def queue_progress(journal: Any) -> dict[str, Any]:
    """What waits to go, with how far each bundle got, and what the running uploader says
    (rate and ETA of the bundles in flight; its status is at most a few seconds old)."""
    raw = journal.kv_get(STATUS_KEY)
    up = UploaderStatus.from_json(raw)
    age = up.age_s() if up else None
    # A running uploader writes at least every 30 s (every second while anything changes).
    live = up is not None and age is not None and age < LIVE_S and up.state != "stopped"
    flying = {p["bundle_id"]: p for p in up.in_flight} if (live and up) else {}
    rows = [bundle_row(journal, r, flying) for r in journal.upload_queue()]
    left = sum(r["bytes"] - r["bytes_sent"] for r in rows)
    cap = up.rate_cap_bps if (live and up) else None
    return {
        "uploader": {
            "running": live,
            "state": up.state if up else "never ran",
            "status_age_s": round(age, 1) if age is not None else None,
            "rate_cap_bps": cap,
            "stats": up.stats if up else {},
            "last_error": up.last_error if up else "",
        },
        "uploads_held": journal.kv_get(PAUSE_KEY),
        "bundles": rows,
        "bytes_left": left,
        "eta_s": round(left * 8 / cap, 1) if cap else None,
    }
