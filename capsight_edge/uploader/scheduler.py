"""Which bundles go now, and what the uploader's state is: decisions with no I/O.

:class:`UploadScheduler` is told what happened (a bundle went, failed and may retry later, the
token was refused, a pause came through the journal) and asked what to do (:meth:`plan`),
always with ``now`` (monotonic seconds) and the local wall time passed in: like h11, it never
reads a clock, and its backoff draws jitter from the injected :class:`Backoff`'s generator. The
driver (:mod:`.uploader`) runs its answers over the network.

Rules:
- order: the journal's queue order (higher priority first, oldest first), at most
  ``concurrency`` bundles in flight;
- a bundle that failed waits its own backoff (and a ``Retry-After``) before it is tried again;
- a sink that refuses connections holds every upload back under one shared backoff;
- a refused token holds everything until the token changes (or 5 minutes pass: it may have
  been re-enabled on the sink);
- a pause (the integrator's hook or ``capsight upload pause`` through the journal) and a
  schedule window at 0 bit/s stop what is in flight and start nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from capsight_edge.uploader.shaping import Backoff, UploadSchedule

TOKEN_RETRY_S = 300.0


@dataclass(frozen=True)
class Plan:
    """What to do now: ``start`` these bundles (journal rows); ``cancel`` what is in flight;
    ``waiting``: bundles that wait (when they were counted); ``rate_bps``: the cap now (None:
    uncapped, 0: nothing may go)."""

    start: list[Any] = field(default_factory=list)
    cancel: bool = False
    waiting: int = 0
    rate_bps: int | None = None


class UploadScheduler:
    def __init__(
        self,
        *,
        concurrency: int = 2,
        schedule: UploadSchedule | None = None,
        uncapped: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.schedule = schedule or UploadSchedule(0)
        self.uncapped = uncapped
        self.backoff = backoff or Backoff()
        self.paused: str | None = None
        self.paused_by_key = False
        self.token_refused_at: float | None = None
        self.misconfigured_reason = ""
        self.misconfigured_until = 0.0
        self.misconfigured_count = 0
        self.sink_down_until = 0.0
        self.sink_failures = 0
        self.failures: dict[str, int] = {}
        self.not_before: dict[str, float] = {}
        self.in_flight: set[str] = set()
        self.attempts: dict[str, int] = {}

    # -- what happened ------------------------------------------------------------------------
    def pause(self, reason: str | None) -> None:
        """Hold everything (``None``: release)."""
        self.paused = reason

    def follow_pause_key(self, held: str | None) -> None:
        """Another process pauses through the journal's pause key."""
        if held and self.paused != held:
            self.paused = held
        elif not held and self.paused is not None and self.paused_by_key:
            self.paused = None
        self.paused_by_key = bool(held)

    def token_refused(self, now: float) -> None:
        self.token_refused_at = now

    def token_may_retry(self, now: float, *, changed: bool) -> bool:
        """After a refusal: try again once the token changed, or after a while. True when the
        refusal is lifted now."""
        if self.token_refused_at is None:
            return False
        if changed or now - self.token_refused_at > TOKEN_RETRY_S:
            self.token_refused_at = None
            return True
        return False

    def misconfigured(self, now: float, reason: str) -> None:
        """The sink URL leads to no tus endpoint: nothing goes, and no bundle is blamed; the
        endpoint is looked for again after a backoff (30 s, doubling, up to 10 minutes)."""
        self.misconfigured_count += 1
        self.misconfigured_reason = reason
        self.misconfigured_until = now + min(600.0, 30.0 * 2 ** (self.misconfigured_count - 1))

    def started(self, bundle_id: str) -> None:
        self.in_flight.add(bundle_id)
        self.attempts[bundle_id] = self.attempts.get(bundle_id, 0) + 1

    def ended(self, bundle_id: str) -> None:
        self.in_flight.discard(bundle_id)

    def uploaded(self, bundle_id: str) -> None:
        self.failures.pop(bundle_id, None)
        self.not_before.pop(bundle_id, None)
        self.sink_failures = 0
        self.misconfigured_reason, self.misconfigured_count = "", 0

    def retry_later(
        self, bundle_id: str, now: float, *, after_s: float | None = None, sink_down: bool = False
    ) -> int:
        """The bundle failed for now: it waits its backoff (at least ``after_s``); a refused
        connection also holds every other upload back. Returns its failure count."""
        n = self.failures.get(bundle_id, 0) + 1
        self.failures[bundle_id] = n
        self.not_before[bundle_id] = now + max(after_s or 0.0, self.backoff.delay(n - 1))
        if sink_down:
            self.sink_failures += 1
            self.sink_down_until = max(
                self.sink_down_until, now + self.backoff.delay(self.sink_failures - 1)
            )
        return n

    # -- what to do ----------------------------------------------------------------------------
    def rate_bps(self, wall: dt.datetime) -> int | None:
        """None: uncapped; 0: no uploads now."""
        return None if self.uncapped else self.schedule.rate_at(wall)

    def blocked(self, now: float, wall: dt.datetime) -> bool:
        return bool(
            self.paused
            or self.token_refused_at is not None
            or self.rate_bps(wall) == 0
            or self.sink_down_until > now
            or self.misconfigured_until > now
        )

    def wants_queue(self, now: float, wall: dt.datetime, *, counting: bool) -> bool:
        """Whether the queue needs reading: only when something could start, or when the
        caller counts what waits (a flush that returns when nothing more can go)."""
        return counting or not (self.blocked(now, wall) or len(self.in_flight) >= self.concurrency)

    def plan(
        self,
        queue: Sequence[Any],
        now: float,
        wall: dt.datetime,
        *,
        max_attempts: int = 0,
    ) -> Plan:
        """Bundles to start from ``queue`` (journal rows in queue order). ``max_attempts``:
        bundles tried that often in this run no longer count as waiting (0: no limit)."""
        rate = self.rate_bps(wall)
        blocked = self.blocked(now, wall)
        cancel = bool(self.in_flight) and (bool(self.paused) or rate == 0)
        candidates = [
            r
            for r in queue
            if r.id not in self.in_flight
            and (not max_attempts or self.attempts.get(r.id, 0) < max_attempts)
        ]
        start: list[Any] = []
        if not blocked:
            room = self.concurrency - len(self.in_flight)
            for row in candidates:
                if len(start) >= room:
                    break
                if self.not_before.get(row.id, 0.0) > now:
                    continue
                start.append(row)
        return Plan(start, cancel, len(candidates) - len(start), rate)

    def state(self, now: float, wall: dt.datetime) -> str:
        if self.token_refused_at is not None:
            return "stopped: the sink refuses this device's token (check --token-file)"
        if self.misconfigured_until > now:
            return (
                f"stopped: the sink URL is misconfigured ({self.misconfigured_reason}); "
                f"next look in {self.misconfigured_until - now:.0f} s"
            )
        if self.paused:
            return f"paused: {self.paused}"
        if self.rate_bps(wall) == 0:
            return "off: the upload schedule allows nothing now"
        if self.sink_down_until > now:
            return f"waiting: sink unreachable, next try in {self.sink_down_until - now:.0f} s"
        return "uploading" if self.in_flight else "idle"
