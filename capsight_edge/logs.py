"""Logging conventions shared by every component.

Each component logs through ``get_logger("component")`` (a child of the ``capsight`` logger).
Output is human-readable by default; ``--log-format json`` switches to one JSON object per line
for log shippers. Extra fields passed with ``extra={"fields": {...}}`` are kept in both formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

ROOT = "capsight"
FORMATS = ("human", "json")


def get_logger(component: str) -> logging.Logger:
    """The logger for one component, e.g. ``get_logger("bridge.link")``."""
    return logging.getLogger(f"{ROOT}.{component}")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, component, msg, plus fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name.removeprefix(ROOT + ".") if record.name != ROOT else ROOT,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


_current = ("human", "WARNING")


def current() -> tuple[str, str]:
    """The (format, level) last configured: child processes start with the same."""
    return _current


def configure(fmt: str = "human", level: str = "WARNING", stream: TextIO | None = None) -> None:
    """Install one handler on the ``capsight`` logger (idempotent: replaces an earlier one)."""
    global _current
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_capsight", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else HumanFormatter())
    handler._capsight = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    _current = (fmt, level.upper())


class OncePerKind:
    """Log the first occurrence of each kind of problem, count the rest.

    Bad input on a sensor link can arrive thousands of times a second; the log must not drown.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str, *args: object) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n == 1:
            self._logger.warning(
                message + " (further %s problems are counted, not logged)", *args, kind
            )
