"""What crosses the boundary between the Recorder and its encoder process: typed commands one
way, typed results the other (pickled dataclasses on bounded multiprocessing queues)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncoderConfig:
    """The profile's encoder settings and the FrameBus's frame size and rate."""

    preference: tuple[str, ...]
    quality: str
    bitrate_kbps: int
    gop_s: float
    fps: float
    width: int
    height: int


# -- commands (Recorder -> encoder process) -------------------------------------------------------
@dataclass(frozen=True)
class OpenClip:
    """Start a clip at ``path`` with the frames from ``start_ns`` on (the pre-roll included)."""

    clip_id: str
    start_ns: int
    path: str


@dataclass(frozen=True)
class CloseClip:
    """The clip ends with the last frame at or after ``end_ns``."""

    clip_id: str
    end_ns: int


@dataclass(frozen=True)
class Stop:
    """Finish the open clip where it is and exit."""


Command = OpenClip | CloseClip | Stop


# -- results (encoder process -> Recorder) --------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class EncoderChosen:
    """The encoder now in use, and (name, reason) of those that did not open before it."""

    name: str
    failed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EncoderLost:
    """No encoder of the preference list opens any more."""

    reason: str


@dataclass(frozen=True)
class ClipWritten:
    """A clip file is complete on disk (fMP4, fsync'd by its close)."""

    clip_id: str
    path: str
    reason: str
    codec: str
    encoder: str
    frames: int
    duration_s: float
    first_ns: int
    last_ns: int
    width: int
    height: int
    fps: float
    skipped: int
    complete: bool = True
    note: str = ""
    finished_ns: int = 0


@dataclass(frozen=True)
class ClipFailed:
    """A clip could not be written: nothing of it may look complete."""

    clip_id: str
    path: str
    reason: str
    error: str
    finished_ns: int = 0


@dataclass(frozen=True)
class Stopped:
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Crashed:
    traceback: str


Result = Ready | EncoderChosen | EncoderLost | ClipWritten | ClipFailed | Stopped | Crashed
