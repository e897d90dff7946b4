"""The uploader as the cart and the technician use it: built from the profile, run beside a
running cart in its own thread and loop (:class:`UploaderThread`), or flushed by hand
(:func:`flush`, ``capsight upload now``), and held or released through the journal
(:func:`hold`, ``capsight upload pause|resume``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from capsight_edge.errors import UploadError
from capsight_edge.journal.journal import Journal
from capsight_edge.profile.schema import Profile
from capsight_edge.uploader.shaping import UploadSchedule
from capsight_edge.uploader.status import PAUSE_KEY
from capsight_edge.uploader.uploader import Uploader

log = logging.getLogger("capsight.uploader")


class UploadsHeld(UploadError):
    """``capsight upload pause`` holds this cart's uploads: a flush would send nothing."""


def uploader_from_profile(profile: Profile, journal: Journal, **overrides: Any) -> Uploader:
    """The profile's ``[upload]`` section as an :class:`Uploader` (``overrides`` win)."""
    up = profile.upload
    if not (overrides.get("sink_url") or up.sink_url):
        raise UploadError("no sink: set upload.sink_url in the profile or pass --sink")
    kwargs: dict[str, Any] = {
        "sink_url": up.sink_url,
        "token_file": up.token_file,
        "schedule": UploadSchedule.from_profile(up),
        "concurrency": up.concurrency,
        "chunk_bytes": up.chunk_bytes,
        "timeout_s": up.timeout_s,
        "heartbeat_s": up.heartbeat_s,
    }
    kwargs.update(overrides)
    return Uploader(journal, profile.storage.data_dir, **kwargs)


class UploaderThread:
    """Runs :meth:`Uploader.run` in a daemon thread; ``stop`` returns when it has finished."""

    def __init__(self, uploader: Uploader, **run_kwargs: Any) -> None:
        self.uploader = uploader
        self.run_kwargs = run_kwargs
        self.error: BaseException | None = None
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="capsight-uploader", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            task = asyncio.ensure_future(self.uploader.run(**self.run_kwargs))
            await asyncio.sleep(0)
            self.started.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()/join(), never silently lost
            self.error = exc
            log.exception("the uploader stopped on an error")
        finally:
            self.started.set()

    def start(self) -> UploaderThread:
        self._thread.start()
        self.started.wait(10)
        return self

    def join(self, timeout_s: float | None = None) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.uploader.stop()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def hold(journal: Journal, reason: str | None) -> None:
    """Hold every uploader of this journal (a running ``capsight run`` included) at once, with
    ``reason`` shown by ``status`` and ``queue``; ``None`` releases them."""
    journal.kv_set(PAUSE_KEY, reason)


def flush(
    profile: Profile,
    journal: Journal,
    *,
    uncapped: bool = False,
    attempts: int = 4,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send the queue now, outside the upload windows, at the profile's ``max_upload_bps`` (or
    uncapped), until it is empty or nothing more can go (every bundle left failed ``attempts``
    times, the sink is unreachable, the token is refused). ``report(status)`` is called about
    once a second from another thread while bundles are in flight. Returns what happened:
    ``uploaded``, ``left``, ``quarantined``, bytes, rate, retries, ``state``, ``last_error``;
    refuses (UploadError) while uploads are held by ``upload pause``."""
    held = journal.kv_get(PAUSE_KEY)
    if held:
        raise UploadsHeld(f"uploads are paused ({held}); run `capsight upload resume` first")
    cap = profile.upload.max_upload_bps
    up = uploader_from_profile(profile, journal, uncapped=uncapped or cap == 0)
    up.schedule = dataclasses.replace(up.schedule, windows=())  # outside the windows
    before = {r.id for r in journal.upload_queue()}
    done = threading.Event()

    def reporter() -> None:
        while report is not None and not done.wait(1.0):
            report(up.status())

    thread = threading.Thread(target=reporter, name="upload-report", daemon=True)
    thread.start()
    try:
        stats = asyncio.run(up.run(until_idle=True, max_attempts=attempts))
    finally:
        done.set()
        thread.join(5)
    left = journal.upload_queue()
    return {
        "queued": len(before),
        "sink": up.base,
        "rate_cap_bps": None if up.uncapped else cap,
        "uploaded": stats.bundles_uploaded,
        "left": len(left),
        "quarantined": [r.id for r in journal.bundles(("quarantined",)) if r.id in before],
        "bytes_sent": stats.bytes_sent,
        "bytes_confirmed": stats.bytes_confirmed,
        "rate_bps": round(stats.rate_bps),
        "interruptions": stats.interruptions,
        "retries": stats.retries,
        "state": up.state,
        "last_error": up.last_error,
    }
