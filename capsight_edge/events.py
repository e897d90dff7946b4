"""What a running :class:`~capsight_edge.cart.Cart` tells the program that embeds it: typed
events, as callbacks or as an iterator.

>>> with Cart(profile) as cart:                       # doctest: +SKIP
...     for event in cart.events.stream(timeout_s=60):
...         match event:
...             case BundleSealed(): print("sealed", event.bundle_id)
...             case TriggerDecision(kind="fire"): print("capture", event.rule)
...             case WeightEvent(kind="item_added"): print("+", event.delta_g, "g")
...             case LinkHealth(): print("MCU link", event.state)

Callbacks (:meth:`Events.subscribe`) run on the thread that produced the event (the recorder's,
the MCU link's, the collector's): keep them short, or hand the work to a queue, which is what
:meth:`Events.stream` does. A stream's queue is bounded: when a slow reader falls behind by
``maxsize`` events the oldest are dropped and counted (:attr:`EventStream.dropped`), so an
embedding program can never make the cart run out of memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capsight_edge.bundle.manifest import Manifest
from capsight_edge.sensors.weight import WeightEvent
from capsight_edge.triggers.engine import Decision as TriggerDecision

log = logging.getLogger("capsight.events")

__all__ = [
    "BundleSealed",
    "Event",
    "EventStream",
    "Events",
    "LinkHealth",
    "TriggerDecision",
    "WeightEvent",
]


@dataclass(frozen=True)
class BundleSealed:
    """A capture is complete on disk and in the journal (it will be uploaded)."""

    bundle_id: str
    path: Path
    rule: str
    bytes: int
    duration_s: float | None
    manifest: Manifest


@dataclass(frozen=True)
class LinkHealth:
    """The MCU link changed state (``connecting``, ``up``, ``down``, ``closed``)."""

    t_ns: int
    state: str
    previous: str
    frames: int
    reconnects: int
    frame_error_rate: float


Event = BundleSealed | TriggerDecision | WeightEvent | LinkHealth


class EventStream:
    """An iterator over the events published after it was opened (see :meth:`Events.stream`)."""

    def __init__(self, owner: Events, maxsize: int, timeout_s: float | None) -> None:
        self._owner = owner
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize)
        self._timeout_s = timeout_s
        self.dropped = 0

    def _put(self, event: Event | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def __iter__(self) -> Iterator[Event]:
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    event = self._queue.get(timeout=left)
                except queue.Empty:
                    return
                if event is None:  # the cart stopped
                    return
                yield event
        finally:
            self.close()

    def close(self) -> None:
        self._owner._drop(self)


class Events:
    """The cart's event hub: producers :meth:`publish`; readers subscribe or stream."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], None]] = []
        self._streams: list[EventStream] = []
        self._lock = threading.Lock()
        self.published = 0

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def stream(self, *, timeout_s: float | None = None, maxsize: int = 10_000) -> EventStream:
        """Iterate over the events from now on; ends when the cart stops, or after
        ``timeout_s`` seconds."""
        s = EventStream(self, maxsize, timeout_s)
        with self._lock:
            self._streams.append(s)
        return s

    def publish(self, event: Event) -> None:
        with self._lock:
            callbacks, streams = list(self._callbacks), list(self._streams)
            self.published += 1
        for fn in callbacks:
            try:
                fn(event)
            except Exception:  # an embedder's bug must not stop the cart
                log.exception("event callback %r failed", fn)
        for s in streams:
            s._put(event)

    def end(self) -> None:
        """The cart stopped: every open stream ends."""
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            s._put(None)

    def _drop(self, s: EventStream) -> None:
        with self._lock:
            if s in self._streams:
                self._streams.remove(s)
