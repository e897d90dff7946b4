"""Bandwidth shaping shared by every upload of a cart, the schedule of upload windows, backoff.

:class:`TokenBucket` holds all concurrent uploads together to one rate. It starts empty (no burst
when uploads begin or resume) and its depth is a tenth of a second of the rate, so any 30 s window
carries the rate within a fraction of a percent once the link keeps up. Takers queue in order
(one lock), so concurrent uploads share the rate fairly. A rate of 0 holds every taker until the
rate changes; ``None`` lets everything through.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from capsight_edge.profile.schema import WEEKDAYS


class TokenBucket:
    """Rate in **bit/s** (as the profile states it); tokens are bytes."""

    def __init__(
        self,
        rate_bps: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep  # virtual time in tests; by default a rate change wakes a waiter
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.rate_bps: int | None = None
        self.tokens = 0.0
        self._t = clock()
        self.taken = 0  # bytes granted so far
        self.set_rate(rate_bps)

    @property
    def bytes_per_s(self) -> float | None:
        return None if self.rate_bps is None else self.rate_bps / 8.0

    @property
    def depth(self) -> float:
        bps = self.bytes_per_s
        return 0.0 if not bps else max(16384.0, bps * 0.1)

    def piece_bytes(self) -> int:
        """How much a sender should ask for at once: about 50 ms of the rate, 16 KiB at least,
        so that wake-ups stay near 20 per second at any rate."""
        bps = self.bytes_per_s
        return 1 << 20 if not bps else int(max(16384, min(1 << 20, bps * 0.05)))

    def set_rate(self, rate_bps: int | None) -> None:
        if rate_bps == self.rate_bps:
            return
        self._refill()
        self.rate_bps = rate_bps
        self.tokens = min(self.tokens, self.depth)
        self._changed.set()

    def drain(self) -> None:
        """Empty the bucket: sending starts again after an idle spell with no burst."""
        self.tokens = 0.0
        self._t = self._clock()

    def _refill(self) -> None:
        now = self._clock()
        bps = self.bytes_per_s
        if bps:
            self.tokens = min(self.depth, self.tokens + (now - self._t) * bps)
        self._t = now

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may go. ``n`` larger than the depth is granted in steps."""
        async with self._lock:
            left = n
            while left > 0:
                bps = self.bytes_per_s
                if bps is None:
                    break
                if bps == 0:
                    self._changed.clear()
                    await self._changed.wait()
                    self._refill()
                    continue
                self._refill()
                step = min(left, int(self.depth))
                if self.tokens + 0.5 >= step:  # half a byte of slack against float rounding
                    self.tokens -= step
                    left -= step
                    continue
                wait = (step - self.tokens) / bps
                if self._sleep is not None:
                    await self._sleep(wait)
                    continue
                self._changed.clear()
                # A rate change wakes the waiter early, to re-plan at the new rate.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
            self.taken += n


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass(frozen=True)
class UploadSchedule:
    """The profile's ``[[upload.windows]]`` over its default ``max_upload_bps``: the first window
    that covers the local time and weekday sets the rate (0: no uploads then)."""

    default_bps: int
    windows: Sequence[Any] = ()

    @classmethod
    def from_profile(cls, upload: Any) -> UploadSchedule:
        return cls(upload.max_upload_bps, tuple(upload.windows))

    def rate_at(self, when: dt.datetime) -> int:
        minute = when.hour * 60 + when.minute
        day = WEEKDAYS[when.weekday()]
        for w in self.windows:
            if day in w.days and _minutes(w.start) <= minute < _minutes(w.end):
                return int(w.max_upload_bps)
        return self.default_bps

    def describe(self, when: dt.datetime) -> str:
        rate = self.rate_at(when)
        return "off" if rate == 0 else f"{rate / 1e6:g} Mbit/s"


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(max_s, base_s * 2**n)``, so a fleet that lost its sink does not come back in step."""

    base_s: float = 1.0
    max_s: float = 120.0
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        cap = min(self.max_s, self.base_s * (2.0 ** max(0, attempt)))
        r = (self.rng or random).random()
        return cap / 2 + r * cap / 2
