"""The uploader beside a running cart: built from the profile, run in its own thread and loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from capsight_edge.errors import UploadError
from capsight_edge.journal.journal import Journal
from capsight_edge.profile.schema import Profile
from capsight_edge.uploader.shaping import UploadSchedule
from capsight_edge.uploader.uploader import Uploader

log = logging.getLogger("capsight.uploader")


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
