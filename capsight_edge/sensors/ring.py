"""Sensor samples kept in memory for the last minutes, so a capture bundle can carry the sensor
channels of its own time window. Same ``add`` / ``event`` interface as the SensorLog; ``Tee``
feeds several sinks at once."""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

from capsight_edge.sensors.sensorlog import CHANNELS, SensorLog


class SensorRing:
    def __init__(self, seconds: float = 180.0) -> None:
        self.keep_ns = int(seconds * 1e9)
        self._items: deque[tuple[int, str, bool, Any]] = deque()
        self._lock = threading.Lock()

    def add(self, topic: str, t_ns: int, **fields: Any) -> None:
        self._put(t_ns, topic, True, fields)

    def event(self, topic: str, t_ns: int, obj: dict[str, Any]) -> None:
        self._put(t_ns, topic, False, obj)

    def _put(self, t_ns: int, topic: str, batched: bool, data: Any) -> None:
        with self._lock:
            self._items.append((t_ns, topic, batched, data))
            while self._items and self._items[0][0] < t_ns - self.keep_ns:
                self._items.popleft()

    def window(self, start_ns: int, end_ns: int) -> list[tuple[int, str, bool, Any]]:
        with self._lock:
            items = [i for i in self._items if start_ns <= i[0] <= end_ns]
        return sorted(items, key=lambda i: i[0])

    def write_mcap(
        self,
        path: str | os.PathLike[str],
        start_ns: int,
        end_ns: int,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Write the window's samples as a standalone MCAP file; returns the sample count."""
        items = self.window(start_ns, end_ns)
        with SensorLog(path, flush_s=3600.0, reorder_s=0.0, metadata=metadata) as log:
            for t_ns, topic, batched, data in items:
                if topic not in CHANNELS:
                    continue
                if batched:
                    log.add(topic, t_ns, **data)
                else:
                    log.event(topic, t_ns, data)
        return len(items)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Tee:
    """Send every sample to each sink (a SensorLog file, a SensorRing, ...)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def add(self, topic: str, t_ns: int, **fields: Any) -> None:
        for s in self.sinks:
            s.add(topic, t_ns, **fields)

    def event(self, topic: str, t_ns: int, obj: dict[str, Any]) -> None:
        for s in self.sinks:
            s.event(topic, t_ns, obj)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()
